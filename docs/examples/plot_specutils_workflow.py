"""
A specutils workflow on calibrated spectra
==========================================

Calibrated frames are ordinary FITS images, and every fiber turns into a
`specutils.Spectrum` with units, a ``VarianceUncertainty`` and a mask — ready
for the specutils analysis tools. This tutorial

1. calibrates a **SYNTHETIC** exposure (as in the previous tutorials) and
   reads the calibrated RED file back;
2. builds the `~specutils.Spectrum` of one science fiber, masking the pixels
   where the calibration is undefined (NaN);
3. cuts the Hα region out with `~specutils.manipulation.extract_region` and a
   `~specutils.SpectralRegion`;
4. subtracts a linear continuum and measures the line flux, its uncertainty
   and the equivalent width with `specutils.analysis`, with units — and
   compares them with the same measurements on the true spectrum.

The stars are SYNTHETIC: their Hα is an absorption line, so its line flux is
negative.
"""

# %%
# A calibrated RED file
# ---------------------

import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.modeling import fitting, models
from astropy.nddata import VarianceUncertainty
from astropy.table import Table
from specutils import SpectralRegion, Spectrum
from specutils.analysis import centroid, equivalent_width, line_flux, snr
from specutils.manipulation import extract_region

from kspec_fluxcal.demo import compact_grid_folder
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal
from kspec_fluxcal.simulate import make_exposure

exposure = make_exposure(n_standards=8, n_science=6, n_sky=2, n_pix=4000, fwhm=3.0,
                         teff_range=(5600, 7400), logg_range=(4.05, 4.45), feh_range=(-0.4, 0.3), seed=9)
workdir = Path(tempfile.mkdtemp(prefix="kspec_fluxcal_specutils_"))
red_file, catalog_file = exposure.write(workdir, stem="night1")
run = apply_fluxcal(red_file, FluxcalConfig(catalog=catalog_file, templates=compact_grid_folder(),
                                            output=workdir / "night1_fluxcal.fits"))
calibrated_file = run.output
print(calibrated_file.name)

# %%
# Reading one fiber into a ``Spectrum``
# -------------------------------------
#
# ``PRIMARY`` holds the flux density (its unit in ``BUNIT``), ``VARIANCE``
# its variance and ``WAVELA`` the wavelengths (Å, air) of every fiber. Pixels
# where the calibration is undefined are NaN: they become masked pixels
# (mask True = bad, the astropy convention).

with fits.open(calibrated_file) as hdul:
    header = hdul["PRIMARY"].header
    flux_unit = u.Unit(header["BUNIT"])
    flux = hdul["PRIMARY"].data.astype(float)
    variance = hdul["VARIANCE"].data.astype(float)
    wavelength = hdul["WAVELA"].data.astype(float)
    fibres = Table.read(hdul["FIBRES"])
print("BUNIT =", flux_unit, "| FLUXCAL =", header["FLUXCAL"], "| standards used:", header["FCALNSTR"])

types = np.char.strip(fibres["TYPE"].astype(str))
fiber = int(np.flatnonzero(types == "P")[1])
bad = ~np.isfinite(flux[fiber]) | ~np.isfinite(variance[fiber])
spectrum = Spectrum(
    spectral_axis=wavelength[fiber] * u.AA,
    flux=np.where(bad, 0.0, flux[fiber]) * flux_unit,
    uncertainty=VarianceUncertainty(np.where(bad, np.inf, variance[fiber]) * flux_unit**2),
    mask=bad,
    meta={"fiber": fiber, "name": str(fibres["NAME"][fiber]), "note": "SYNTHETIC star"},
)
print(spectrum.meta, f"{bad.sum()} masked pixels")
print(f"median S/N per pixel over 6000-6400 Å: "
      f"{snr(spectrum, SpectralRegion(6000 * u.AA, 6400 * u.AA)):.1f}")

# %%
# The same fiber's true flux, for comparison. The absolute level of the
# calibration is that of the median aperture loss of the standards used (see
# :doc:`/caveats`), so the truth is scaled the same way.

truth = exposure.truth
used = [m["fiber_id"] for m in run.result.summary["per_star_metrics"] if m.get("used")]
level = np.median(truth["gray"][used])
true_spectrum = Spectrum(spectral_axis=wavelength[fiber] * u.AA,
                         flux=truth["true_flux"][fiber] * truth["reference_gray"] / level * flux_unit)

# %%
# Cutting out Hα
# --------------
#
# A `~specutils.SpectralRegion` can hold several sub-regions: the line window
# and two continuum sidebands. `~specutils.manipulation.extract_region` cuts
# them out (with their uncertainty and mask).

