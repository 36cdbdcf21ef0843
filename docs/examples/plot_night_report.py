"""
A night at a glance: the night report
=====================================

This example reduces a small **SYNTHETIC** night and writes its report
page (`kspec_fluxcal.report.write_report`, the same as ``kspec-fluxcal
report NIGHT_DIR -o REPORT_DIR``):

* four small exposures made by `~kspec_fluxcal.simulate.make_exposure` at
  airmasses 1.05–1.5 through a tabulated site extinction curve
  (`kspec_fluxcal.simulate_atmosphere`); the third is taken through 30 %
  cloud (its counts × 0.7);
* a fifth exposure whose catalogue came back without stars: it fails;
* each is calibrated with `~kspec_fluxcal.pipeline.apply_fluxcal` (what a
  batch task runs) and its record goes into the night's run log
  (`kspec_fluxcal.runlog`), as ``kspec-fluxcal batch`` leaves it;
* the report reads that folder and says which exposure was cloudy and which
  failed, and why.
"""

# %%
# A small SYNTHETIC night
# -----------------------
#
# Every standard has the same aperture loss here (``gray_range=(1, 1)``), so
# that a transparency of 1 means clear. The cloudy exposure's true flux per
# count is 1/0.7 of the clear one's at its airmass.

import logging
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
from astropy.table import Table

from kspec_fluxcal.batch import BatchRecord
from kspec_fluxcal.demo import compact_grid_folder
from kspec_fluxcal.exceptions import KspecFluxcalError
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal
from kspec_fluxcal.report import write_report
from kspec_fluxcal.runlog import RUN_LOG_NAME, append_run_log, new_run_id, run_log_table
from kspec_fluxcal.simulate import make_exposure
from kspec_fluxcal.simulate_atmosphere import extincted_calibration

logging.getLogger("kspec_fluxcal").setLevel(logging.WARNING)
warnings.simplefilter("ignore")  # the compact grid's resolution warnings, not the point here

night = Path(tempfile.mkdtemp(prefix="kspec_fluxcal_night_"))
airmasses = (1.05, 1.2, 1.3, 1.5, 1.4)
CLOUDY, FAILING = 2, 4
frames = []
for i, x in enumerate(airmasses):
    clear = extincted_calibration(x)
    calibration = (lambda w, c=clear: c(w) / 0.7) if i == CLOUDY else clear
    exposure = make_exposure(n_standards=4, n_science=1, n_sky=1, n_pix=2500, fwhm=3.0, teff_range=(5600, 7400),
                             logg_range=(4.05, 4.45), feh_range=(-0.5, 0.3), gray_range=(1.0, 1.0),
                             calibration=calibration, seed=80 + i)
    exposure.hdulist[0].header["AIRMASS"] = x
    exposure.hdulist[0].header["DATE-OBS"] = f"2026-03-01T{2 + i:02d}:15:00"
    red, catalog = exposure.write(night, stem=f"n1_{i:04d}")
    if i == FAILING:
        catalog.write_text(catalog.read_text().splitlines()[0] + "\n")  # a header, no stars
    frames.append((red, catalog))

# %%
# Calibrate, as a batch would
# ---------------------------
#
# One record per frame — ``ok`` with its standards and scatter, or
# ``failed`` with the reason — appended to the night's run log.

records = []
for red, catalog in frames:
    start = time.perf_counter()
    try:
        run = apply_fluxcal(red, FluxcalConfig(catalog=catalog, templates=compact_grid_folder(),
                                               plots=night / "qc",
                                               save_calibration=night / f"{red.stem}_fluxcal.fits"))
        summary = run.result.summary
        records.append(BatchRecord(str(red), "ok", str(run.output), summary["n_stars_used"],
                                   summary["rms_scatter"], time.perf_counter() - start))
    except KspecFluxcalError as exc:
        records.append(BatchRecord(str(red), "failed", reason=str(exc), seconds=time.perf_counter() - start))
append_run_log(night / RUN_LOG_NAME, run_log_table(records, new_run_id()))
run_log = Table.read(night / RUN_LOG_NAME)["file", "state", "n_standards", "rms"]
run_log["file"] = [Path(f).name for f in run_log["file"]]
print(run_log)

# %%
# The report
# ----------
#
# ``index.html`` opens in any browser; ``night_summary.ecsv`` holds its
# table. The cloudy exposure has transparency ≈ 0.7 and is flagged; the
# failure is listed with its reason.

report = write_report(night, night / "report")
summary = Table.read(night / "report" / "night_summary.ecsv")
summary["file", "state", "airmass", "level", "transparency", "transparency_err"].pprint(max_width=-1)
for row in summary:
    if row["flag"] or row["reason"]:
        print(f"{row['file']}: {row['flag'] or ''} {row['reason'] or ''}".strip())
print(sorted(p.name for p in (night / "report").iterdir()))

# %%
# The page's figures: the throughput of every exposure relative to the
# night's median (the cloudy one 30 % below at every wavelength), and the
# transparency and level against time and airmass. The level falls with
# airmass; the transparency, after the airmass term, does not.

for name in ("throughput_ratio.png", "transparency.png"):
    image = plt.imread(night / "report" / name)
    fig, ax = plt.subplots(figsize=(8, 8 * image.shape[0] / image.shape[1]), layout="constrained")
    ax.imshow(image)
    ax.set_axis_off()
plt.show()
