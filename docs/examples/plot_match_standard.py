"""
Matching one standard star to a template grid
=============================================

The heart of the calibration is finding, for each standard star, the model
spectrum that looks like it: effective temperature, surface gravity and
metallicity (refined between the grid nodes) and the radial velocity. This
tutorial does it for one star, step by step:

1. write (once) a compact **SYNTHETIC** template grid in the BOSZ 2024 file
   format and open it as a `~kspec_fluxcal.templates.TemplateLibrary`;
2. simulate an exposure with a single standard star (**SYNTHETIC**, with
   known parameters) with `~kspec_fluxcal.simulate.make_exposure`;
3. prepare the grid for the instrument — LSF convolution and resampling of
   every template at once — with
   `PreparedGrid.build <kspec_fluxcal.templates.PreparedGrid.build>`;
4. find the best template and RV with
   `~kspec_fluxcal.matching.select_best_template`;
5. look at the fit with `~kspec_fluxcal.qc.plot_template_match`.

The grid and the star come from the same analytic model
(`kspec_fluxcal.simulate`), so the answer is known — and the star's parameters
lie *between* grid nodes, as a real star's would. Real calibrations use BOSZ
2024 or Castelli–Kurucz models (see :doc:`/howto/templates`).
"""

# %%
# The template library
# --------------------
#
# `kspec_fluxcal.demo.compact_grid_folder` writes the compact SYNTHETIC grid
# of the demo into the package cache on first use (a few seconds) and returns
# its folder: 56 models, Teff 5000–8000 K in 500 K steps, log g 4.0 and 4.5,
# [M/H] −1.0 … +0.5, at R = 5000, laid out exactly like BOSZ 2024 on MAST.
# `~kspec_fluxcal.templates.TemplateLibrary` recognises the format and indexes
# the models from their file names.

import matplotlib.pyplot as plt
import numpy as np
from astropy import units as u

from kspec_fluxcal.containers import make_spectrum
from kspec_fluxcal.demo import compact_grid_folder
from kspec_fluxcal.masks import load_mask_array, load_mask_regions
from kspec_fluxcal.matching import model_spectrum, select_best_template
from kspec_fluxcal.qc import plot_template_match
from kspec_fluxcal.simulate import make_exposure
from kspec_fluxcal.templates import PreparedGrid, TemplateLibrary
from kspec_fluxcal.wavelength import common_log_grid

library = TemplateLibrary(compact_grid_folder())
print(library)
print((library.path / "README.txt").read_text().splitlines()[0])
print(library.entries["teff", "logg", "feh", "alpha_m"][:5])

# %%
# A simulated standard star
# -------------------------
#
# `~kspec_fluxcal.simulate.make_exposure` builds a RED frame the way the sky
# and the instrument make one: the star's spectrum (SYNTHETIC, at random
# parameters), reddened, Doppler shifted, through telluric bands, convolved
# with a 3 Å FWHM Gaussian LSF, divided by a known throughput, plus noise. We
# ask for one standard fiber and nothing else.

fwhm = 3.0  # Å, the instrument's FWHM (written as SPECFWHM in the header)
exposure = make_exposure(n_standards=1, n_science=0, n_sky=0, n_pix=4000, fwhm=fwhm,
                         snr_range=(60, 60), seed=11)
truth = exposure.truth["stars"][0]
print({k: round(float(truth[k]), 3) for k in ("teff", "logg", "feh", "rv_kms", "ebv")})

hdul = exposure.hdulist
wave = hdul["WAVELA"].data[0]
counts = hdul["PRIMARY"].data[0]
variance = hdul["VARIANCE"].data[0]
star = make_spectrum(wave, counts, variance, flux_unit="ct", meta={"name": "STD000 (SYNTHETIC)"})
print(star.flux.unit, star.spectral_axis[[0, -1]], star.uncertainty.__class__.__name__)

# %%
# Preparing the grid for the instrument
# -------------------------------------
#
# One sparse operator convolves every template with the instrument's LSF and
# averages it over the target pixels; the band fluxes of every template are
# computed over a grid of E(B−V) at the same time (they are used by the
# photometric scaling, in the next tutorial). The result is cached on disk: a
# second run with the same set-up loads it in milliseconds.

target = common_log_grid(wave[None, :]) * u.AA  # uniform in ln λ, spanning the fiber
grid = PreparedGrid.build(library, target, fwhm)
print(grid)