line_window = SpectralRegion(6548 * u.AA, 6578 * u.AA)
sidebands = SpectralRegion([(6500 * u.AA, 6530 * u.AA), (6595 * u.AA, 6625 * u.AA)])
cutout = extract_region(spectrum, SpectralRegion(6500 * u.AA, 6625 * u.AA))
side_parts = extract_region(spectrum, sidebands)  # a list, one Spectrum per sub-region
print(f"cutout: {len(cutout.flux)} pixels, {cutout.spectral_axis[0]:.1f} – {cutout.spectral_axis[-1]:.1f}, "
      f"flux in {cutout.flux.unit}, {type(cutout.uncertainty).__name__}, {int(cutout.mask.sum())} masked")
print(f"sidebands: {[len(s.flux) for s in side_parts]} pixels")

# %%
# A linear continuum, fitted to the sidebands with their variances as
# weights, is subtracted (specutils arithmetic keeps the units and propagates
# the uncertainty of the spectrum).

side_wave = np.concatenate([s.spectral_axis.value for s in side_parts])
side_flux = np.concatenate([s.flux.value for s in side_parts])
side_sigma = np.concatenate([s.uncertainty.represent_as(VarianceUncertainty).array ** 0.5 for s in side_parts])
line_model = fitting.LinearLSQFitter()(models.Linear1D(), side_wave, side_flux, weights=1 / side_sigma)
continuum = line_model(cutout.spectral_axis.value) * flux_unit
line_only = cutout - continuum
true_cutout = extract_region(true_spectrum, SpectralRegion(6500 * u.AA, 6625 * u.AA))
true_side = extract_region(true_spectrum, sidebands)
true_model = fitting.LinearLSQFitter()(models.Linear1D(), side_wave,
                                        np.concatenate([s.flux.value for s in true_side]))
true_line_only = true_cutout - true_model(true_cutout.spectral_axis.value) * flux_unit

# %%
# Line flux, centroid and equivalent width
# ----------------------------------------
#
# `~specutils.analysis.line_flux` integrates over the window and returns a
# Quantity in erg s⁻¹ cm⁻² with its uncertainty (from the variance);
# `~specutils.analysis.equivalent_width` needs the continuum-normalised
# spectrum.

measured = line_flux(line_only, regions=line_window)
expected = line_flux(true_line_only, regions=line_window)
print(f"Hα line flux: {measured.to(u.erg / u.s / u.cm**2):.4g} "
      f"± {measured.uncertainty.to(u.erg / u.s / u.cm**2):.2g}")
print(f"truth       : {expected.to(u.erg / u.s / u.cm**2):.4g}  "
      f"(ratio {float(measured / expected):.3f})")

normalised = cutout / continuum
ew = equivalent_width(normalised, regions=line_window, continuum=1)
ew_true = equivalent_width(true_cutout / (true_model(true_cutout.spectral_axis.value) * flux_unit),
                           regions=line_window, continuum=1)
print(f"Hα equivalent width: {ew:.3f} (truth {ew_true:.3f})")
print(f"Hα centroid: {centroid(line_only, regions=line_window):.2f} (air; the star is Doppler shifted)")

# %%
# The cutout with its ±1σ band, the fitted continuum and the truth.

fig, (ax, ax_res) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=[3, 1], layout="constrained")
wave = cutout.spectral_axis.value
sigma = cutout.uncertainty.represent_as(VarianceUncertainty).array ** 0.5
for region, color in ((sidebands, "C2"), (line_window, "C1")):
    for sub in region:
        ax.axvspan(sub.lower.value, sub.upper.value, color=color, alpha=0.12, lw=0)
ax.fill_between(wave, cutout.flux.value - sigma, cutout.flux.value + sigma, color="C0", alpha=0.3, lw=0)
ax.plot(wave, cutout.flux.value, color="C0", lw=1, label=f"calibrated fiber {fiber} (SYNTHETIC)")
ax.plot(wave, true_cutout.flux.value, color="C3", lw=1, label="truth")
ax.plot(wave, continuum.value, color="k", ls="--", lw=1, label="linear continuum (sidebands)")
ax.set_ylabel(f"Flux density ({flux_unit.to_string('latex_inline')})")
ax.set_title(f"Hα: line flux {measured.to_value(u.erg / u.s / u.cm**2):.3g} erg s$^{{-1}}$ cm$^{{-2}}$, "
             f"EW {ew.to_value(u.AA):.2f} Å")
ax.legend(fontsize=8, loc="lower left")
ax_res.plot(wave, 100 * (cutout.flux.value / true_cutout.flux.value - 1), color="k", lw=0.8)
ax_res.axhline(0, color="C3", lw=0.8)
ax_res.set_ylabel("cal. / truth − 1 (%)")
ax_res.set_xlabel("Wavelength in air (Å)")
plt.show()

# %%
# The files of this tutorial were written to a temporary folder; remove it.

shutil.rmtree(workdir)
