"""
Calibrating with a Castelli–Kurucz grid
=======================================

Besides BOSZ 2024, the package reads the Castelli & Kurucz (2004) ATLAS9 grid
in the STScI CDBS layout (``ck04models/ckp00/ckp00_6000.fits`` …), the folder
that synphot users keep under ``$PYSYN_CDBS/grid/ck04models``. Its models are
sampled every 10–20 Å in the optical: fine for spectral energy
distributions, too coarse for line-by-line matching at R ≈ 3000–5000 — so
this tutorial calibrates a **low-resolution** frame (FWHM 25–30 Å), where
that sampling is adequate.

What runs depends on what is on disk:

* the real ``ck04models`` subset is looked for in ``../shared/data`` beside
  the repository (and in ``$PYSYN_CDBS/grid/ck04models``). When it is found,
  the standards are **real** HST CALSPEC F/G stars (Bohlin et al.) from the
  same folder, observed through an invented throughput
  (`~kspec_fluxcal.simulate.make_calspec_exposure`) — real stars, real models,
  known truth — or SYNTHETIC stars if the CALSPEC spectra are absent;
* otherwise the compact **SYNTHETIC** grid of the demo stands in for the
  Castelli–Kurucz grid, with SYNTHETIC low-resolution stars, and the page
  says so. Nothing is downloaded.
"""

# %%
# Finding the grid
# ----------------

import os
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from astropy import units as u

from kspec_fluxcal.accuracy import calibration_accuracy
from kspec_fluxcal.containers import FLAM
from kspec_fluxcal.demo import compact_grid_folder
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal
from kspec_fluxcal.qc import plot_per_star_vectors, summarize_calibration
from kspec_fluxcal.simulate import make_calspec_exposure, make_exposure
from kspec_fluxcal.templates import PreparedGrid, TemplateLibrary


def find_shared_data(name):
    """``<ancestor>/shared/data/<name>`` for the first ancestor of this folder that has it."""
    here = Path(globals().get("__file__", Path.cwd() / "plot_ck04_grid.py")).resolve().parent
    for folder in (here, *here.parents):
        candidate = folder / "shared" / "data" / name
        if candidate.is_dir():
            return candidate
    return None


ck04 = find_shared_data("ck04models")
if ck04 is None and os.environ.get("PYSYN_CDBS"):
    candidate = Path(os.environ["PYSYN_CDBS"]) / "grid" / "ck04models"
    ck04 = candidate if candidate.is_dir() else None
calspec = find_shared_data("calspec")
calspec_files = sorted(calspec.glob("*.fits*")) if calspec is not None else []

if ck04 is not None:
    library = TemplateLibrary(ck04)
    grid_label = "Castelli–Kurucz ck04models (real ATLAS9 models)"
else:
    print("No ck04models folder was found (looked for ../shared/data/ck04models beside the repository\n"
          "and $PYSYN_CDBS/grid/ck04models). The compact SYNTHETIC grid of the demo stands in for it\n"
          "below: every number and figure on this page then describes SYNTHETIC templates.")
    library = TemplateLibrary(compact_grid_folder())
    grid_label = "compact SYNTHETIC grid (stand-in for ck04models)"
print(library)
print(f"{len(library)} models; Teff {min(library.entries['teff']):.0f}–{max(library.entries['teff']):.0f} K, "
      f"log g {min(library.entries['logg'])}–{max(library.entries['logg'])}, "
      f"[M/H] {sorted({float(f) for f in np.round(library.entries['feh'], 2)})}")

# %%
# The native models and what the instrument sees
# ----------------------------------------------
#
# `~kspec_fluxcal.templates.TemplateLibrary.get_template` returns the model
# nearest to given parameters as a `~kspec_fluxcal.containers.StellarTemplate`
# (surface flux F_λ and its continuum; for ck04, which has no continuum, the
# package derives a smooth upper envelope).
# `PreparedGrid.build <kspec_fluxcal.templates.PreparedGrid.build>`
# convolves the grid with the instrument's LSF and samples it on the frame's
# pixels — here a 30 Å FWHM over 3600–9800 Å.

