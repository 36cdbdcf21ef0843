"""The ``kspec-fluxcal`` command.

::

    kspec-fluxcal calibrate RED.fits --catalog CAT.csv [--templates DIR] [--output OUT.fits]
        [--fwhm FWHM_A] [--metric chi2|huber] [--smooth] [--match position|order] [--plots DIR] [--force]
        [--save-calibration FILE] [--fallback NIGHT.fits [--min-standards N]]
        [--template-correction FILE|auto|none] [--telluric | --no-telluric]
        [--form smooth|pixel] [--knot-spacing auto|ANGSTROM] [--mag-floor MAG] [--zero-point-sigma MAG]
    kspec-fluxcal calibrate RED.fits --calibration FILE [--output OUT.fits] [--force]
    kspec-fluxcal combine-night PRODUCT... -o NIGHT.fits [--outlier-sigma S] [--extinction auto|fit|default|FILE]
    kspec-fluxcal telluric RED.fits --transmission FILE [-o OUT.fits]
    kspec-fluxcal batch RED... (--catalog CAT.csv | --catalog-dir DIR) [--templates DIR] [--output-dir DIR]
        [--workers N | --scheduler ADDRESS [--connect-timeout S]] [--force] [--products]
        [--fallback NIGHT.fits] [--run-log FILE] [--report REPORT_DIR] ...
    kspec-fluxcal report NIGHT_DIR -o REPORT_DIR [--night NIGHT.fits] [--site-extinction FILE]
    kspec-fluxcal derive-correction --calspec DIR --templates LIB -o CORR.ecsv [--fwhm FWHM_A] [--exclude STAR ...]
    kspec-fluxcal demo [--output DIR]
    kspec-fluxcal download-templates [--dest DIR] [--dry-run] [--force]
    kspec-fluxcal info

Exit statuses (`EXIT_STATUSES`): 0 ok; 1 a batch finished with some files
failed or unfinished (its table says which; the others are calibrated); 2 bad
input or usage — the package's own errors
(`~kspec_fluxcal.exceptions.KspecFluxcalError`), OS errors (a file that cannot
be read or written) and command-line usage errors; 70 an internal error, i.e.
a bug (any other exception: one line saying so, and to rerun with ``--debug``
for the traceback); 130 interrupted. Every failure prints one line on stderr;
tracebacks only with ``--debug``.
"""

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from . import __version__
from .exceptions import KspecFluxcalError

__all__ = ["main", "EXIT_OK", "EXIT_FILES_FAILED", "EXIT_INPUT", "EXIT_INTERNAL", "EXIT_INTERRUPTED",
           "EXIT_STATUSES"]

log = logging.getLogger("kspec_fluxcal")

EXIT_OK = 0
EXIT_FILES_FAILED = 1
EXIT_INPUT = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE of sysexits.h
EXIT_INTERRUPTED = 130
EXIT_STATUSES = {
    EXIT_OK: "ok",
    EXIT_FILES_FAILED: "a batch finished with some files failed or unfinished (its table says which)",
    EXIT_INPUT: "bad input or usage: the package's own errors, files that cannot be read or written, bad arguments",
    EXIT_INTERNAL: "internal error, a bug: rerun with --debug for the traceback and report it",
    EXIT_INTERRUPTED: "interrupted (nothing partial is left)",
}
"""The exit statuses of ``kspec-fluxcal`` and what each means."""

_EPILOG = "exit status:\n" + "\n".join(f"  {code:<4d}{meaning}" for code, meaning in EXIT_STATUSES.items())