# %%
# The best template
# -----------------
#
# `~kspec_fluxcal.matching.select_best_template` measures the RV by
# cross-correlation, moves the star to the rest frame, divides star and
# templates by the same pseudo-continuum smoother (the unknown throughput and
# the reddening cancel), scores every template at once and refines the best
# node between the nodes. Telluric bands are given zero weight.

telluric = load_mask_regions("telluric_default")
match = select_best_template(star, grid, mask_regions=telluric)

print(f"best node  : {match.node_params}")
print(f"refined    : { {k: round(v, 3) for k, v in match.params.items()} }")
print(f"truth      : Teff {truth['teff']:.0f} K, log g {truth['logg']:.2f}, [M/H] {truth['feh']:+.2f}")
print(f"RV         : {match.rv:.1f} ± {match.rv_error:.1f} (truth {truth['rv_kms']:+.1f} km / s)")
print(f"score/ndof : {match.reduced_score:.2f} ({match.n_candidates} candidate nodes)")

# %%
# How the score varies over the grid
# ----------------------------------
#
# ``match.scores`` holds the score of every node. At solar-like
# metallicities, the χ² valley in Teff is narrow; the metallicity is
# constrained by the metal lines.

params = grid.params
fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
for logg, marker in ((4.0, "o"), (4.5, "s")):
    for feh, color in zip((-1.0, -0.5, 0.0, 0.5), ("C0", "C1", "C2", "C3")):
        sel = (np.asarray(params["logg"]) == logg) & (np.asarray(params["feh"]) == feh)
        order = np.argsort(np.asarray(params["teff"])[sel])
        ax.plot(np.asarray(params["teff"])[sel][order], match.scores[sel][order] / match.ndof,
                marker=marker, color=color, ls="-" if logg == 4.5 else ":", ms=4,
                label=f"log g {logg}, [M/H] {feh:+.1f}")
ax.axvline(truth["teff"], color="k", lw=0.8, ls="--", label="true Teff")
ax.set_yscale("log")
ax.set_xlabel("Template Teff (K)")
ax.set_ylabel("χ² per degree of freedom")
ax.set_title("Template scores of one SYNTHETIC standard star")
ax.legend(fontsize=7, ncols=2)
plt.show()

# %%
# The fit, continuum-normalised
# -----------------------------
#
# `~kspec_fluxcal.matching.model_spectrum` evaluates the refined model on the
# star's own (observed) wavelengths, Doppler shifted by the fitted RV.
# Dividing star and model by their own smooth continua shows the lines — what
# the match is made on. We use simple running medians for display here; the
# package itself uses a B-spline smoother. The telluric bands, which the
# match ignores, are masked (not drawn); what remains of the residual is
# noise, the cores of the strongest lines (Ca II H and K) and our crude
# normalisation.

model = model_spectrum(grid, match, wave * u.AA, rv=match.rv)


def running_median(y, width=151):
    """A plain running median: enough to normalise for display."""
    pad = np.pad(y, width // 2, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(pad, width)
    return np.nanmedian(windows, axis=1)


telluric_pixels = load_mask_array(wave * u.AA, telluric)  # True inside the telluric bands: not drawn
ratio = counts / model.value  # throughput × gray loss × noise: smooth
smooth_ratio = running_median(ratio)
observed_norm = counts / smooth_ratio
model_norm = model.value
cont = running_median(model_norm, 301)
# `~kspec_fluxcal.qc.plot_template_match` returns a figure of its own,
# outside pyplot; we hand it a pyplot figure so that it shows here.
fig = plot_template_match(
    wave * u.AA, observed_norm / cont, model_norm / cont,
    variance=variance / smooth_ratio**2 / cont**2,
    title="STD000 — a SYNTHETIC standard star, normalised by the same smooth curve",
    mask=telluric_pixels,
    params={**match.params, "rv_kms": match.rv.to_value(u.km / u.s)},
    fig=plt.figure(figsize=(11, 6), layout="constrained"),
)
plt.show()

# %%
# Zoom on the Balmer line Hβ and the Mg b triplet, where Teff, log g and
# [M/H] leave their marks.

fig = plot_template_match(
    wave * u.AA, observed_norm / cont, model_norm / cont,
    variance=variance / smooth_ratio**2 / cont**2,
    title="Zoom: Hβ and Mg b",
    params=match.params,
    fig=plt.figure(figsize=(11, 6), layout="constrained"),
)
for ax in fig.axes:
    ax.set_xlim(4780, 5250)
fig.axes[0].set_ylim(0.3, 1.2)
fig.axes[1].set_ylim(-8, 8)
plt.show()