fwhm = 30.0  # Å
target = np.geomspace(3600.0, 9800.0, 621) * u.AA
entries = library.query(teff_range=(5500, 7000), logg_range=(4.5, 4.5), feh_range=(0.0, 0.0))
prepared = PreparedGrid.build(library, target, fwhm, entries=entries)

fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
colors = plt.cm.plasma(np.linspace(0.1, 0.8, prepared.n_templates))
for i, color in zip(range(prepared.n_templates), colors):
    row = prepared.params[i]
    native = library.get_template(row["teff"], row["logg"], row["feh"])
    sel = (native.wavelength > 3400 * u.AA) & (native.wavelength < 10000 * u.AA)
    norm = np.median(prepared.flux[i])
    ax.plot(native.wavelength[sel], native.flux[sel].to_value(FLAM) / norm, color=color, lw=0.6, alpha=0.5)
    ax.plot(target, prepared.flux[i] / norm, color=color, lw=1.6,
            label=f"Teff {row['teff']:.0f} K, log g {row['logg']:.1f}, [M/H] {row['feh']:+.1f}")
ax.set_xlabel("Wavelength in air (Å)")
ax.set_ylabel("F$_\\lambda$ / median")
ax.set_title(f"{grid_label}: native (thin) and at FWHM = {fwhm:.0f} Å (thick)")
ax.legend(fontsize=8)
plt.show()

# %%
# A low-resolution exposure
# -------------------------
#
# With the real grid and the CALSPEC spectra at hand, the standards are six
# real F/G stars whose absolutely calibrated spectra are known; their
# catalogue photometry is computed from those spectra with realistic errors.
# Otherwise the standards are SYNTHETIC stars. Either way the instrument
# (throughput, 30 Å LSF, gray aperture losses, telluric bands, noise) is
# simulated, so the true calibration is known.

workdir = Path(tempfile.mkdtemp(prefix="kspec_fluxcal_ck04_"))
if ck04 is not None and calspec_files:
    exposure = make_calspec_exposure(calspec_files, n_pix=621, fwhm=fwhm, seed=2)
    stars_label = "real CALSPEC stars"
else:
    exposure = make_exposure(n_standards=6, n_science=0, n_sky=1, n_pix=621, fwhm=fwhm,
                             teff_range=(5600, 7400), logg_range=(4.05, 4.45), feh_range=(-0.4, 0.3), seed=4)
    stars_label = "SYNTHETIC stars"
red_file, catalog_file = exposure.write(workdir, stem="lowres")
print(f"standards: {stars_label}")
stars = exposure.truth["stars"]["fiber", "name", "gray", "snr"]
stars["gray"].format, stars["snr"].format = ".3f", ".0f"
print(stars)

# %%
# Calibrating
# -----------
#
# The command line equivalent is ``kspec-fluxcal calibrate lowres_red.fits
# --catalog lowres_refcat.csv --templates /path/to/ck04models``: the kind of
# library is recognised from the folder.

run = apply_fluxcal(red_file, FluxcalConfig(catalog=catalog_file, templates=library.path,
                                            output=workdir / "lowres_fluxcal.fits"))
print(summarize_calibration(run.result))

truth = exposure.truth
used = [m["fiber_id"] for m in run.result.summary["per_star_metrics"] if m.get("used")]
level = np.median(truth["gray"][used])
accuracy = calibration_accuracy(run.result, truth["wavelength"], truth["system_calibration"] / level)
print({k: round(v, 4) for k, v in accuracy.items()})

# %%
# The per-star vectors (gray terms removed) and the injected calibration
# shape: each standard measures the same throughput curve.

fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
plot_per_star_vectors(run.result, ax=ax)
# normalise the injected curve like the star vectors: by its median over a star's good pixels
first = run.result.per_star_vectors[0]
good_wave = first.wavelength[~first.mask]
injected = np.interp(good_wave, truth["wavelength"], truth["system_calibration"])
ax.plot(truth["wavelength"], truth["system_calibration"] / np.median(injected), color="k", lw=2, ls="--",
        label="injected (shape)")
ax.set_title(f"{grid_label}, {stars_label}: median |error| {100 * accuracy['median_abs_error']:.2f} %")
ax.legend(fontsize=8, loc="upper right")
plt.show()

# %%
# The files of this tutorial were written to a temporary folder; remove it.

shutil.rmtree(workdir)
