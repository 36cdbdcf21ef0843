"""
KSPEC frames in specutils: read, calibrate, analyse, write
==========================================================

After ``import kspec_fluxcal``, a KSPEC RED frame is a specutils file format
(``KSPEC-RED``). This tutorial

1. reads a raw frame with ``SpectrumList.read`` — one `~specutils.Spectrum`
   per fiber, with units, a ``VarianceUncertainty``, a mask (True = bad) and
   the fiber's ``FIBRES`` row in ``meta``;
2. calibrates it: the calibration is derived from the frame's standard stars
   and applied to the ``SpectrumList`` with
   `~kspec_fluxcal.apply.apply_flux_calibration`, which returns a
   ``SpectrumList`` with the variance propagated;
3. analyses one calibrated fiber with specutils: `~specutils.analysis.snr`,
   `~specutils.analysis.line_flux` of Hα, and a
   `~specutils.manipulation.FluxConservingResampler` that carries the
   uncertainties onto a new grid;
4. writes the calibrated fibers back as a RED frame and reads them again.

The exposure and the templates are **SYNTHETIC** (`kspec_fluxcal.simulate`),
so everything runs offline; their Hα is an absorption line, so its line flux
is negative.
"""

# %%
# A raw frame as a ``SpectrumList``
# ---------------------------------

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from astropy import units as u
from specutils import SpectralRegion, Spectrum, SpectrumList
from specutils.analysis import line_flux, snr
from specutils.manipulation import FluxConservingResampler, extract_region

import kspec_fluxcal
from kspec_fluxcal.demo import compact_grid_folder
from kspec_fluxcal.simulate import make_exposure

exposure = make_exposure(n_standards=6, n_science=4, n_sky=2, n_pix=4000, fwhm=3.0,
                         teff_range=(5600, 7400), logg_range=(4.05, 4.45), feh_range=(-0.4, 0.3), seed=21)
workdir = Path(tempfile.mkdtemp(prefix="kspec_fluxcal_frame_"))
red_file, catalog_file = exposure.write(workdir, stem="frame")

spectra = SpectrumList.read(red_file)  # recognised as KSPEC-RED; format="KSPEC-RED" says it explicitly
print(len(spectra), "fibers;", "flux unit:", spectra[0].flux.unit, "| first fiber:", spectra[0].meta["fibre"])

# %%
# The fibers of this frame have slightly different wavelengths, so they do
# not form one 2-D ``Spectrum``; ``Spectrum.read`` says so and points to
# ``SpectrumList.read``.

try:
    Spectrum.read(red_file)
except kspec_fluxcal.RedFileError as exc:
    print(exc)

# %%
# Calibrating the fibers
# ----------------------
#
# `~kspec_fluxcal.pipeline.apply_fluxcal` derives the calibration from the
# standard stars (``TYPE='C'``) and the catalogue, and writes the calibrated
# frame. Its result applies to any ``Spectrum`` or ``SpectrumList`` in the
# same counts unit.

run = kspec_fluxcal.apply_fluxcal(red_file, kspec_fluxcal.FluxcalConfig(
    catalog=catalog_file, templates=compact_grid_folder(), output=workdir / "frame_fluxcal.fits"))
calibrated = kspec_fluxcal.apply_flux_calibration(spectra, run.result)
print(type(calibrated).__name__, "| flux unit:", calibrated[0].flux.unit,
      "| standards used:", calibrated[0].meta["header"]["FCALNSTR"])

# %%
# The calibrated file written by the pipeline reads back to the same fibers
# (it stores float32, hence the tolerance).

from_file = SpectrumList.read(run.output)
good = ~calibrated[4].mask
print("largest relative difference to the written file:",
      float(np.max(np.abs(from_file[4].flux.value[good] / calibrated[4].flux.value[good] - 1))))

# %%
# Analysing a calibrated fiber with specutils
# -------------------------------------------
#
# One science fiber (``TYPE='P'``): its signal-to-noise ratio over a clean
# window, and the Hα line flux after a linear continuum through two side
# windows is subtracted.

science = [s for s in calibrated if s.meta["fibre"]["TYPE"] == "P"]
fiber = science[1]
print("fiber", fiber.meta["fiber"], fiber.meta["fibre"]["NAME"])
print("S/N over 6000–6400 Å:", float(snr(fiber, SpectralRegion(6000 * u.AA, 6400 * u.AA))))

window = extract_region(fiber, SpectralRegion(6500 * u.AA, 6625 * u.AA))
wave = window.spectral_axis.to_value(u.AA)
side = (np.abs(wave - 6512) < 10) | (np.abs(wave - 6613) < 10)
slope, intercept = np.polyfit(wave[side], window.flux.value[side], 1)
continuum = (slope * wave + intercept) * window.flux.unit
line = Spectrum(spectral_axis=window.spectral_axis, flux=window.flux - continuum,
                uncertainty=window.uncertainty, mask=window.mask)
halpha = line_flux(line, SpectralRegion(6550 * u.AA, 6576 * u.AA))
print(f"Hα line flux: {halpha.value:.3e} ± {halpha.uncertainty.value:.1e} {halpha.unit}")

# %%
# Resampling onto a coarser grid with the uncertainties carried
# (`~specutils.manipulation.FluxConservingResampler` returns them as an
# inverse variance).

new_grid = np.arange(6505.0, 6620.0, 2.0) * u.AA
resampled = FluxConservingResampler()(window, new_grid)
print(type(resampled.uncertainty).__name__, "| median σ after / before:",
      float(np.median(resampled.uncertainty.represent_as(type(window.uncertainty)).array ** 0.5)
            / np.median(window.uncertainty.array ** 0.5)))

fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
ax.plot(wave, window.flux.value, lw=0.8, label="calibrated fiber")
ax.plot(wave, continuum.value, "k--", lw=0.8, label="linear continuum")
sigma = np.sqrt(1.0 / resampled.uncertainty.array)
ax.errorbar(new_grid.value, resampled.flux.value, yerr=sigma, fmt="o", ms=3, label="resampled (2 Å)")
ax.set_xlabel("wavelength (Å, air)")
ax.set_ylabel(f"flux density ({fiber.flux.unit.to_string('latex_inline')})")
ax.legend()

# %%
# Writing the calibrated fibers back
# ----------------------------------
#
# A ``SpectrumList`` of equal-length fibers (or a 2-D ``Spectrum``) writes as
# a RED frame: flux and ``BUNIT``, ``VARIANCE``, each fiber's ``WAVELA`` row,
# ``FIBRES`` from the fibers' ``meta`` and the header (now with
# ``FLUXCAL = T``). It reads back without loss.

out = workdir / "frame_specutils.fits"
calibrated.write(out, format="KSPEC-RED")
again = SpectrumList.read(out)
print("identical after the round trip:",
      all(np.array_equal(a.flux.value, b.flux.value, equal_nan=True) and np.array_equal(a.mask, b.mask)
          for a, b in zip(calibrated, again)))
