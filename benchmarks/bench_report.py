"""Benchmark of the night report (a script, not a test): seconds for a night of 100 exposures.

A few SYNTHETIC exposures (`kspec_fluxcal.simulate.make_exposure`: 4
standards, 3000 pixels, airmass 1.1–1.6 through the tabulated site curve of
`kspec_fluxcal.simulate_atmosphere`) are calibrated once with products and QC
figures, against the compact SYNTHETIC demo grid. They are then replicated
into a night of ``--exposures`` calibrated files, as a batch leaves them: each
copy gets its own DATE-OBS (every 5 min), airmass (1.0–2.0) and transparency
(1, or 0.5–0.9 for one in ten, "cloud"): its calibration is moved to that
airmass with the site curve and divided by the transparency, in the
calibrated file and in its product; its QC figures are copied; a run log row
is written for every file (one in twenty-five failed).

Timed: `kspec_fluxcal.report.write_report` on that folder (all figures, the
page, the ECSV, copying the QC figures), best of ``--repeat``. Target: ≤ 30 s
for 100 exposures.

Usage::

    python benchmarks/bench_report.py [--exposures 100] [--repeat 2] [--keep DIR]
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

BASE_AIRMASS = (1.1, 1.3, 1.6)


def _base_night(folder):
    """Calibrate the base exposures (products and QC figures); return their calibrated files."""
    from kspec_fluxcal.demo import compact_grid_folder
    from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal
    from kspec_fluxcal.simulate import make_exposure
    from kspec_fluxcal.simulate_atmosphere import extincted_calibration

    out = []
    for i, x in enumerate(BASE_AIRMASS):
        exposure = make_exposure(n_standards=4, n_science=1, n_sky=1, n_pix=3000, fwhm=2.5, teff_range=(5300, 7700),
                                 logg_range=(4.05, 4.45), feh_range=(-0.9, 0.4), gray_range=(1.0, 1.0),
                                 calibration=extincted_calibration(x), seed=500 + i)
        exposure.hdulist[0].header["AIRMASS"] = x
        red, cat = exposure.write(folder, stem=f"base{i}")
        run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=compact_grid_folder(), plots=folder / "qc",
                                               save_calibration=folder / f"base{i}_red_fluxcal.fits"))
        out.append(Path(run.output))
    return out


def _scale(hdul, gain):
    """Multiply every calibration vector of a product or calibrated file by ``gain(λ)``."""
    for hdu in hdul:
        if hdu.name in ("FLUXCAL", "FCALVEC"):
            g = gain(hdu.data["WAVELENGTH"])
            hdu.data["CAL_FACTOR"] *= g
            hdu.data["CAL_VARIANCE"] *= g**2
            if "SMOOTH_FACTOR" in hdu.columns.names:
                hdu.data["SMOOTH_FACTOR"] *= g
                hdu.data["SMOOTH_VARIANCE"] *= g**2


def _replicate(base, night, n, rng):
    """A night of ``n`` calibrated files made from the base ones, with its run log."""
    from kspec_fluxcal.batch import BatchRecord
    from kspec_fluxcal.runlog import RUN_LOG_NAME, append_run_log, new_run_id, run_log_table
    from kspec_fluxcal.simulate_atmosphere import site_extinction

    records = []
    for i in range(n):
        src = base[i % len(base)]
        name = f"night_{i:04d}_red.fits"
        target = night / name
        if i % 25 == 24:
            with fits.open(src) as hdul:
                fits.PrimaryHDU(hdul[0].data, hdul[0].header).writeto(target)
            records.append(BatchRecord(str(target), "failed", reason="catalogue holds no rows, only a header"))
            continue
        x_base = BASE_AIRMASS[i % len(base)]
        x = float(rng.uniform(1.0, 2.0))
        transparency = float(rng.uniform(0.5, 0.9)) if i % 10 == 5 else 1.0

        def gain(wave, x=x, x_base=x_base, t=transparency):
            return 10.0 ** (0.4 * site_extinction(wave) * (x - x_base)) / t

        for source, dest in ((src, target), (src.with_name(src.stem + "_fluxcal.fits"),
                                             night / f"night_{i:04d}_red_fluxcal.fits")):
            with fits.open(source) as hdul:
                _scale(hdul, gain)
                hdul[0].header["AIRMASS"] = x
                hdul[0].header["DATE-OBS"] = f"2026-03-01T{1 + i * 5 // 60:02d}:{i * 5 % 60:02d}:00"
                hdul.writeto(dest)
        for png in (src.parent / "qc").glob(f"{src.stem}_*.png"):
            shutil.copyfile(png, night / "qc" / png.name.replace(src.stem, target.stem))
        records.append(BatchRecord(str(target), "ok", str(target), 4, 0.003, 10.0))
    append_run_log(night / RUN_LOG_NAME, run_log_table(records, new_run_id()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the night and its report in this folder")
    args = parser.parse_args(argv)
    from kspec_fluxcal.report import write_report

    work = args.keep or Path(tempfile.mkdtemp(prefix="kspec_bench_report_"))
    work.mkdir(parents=True, exist_ok=True)
    base_dir, night = work / "base", work / "night"
    for folder in (base_dir, night, night / "qc"):
        folder.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    base = _base_night(base_dir)
    print(f"calibrated {len(base)} base exposures in {time.perf_counter() - t0:.1f} s", flush=True)
    _replicate(base, night, args.exposures, np.random.default_rng(1))
    times = []
    for k in range(args.repeat):
        t0 = time.perf_counter()
        report = write_report(night, work / f"report{k}")
        times.append(time.perf_counter() - t0)
        print(f"report {k + 1}: {times[-1]:.1f} s", flush=True)
    flagged = sum(e.flagged for e in report.exposures)
    failed = sum(e.state == "failed" for e in report.exposures)
    clear = [e.values["transparency"] for e in report.exposures
             if e.state == "ok" and e.values["transparency"] is not None and int(e.name[6:10]) % 10 != 5]
    print(f"{len(report.exposures)} exposures ({failed} failed, {flagged} flagged): best {min(times):.1f} s "
          f"(target ≤ 30 s); clear transparencies {np.min(clear):.3f}–{np.max(clear):.3f}")
    print(f"report: {work / 'report0' / 'index.html'}")
    if not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
