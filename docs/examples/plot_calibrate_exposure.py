"""
Calibrating a whole exposure
============================

This tutorial runs the complete RED-file stage,
`~kspec_fluxcal.pipeline.apply_fluxcal`, on a simulated exposure and checks
the result against the truth:

* a **SYNTHETIC** exposure — 8 standard stars, 6 "science" fibers (stars
  too, so that their true flux is known) and 2 sky fibers — and its Refcat2
  catalogue are made by `~kspec_fluxcal.simulate.make_exposure` and written
  to disk, exactly in the formats of a real frame;
* the frame is calibrated with the compact **SYNTHETIC** template grid of
  the demo, through the same code path as a real frame;
* the recovered calibration is compared with the injected one
  (`kspec_fluxcal.accuracy.calibration_accuracy`), and a calibrated science
  fiber with its true flux.

The same run, from the command line, is ``kspec-fluxcal demo``.
"""

# %%
# A simulated exposure and its catalogue
# --------------------------------------
#
# The stars' spectra come from the package's analytic model at random
# parameters between the grid nodes, with random radial velocities,
# reddening, photometric errors and gray aperture losses (0.7–1.0) per
# fiber. The instrument has a smooth, known throughput and a 3 Å FWHM.

import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from kspec_fluxcal.accuracy import calibration_accuracy, true_level
from kspec_fluxcal.apply import calibration_on_grid
from kspec_fluxcal.containers import FLAM, make_spectrum
from kspec_fluxcal.demo import compact_grid_folder
from kspec_fluxcal.masks import load_mask_regions
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal
from kspec_fluxcal.qc import plot_calibrated_spectrum, plot_calibration_summary, summarize_calibration
from kspec_fluxcal.simulate import make_exposure

exposure = make_exposure(n_standards=8, n_science=6, n_sky=2, n_pix=4000, fwhm=3.0,
                         teff_range=(5600, 7400), logg_range=(4.05, 4.45), feh_range=(-0.4, 0.3), seed=9)
workdir = Path(tempfile.mkdtemp(prefix="kspec_fluxcal_tutorial_"))
red_file, catalog_file = exposure.write(workdir, stem="tutorial")
print(red_file.name, catalog_file.name)

with fits.open(red_file) as hdul:
    hdul.info()
    print(repr(hdul[0].header["OBJECT"]), "|", hdul[0].header["COMMENT"][0])
    fibres = Table.read(hdul["FIBRES"])
for name, fmt in (("RA", ".5f"), ("DEC", ".5f"), ("MAGNITUDE", ".2f")):
    fibres[name].format = fmt
print(fibres["TYPE", "NAME", "RA", "DEC", "MAGNITUDE"])

# %%
# The catalogue is a Refcat2 CSV: Gaia DR2 and 2MASS in Vega magnitudes,
# Pan-STARRS1 in AB, sentinel values (99, 9.999) for missing bands, and a few
# field stars that are on no fiber.

print("\n".join(catalog_file.read_text().splitlines()[:3]))

# %%
# Calibrating
# -----------
#
# `~kspec_fluxcal.pipeline.FluxcalConfig` holds the options of the stage (the
# command line's ``kspec-fluxcal calibrate`` builds the same object). We
# write the calibrated frame to a new file; without ``output`` the input is
# rewritten atomically.

config = FluxcalConfig(catalog=catalog_file, templates=compact_grid_folder(),
                       output=workdir / "tutorial_fluxcal.fits")
run = apply_fluxcal(red_file, config)
result = run.result
print(summarize_calibration(result))

# %%
# A standard that fails a quality gate (a poor template fit, photometric
# residuals too large, best parameters on the edge of the grid, low S/N) or
# whose vector deviates from the others is rejected, and the reason is kept —
# in ``FCALSTAR``, the ``HISTORY`` lines and the summary above; rejected
# stars are drawn dashed and grey in the QC figures. The QC summary shows the
# combined vector, each star's vector with its gray term removed, the
# residuals from the combination and their histogram.
#
# The `kspec_fluxcal.qc` functions never touch pyplot's global state: they
# return a `~matplotlib.figure.Figure` of their own. To show one in a notebook
# or in this gallery, hand them a pyplot figure (``fig=``) or axes (``ax=``).

fig = plot_calibration_summary(result, fig=plt.figure(figsize=(13, 9), layout="constrained"))
plt.show()