def build_parser():
    """The argument parser of ``kspec-fluxcal``."""
    from .download_bosz import add_download_arguments

    parser = argparse.ArgumentParser(prog="kspec-fluxcal", description="Flux calibration of KSPEC RED frames.",
                                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kspec_fluxcal {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    noise = common.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", help="log every step")
    noise.add_argument("-q", "--quiet", action="store_true", help="only errors")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    derive = argparse.ArgumentParser(add_help=False)
    derive.add_argument("--templates", type=Path, help="BOSZ 2024 or ck04models folder")
    derive.add_argument("--fwhm", type=float, help="instrument FWHM in Å (overrides SPECFWHM/FWHMPCn)")
    derive.add_argument("--metric", choices=("chi2", "huber"), default="chi2")
    derive.add_argument("--smooth", action="store_true", help="smooth the combined vector further")
    derive.add_argument("--match", choices=("position", "order"), default="position")
    derive.add_argument("--fallback", type=Path, metavar="NIGHT.fits",
                        help="nightly calibration applied when the frame's own standards fall short")
    derive.add_argument("--min-standards", type=int, default=1, metavar="N",
                        help="fewest usable standards for a frame's own calibration (default 1)")
    derive.add_argument("--force", action="store_true", help="recalibrate a calibrated file")
    derive.add_argument("--template-correction", default="auto", type=_correction_choice, metavar="FILE|auto|none",
                        help="correction applied to every template: exactly 'auto' (default: the shipped "
                             "CALSPEC-derived one for ck04models, none for BOSZ), 'none', or a correction file; "
                             "anything else is read as a file name")
    derive.add_argument("--telluric", action=argparse.BooleanOptionalAction, default=None,
                        help="correct the telluric windows with the transmission measured on the standards "
                             "(default: yes unless the frame has TELCOR = T); --no-telluric leaves them bridged")
    derive.add_argument("--form", choices=("smooth", "pixel"), default="smooth",
                        help="form of the applied vector: smooth B-spline (default) or per pixel")
    derive.add_argument("--knot-spacing", default="auto", metavar="AUTO|ANGSTROM",
                        help="knot spacing of the smooth form in Å, or 'auto' to let the standards choose (default)")
    derive.add_argument("--mag-floor", type=float, default=None, metavar="MAG",
                        help="per-star systematic added in quadrature to each catalogue band (default 0.005 mag)")
    derive.add_argument("--zero-point-sigma", type=float, default=None, metavar="MAG",
                        help="catalogue zero-point error shared by all standards, in the error budget (default 0.005)")

    cal = sub.add_parser("calibrate", parents=[common, derive], help="flux-calibrate a RED file", epilog=_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    cal.add_argument("red", type=Path, help="RED file (rewritten atomically unless --output)")
    source = cal.add_mutually_exclusive_group(required=True)
    source.add_argument("--catalog", type=Path, help="Refcat2 CSV of the field's standards")
    source.add_argument("--calibration", type=Path, metavar="FILE",
                        help="apply this stored calibration (product or calibrated RED file) instead of deriving one")
    cal.add_argument("--output", type=Path, help="write the calibrated frame here")
    cal.add_argument("--plots", type=Path, help="folder for QC figures (PNG)")
    cal.add_argument("--save-calibration", type=Path, metavar="FILE",
                     help="also write the calibration as a product (.fits or .ecsv)")

    night = sub.add_parser("combine-night", parents=[common], help="combine calibration products of a night")
    night.add_argument("products", type=Path, nargs="+", help="calibration products or calibrated RED files")
    night.add_argument("-o", "--output", type=Path, required=True, help="the nightly product (.fits or .ecsv)")
    night.add_argument("--outlier-sigma", type=float, default=5.0,
                       help="robust sigma beyond which an exposure's shape is rejected (default 5)")
    night.add_argument("--extinction", default="auto", metavar="auto|fit|default|FILE",
                       help="extinction curve of the night: fitted when the airmasses allow (auto, the default), "
                            "fitted or fail (fit), the generic default curve, or a site curve FILE "
                            "(columns: wavelength in Å, k in mag/airmass)")

    tell = sub.add_parser("telluric", parents=[common],
                          help="apply a stored telluric transmission to a (calibrated) RED file")
    tell.add_argument("red", type=Path, help="RED file (rewritten atomically unless --output)")
    tell.add_argument("--transmission", type=Path, required=True, metavar="FILE",
                      help="a file with a TELLURIC extension (calibrated RED file or calibration product)")
    tell.add_argument("-o", "--output", type=Path, help="write the corrected frame here")

    batch = sub.add_parser("batch", parents=[common, derive], help="calibrate many RED files on Dask",
                           epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch.add_argument("red", type=Path, nargs="+", help="RED files (rewritten atomically unless --output-dir)")
    cats = batch.add_mutually_exclusive_group(required=True)
    cats.add_argument("--catalog", type=Path, help="one Refcat2 CSV for every file")
    cats.add_argument("--catalog-dir", type=Path,
                      help="folder of catalogues: <stem>.csv, <stem>_refcat.csv, or <stem without _red>_refcat.csv")
    batch.add_argument("--output-dir", type=Path, help="write calibrated files here")
    where = batch.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster (default 2)")
    where.add_argument("--scheduler", metavar="ADDRESS", help="use a running Dask scheduler (tcp://host:8786)")
    batch.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="seconds the --scheduler has to answer before the batch fails (default 5)")
    batch.add_argument("--products", action="store_true",
                       help="also write each calibration as <stem>_fluxcal.fits beside the calibrated file")
    batch.add_argument("--run-log", type=Path, metavar="FILE",
                       help="append the run's records to this ECSV run log (default: kspec_fluxcal_runlog.ecsv "
                            "beside the outputs)")
    batch.add_argument("--report", type=Path, metavar="REPORT_DIR",
                       help="write the night report (index.html, night_summary.ecsv) here, with each frame's QC "
                            "figures in REPORT_DIR/qc")

    rep = sub.add_parser("report", parents=[common], help="write the QA report page of a reduced night")
    rep.add_argument("night_dir", type=Path, metavar="NIGHT_DIR",
                     help="folder a batch wrote (calibrated RED files, products, run log)")
    rep.add_argument("-o", "--output", type=Path, required=True, metavar="REPORT_DIR",
                     help="report folder: index.html with its figures, night_summary.ecsv")
    rep.add_argument("--night", type=Path, metavar="NIGHT.fits", help="the nightly product (combine-night)")
    rep.add_argument("--run-log", type=Path, metavar="FILE",
                     help="the run log, when not NIGHT_DIR/kspec_fluxcal_runlog.ecsv")
    rep.add_argument("--site-extinction", type=Path, metavar="FILE",
                     help="a site extinction curve (λ in Å, k in mag/airmass) drawn beside the night's")

    corr = sub.add_parser("derive-correction", parents=[common],
                          help="derive a template-grid correction from CALSPEC standards")
    corr.add_argument("--calspec", type=Path, required=True, nargs="+", metavar="PATH",
                      help="CALSPEC FITS spectra, or folders of them (every *.fits* inside)")
    corr.add_argument("--templates", type=Path, required=True, help="BOSZ 2024 or ck04models folder")
    corr.add_argument("-o", "--output", type=Path, required=True, help="the correction (.ecsv)")
    corr.add_argument("--fwhm", type=float, default=30.0, help="resolution of the comparison, Å (default 30)")
    corr.add_argument("--exclude", nargs="+", default=[], metavar="STAR",
                      help="CALSPEC stars not to use (file stem before _stis, e.g. hd031128)")

    demo = sub.add_parser("demo", parents=[common], help="calibrate a SYNTHETIC exposure end to end")
    demo.add_argument("--output", type=Path, default=Path("kspec_fluxcal_demo"))
    demo.add_argument("--templates", type=Path, help="use this library instead of the compact synthetic grid")

    add_download_arguments(sub.add_parser("download-templates", parents=[common],
                                          help="download the BOSZ 2024 subgrid"))

    sub.add_parser("info", parents=[common], help="version, filters, template libraries, cache")
    return parser


def _correction_choice(value):
    """``--template-correction``: exactly 'auto' or 'none', anything else a file path (read, and checked, later)."""
    return value if value in ("auto", "none") else Path(value)


def _configure_logging(args):
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(level)
    # astropy's logger prints the warnings it captures (UnitsWarning, the package's own) with its own handler;
    # propagated to the root handler above they were printed a second time.
    logging.getLogger("astropy").propagate = False


def _config(args, **extra):
    from .pipeline import FluxcalConfig

    fit = {"form": args.form, "knot_spacing": args.knot_spacing}
    if args.mag_floor is not None:
        fit["mag_floor"] = args.mag_floor
    if args.zero_point_sigma is not None:
        fit["zero_point_sigma"] = args.zero_point_sigma
    return FluxcalConfig(templates=args.templates, fwhm=args.fwhm, metric=args.metric, smooth=args.smooth,
                         match=args.match, force=args.force, fallback=args.fallback,
                         min_standards=args.min_standards, template_correction=args.template_correction,
                         telluric=args.telluric, **fit, **extra)


def _calibrate(args):
    from astropy.io import fits

    from .pipeline import apply_fluxcal

    config = _config(args, catalog=args.catalog, calibration=args.calibration, output=args.output,
                     plots=args.plots, save_calibration=args.save_calibration)
    run = apply_fluxcal(args.red, config)
    summary = run.result.summary
    if args.calibration is not None:
        print(f"{run.output}: calibrated with the stored calibration {args.calibration}")
    elif fits.getheader(run.output).get("FCALFALL", False):
        print(f"{run.output}: calibrated with the nightly calibration {args.fallback} (fallback)")
    else:
        print(f"{run.output}: calibrated with {summary['n_stars_used']} standard(s), "
              f"{summary['n_stars_rejected']} rejected; rms scatter {summary['rms_scatter']:.4f}")
    return 0


def _combine_night(args):
    from .night import combine_night
    from .products import save_calibration

    night = combine_night(args.products, outlier_sigma=args.outlier_sigma, extinction=args.extinction)
    save_calibration(night, args.output, overwrite=True)
    s = night.summary
    print(f"{args.output}: nightly calibration from {s['n_exposures_used']} of {s['n_exposures']} exposures; "
          f"shape rms {s['rms_scatter']:.4f}, gray scatter {s['gray_scatter']:.4f}")
    if s.get("extinction"):
        ext = s["extinction"]
        print(f"  extinction curve: {ext['source']}, reference airmass {ext['reference_airmass']:.3f}")
    for e in s["per_exposure"]:
        if not e["used"]:
            print(f"  rejected {e['exposure']}: {e['reject_reason']}")
    return 0


def _telluric(args):
    from .pipeline import correct_red_file

    target = correct_red_file(args.red, args.transmission, output=args.output)
    print(f"{target}: telluric windows corrected with the transmission of {args.transmission}")
    return 0


def _batch(args):
    from .batch import calibrate_batch, summary_table
    from .exceptions import BatchIncompleteError

    if not args.verbose:  # the cluster's own INFO lines would drown the progress lines
        with contextlib.suppress(ImportError):  # without it, calibrate_batch says what to install
            import distributed  # noqa: F401 — it sets its loggers' levels when imported
        logging.getLogger("distributed").setLevel(logging.WARNING)
        # a lost scheduler is reported by the batch (unfinished files); not also as the client's reconnect traceback
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
    extra = {"plots": args.report / "qc"} if args.report else {}  # each frame's QC figures beside the report
    try:
        records = calibrate_batch(args.red, args.catalog or args.catalog_dir, _config(args, **extra),
                                  workers=args.workers, scheduler=args.scheduler, output_dir=args.output_dir,
                                  force=args.force, products=args.products, run_log=args.run_log or True,
                                  connect_timeout=args.connect_timeout)
    except BatchIncompleteError as exc:  # the table of what is known, then the one-line error
        print("\n".join(summary_table(exc.records).pformat(max_lines=-1, max_width=-1)))
        raise
    print("\n".join(summary_table(records).pformat(max_lines=-1, max_width=-1)))
    counts = {s: sum(r.status == s for r in records) for s in ("ok", "failed", "skipped")}
    print(f"{counts['ok']} calibrated, {counts['failed']} failed, {counts['skipped']} skipped")
    if args.report:
        from .report import write_report

        night_dir = args.output_dir or Path(args.red[0]).parent
        write_report(night_dir, args.report, run_log=args.run_log)
        print(f"night report: {args.report / 'index.html'}")
    return 1 if counts["failed"] else 0


def _report(args):
    from .report import write_report

    report = write_report(args.night_dir, args.output, night=args.night, run_log=args.run_log,
                          site_extinction=args.site_extinction)
    states = [e.state for e in report.exposures]
    print(f"{args.output / 'index.html'}: {len(states)} RED files ({states.count('ok')} ok, "
          f"{states.count('fallback')} fallback, {states.count('failed')} failed), "
          f"{sum(e.flagged for e in report.exposures)} flagged")
    for problem in report.problems:
        print(f"  missing or unreadable: {problem}")
    return 0


def _derive_correction(args):
    import numpy as np

    from .calspec_correction import derive_template_correction

    files = []
    for path in args.calspec:
        found = sorted(p for p in path.glob("*.fits*") if p.is_file()) if path.is_dir() else [path]
        if not found or not all(p.is_file() for p in found):
            raise KspecFluxcalError(f"{path} is neither a CALSPEC FITS file nor a folder holding one (*.fits, "
                                    "*.fits.gz); give --calspec FILE... or DIR.")
        files += found
    command = " ".join(["kspec-fluxcal", "derive-correction", "--calspec", *map(str, args.calspec), "--templates",
                        str(args.templates), "-o", str(args.output)]
                       + (["--fwhm", f"{args.fwhm:g}"] if args.fwhm != 30.0 else [])
                       + (["--exclude", *args.exclude] if args.exclude else []))
    correction = derive_template_correction(files, args.templates, fwhm=args.fwhm, exclude=args.exclude,
                                            command=command)
    correction.write(args.output)
    print(f"{args.output}: template correction {correction.label} from {len(correction.meta['used_stars'])} "
          f"CALSPEC stars; factor {correction.factor.min():.3f}–{correction.factor.max():.3f}, "
          f"median 1σ {100 * np.median(correction.sigma):.2f}%")
    for star in correction.meta["stars"]:
        print(f"  {star['name']}: Teff {star['teff']:.0f} K, log g {star['logg']:.2f}, [M/H] {star['feh']:+.2f}, "
              f"E(B-V) {star['ebv']:.3f}: {'used' if star['used'] else 'not used, ' + star['reason']}")
    return 0


def _demo(args):
    from .demo import run_demo

    print(run_demo(args.output, templates=args.templates))
    return 0


def _download(args):
    from .download_bosz import run_download

    return run_download(args)


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


COMMANDS = {"calibrate": _calibrate, "combine-night": _combine_night, "telluric": _telluric, "batch": _batch,
            "demo": _demo, "download-templates": _download, "info": _info, "derive-correction": _derive_correction,
            "report": _report}


def _one_line(exc):
    return " ".join(str(exc).split())


def main(argv=None):
    """Run ``kspec-fluxcal``; return the exit status (`EXIT_STATUSES`).

    Only the package's own errors (`~kspec_fluxcal.exceptions.KspecFluxcalError`)
    and OS errors are reported as bad input (`EXIT_INPUT`, one line
    ``kspec-fluxcal: error: ...``); a batch that ends with files unfinished
    (`~kspec_fluxcal.exceptions.BatchIncompleteError`) exits like one with
    failed files (`EXIT_FILES_FAILED`); any other exception is a bug
    (`EXIT_INTERNAL`, one line saying so). ``--debug`` re-raises instead, so
    the traceback shows. Usage errors exit with argparse's status 2.
    """
    from .exceptions import BatchIncompleteError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version (0) or a usage error (2), its message printed already
        return exc.code if isinstance(exc.code, int) else EXIT_INPUT
    _configure_logging(args)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("kspec-fluxcal: interrupted; nothing partial was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (KspecFluxcalError, OSError) as exc:
        if args.debug:
            raise
        print(f"kspec-fluxcal: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FILES_FAILED if isinstance(exc, BatchIncompleteError) else EXIT_INPUT
    except Exception as exc:  # a bug: still one line; --debug shows the traceback
        if args.debug:
            raise
        detail = ": ".join(filter(None, (type(exc).__name__, _one_line(exc))))
        print(f"kspec-fluxcal: internal error, a bug and not bad input ({detail}); rerun with --debug for the "
              "traceback and report it.", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
