"""The ``kspec-fluxcal`` command.

::

    kspec-fluxcal calibrate RED.fits --catalog CAT.csv [--templates DIR] [--output OUT.fits]
        [--fwhm FWHM_A] [--metric chi2|huber] [--smooth] [--match position|order] [--plots DIR] [--force]
    kspec-fluxcal demo [--output DIR]
    kspec-fluxcal download-templates [--dest DIR] [--dry-run] [--force]
    kspec-fluxcal info

Exit status 0 on success; otherwise a one-line reason on stderr and a
non-zero status (tracebacks only with ``--debug``).
"""

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .exceptions import KspecFluxcalError

__all__ = ["main", "build_parser"]

log = logging.getLogger("kspec_fluxcal")


def build_parser():
    """The argument parser of ``kspec-fluxcal``."""
    parser = argparse.ArgumentParser(prog="kspec-fluxcal", description="Flux calibration of KSPEC RED frames.")
    parser.add_argument("--version", action="version", version=f"kspec_fluxcal {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    noise = common.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", help="log every step")
    noise.add_argument("-q", "--quiet", action="store_true", help="only errors")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    cal = sub.add_parser("calibrate", parents=[common], help="flux-calibrate a RED file")
    cal.add_argument("red", type=Path, help="RED file (rewritten atomically unless --output)")
    cal.add_argument("--catalog", required=True, type=Path, help="Refcat2 CSV of the field's standards")
    cal.add_argument("--templates", type=Path, help="BOSZ 2024 or ck04models folder")
    cal.add_argument("--output", type=Path, help="write the calibrated frame here")
    cal.add_argument("--fwhm", type=float, help="instrument FWHM in Å (overrides SPECFWHM/FWHMPCn)")
    cal.add_argument("--metric", choices=("chi2", "huber"), default="chi2")
    cal.add_argument("--smooth", action="store_true", help="smooth the combined vector further")
    cal.add_argument("--match", choices=("position", "order"), default="position")
    cal.add_argument("--plots", type=Path, help="folder for QC figures (PNG)")
    cal.add_argument("--force", action="store_true", help="recalibrate a calibrated file")

    demo = sub.add_parser("demo", parents=[common], help="calibrate a SYNTHETIC exposure end to end")
    demo.add_argument("--output", type=Path, default=Path("kspec_fluxcal_demo"))
    demo.add_argument("--templates", type=Path, help="use this library instead of the compact synthetic grid")

    dl = sub.add_parser("download-templates", parents=[common], help="download the BOSZ 2024 subgrid")
    dl.add_argument("--dest", type=Path, default=Path("data") / "bosz2024")
    dl.add_argument("--resolution", type=int, default=10000)
    dl.add_argument("--dry-run", action="store_true", help="list the URLs only")
    dl.add_argument("--force", action="store_true", help="download existing files again")

    sub.add_parser("info", parents=[common], help="version, filters, template libraries, cache")
    return parser


def _configure_logging(args):
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(level)


def _calibrate(args):
    from .pipeline import FluxcalConfig, apply_fluxcal

    config = FluxcalConfig(catalog=args.catalog, templates=args.templates, output=args.output, fwhm=args.fwhm,
                           metric=args.metric, smooth=args.smooth, match=args.match, plots=args.plots,
                           force=args.force)
    run = apply_fluxcal(args.red, config)
    summary = run.result.summary
    print(f"{run.output}: calibrated with {summary['n_stars_used']} standard(s), "
          f"{summary['n_stars_rejected']} rejected; rms scatter {summary['rms_scatter']:.4f}")
    return 0


def _demo(args):
    from .demo import run_demo

    print(run_demo(args.output, templates=args.templates))
    return 0


def _download(args):
    from .download_bosz import download_subgrid

    summary = download_subgrid(args.dest, resolution=args.resolution, force=args.force, dry_run=args.dry_run,
                               progress=not args.quiet)
    print(summary)
    return 1 if summary.failed else 0


def _info(args):
    import os

    from .cache import cache_dir
    from .photometry import REGISTERED_BANDS, load_filter_curve
    from .pipeline import TEMPLATES_ENV

    print(f"kspec_fluxcal {__version__}")
    print(f"cache folder: {cache_dir()}")
    print("filters:")
    for name in REGISTERED_BANDS:
        curve = load_filter_curve(name)
        print(f"  {name:10s} {curve.system:4s} pivot {curve.pivot_wavelength.value:8.1f} Å  "
              f"Vega→AB {curve.vega_to_ab:+.3f}")
    candidates = [p for p in (os.environ.get(TEMPLATES_ENV), "data/bosz2024") if p]
    print("template libraries:")
    found = False
    for path in candidates:
        if Path(path).is_dir():
            from .templates import TemplateLibrary

            try:
                lib = TemplateLibrary(path)
            except KspecFluxcalError as exc:
                print(f"  {path}: unusable ({exc})")
                continue
            print(f"  {path}: {lib.kind}, {len(lib.entries)} models")
            found = True
    if not found:
        print("  none found (run 'kspec-fluxcal download-templates' or set $" + TEMPLATES_ENV + ")")
    return 0


COMMANDS = {"calibrate": _calibrate, "demo": _demo, "download-templates": _download, "info": _info}


def main(argv=None):
    """Run ``kspec-fluxcal``; return the exit status."""
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("kspec-fluxcal: interrupted; no output was written.", file=sys.stderr)
        return 130
    except (KspecFluxcalError, OSError, ValueError) as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"kspec-fluxcal: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