# %%
# A calibrated science fiber
# --------------------------
#
# The calibrated frame holds flux densities in erg s⁻¹ cm⁻² Å⁻¹ with
# propagated variances; pixels where the calibration is undefined are NaN.
# The *level* of the calibration is that of the geometric mean gray aperture
# loss of the standards used (see :doc:`/caveats`), so the truth we compare
# with is each fiber's flux times that same loss.

truth = exposure.truth
level = true_level(result.summary, truth["gray"])

with fits.open(run.output) as hdul:
    flux = hdul["PRIMARY"].data.astype(float)
    flux_var = hdul["VARIANCE"].data.astype(float)
    wave2d = hdul["WAVELA"].data
    header = hdul["PRIMARY"].header
print({k: header[k] for k in ("BUNIT", "FLUXCAL", "FCALNSTR", "FCALRMS", "FCALFORM")})

science = int(np.flatnonzero(np.char.strip(fibres["TYPE"].astype(str)) == "P")[0])
bad = ~np.isfinite(flux[science])
spectrum = make_spectrum(wave2d[science], np.where(bad, 0.0, flux[science]),
                         np.where(bad, 1.0, flux_var[science]), mask=bad, flux_unit=FLAM)
true_flux = truth["true_flux"][science] * truth["reference_gray"] / level * FLAM
fig, ax = plt.subplots(figsize=(11, 4.5), layout="constrained")
plot_calibrated_spectrum(spectrum, truth=true_flux, ax=ax,
                         title=f"Fiber {science} ({fibres['NAME'][science]}), SYNTHETIC: calibrated vs truth")
plt.show()

# %%
# Accuracy against the truth
# --------------------------
#
# `~kspec_fluxcal.accuracy.calibration_accuracy` compares the combined vector with
# the injected calibration (divided by the same level) over 3700–9500 Å: the
# median and 95th percentile of the fractional error, the level error, and
# the rms of the pulls (error / σ) — near 1 when the error bars are honest.

accuracy = calibration_accuracy(result, truth["wavelength"], truth["system_calibration"] / level)
outside = calibration_accuracy(result, truth["wavelength"], truth["system_calibration"] / level,
                               exclude_regions=load_mask_regions("telluric_default"))
print(f"{'':18s} {'all pixels':>12s} {'outside telluric bands':>24s}")
for key in accuracy:
    print(f"{key:18s} {accuracy[key]:12.4g} {outside[key]:24.4g}")

# %%
# Inside the telluric bands the stars' vectors are masked and the smooth
# combined vector is interpolated across them, so the errors there are
# usually (not always) larger than outside; compare the two columns.

# %%
# The ratio of recovered to injected calibration, with the ±1σ band of the
# recovered one. Grey bands are the telluric regions left out of the fit
# (the calibration there is interpolated by the smooth form).

wave_truth = truth["wavelength"]
factor, variance, masked = calibration_on_grid(result.combined_vector, wave_truth)
injected = truth["system_calibration"] / level
ratio = np.where(masked, np.nan, factor / injected)
sigma = np.where(masked, np.nan, np.sqrt(variance) / injected)

fig, ax = plt.subplots(figsize=(10, 4), layout="constrained")
for lo, hi in load_mask_regions("telluric_default").to_value(u.AA):
    ax.axvspan(lo, hi, color="0.9", lw=0)
ax.fill_between(wave_truth.value, 100 * (ratio - sigma - 1), 100 * (ratio + sigma - 1), color="C0", alpha=0.3,
                lw=0, label="±1σ of the recovered calibration")
ax.plot(wave_truth.value, 100 * (ratio - 1), color="C0", lw=1, label="recovered / injected − 1")
ax.axhline(0, color="k", lw=0.8)
limit = max(1.0, 1.3 * np.nanpercentile(np.abs(100 * (ratio - 1)) + 100 * sigma, 99))
ax.set_ylim(-limit, limit)
ax.set_xlabel("Wavelength in air (Å)")
ax.set_ylabel("Calibration error (%)")
ax.set_title(f"SYNTHETIC exposure: {accuracy['n_stars_used']} standards used, median |error| "
             f"{100 * outside['median_abs_error']:.2f} % outside the telluric bands (grey)")
ax.legend(loc="lower right")
plt.show()

# %%
# The files of this tutorial were written to a temporary folder; remove it.

shutil.rmtree(workdir)
