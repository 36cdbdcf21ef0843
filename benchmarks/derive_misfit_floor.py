"""Derive the ck04 template-misfit floor from real CALSPEC F/G stars (a script, not a test).

Each CALSPEC star of `FLOOR_STARS` (in ``../shared/data/calspec``) is observed (FWHM 30 Å, 10 Å
pixels, high S/N, no gray loss, no telluric bands) through a known
throughput and calibrated with the ck04 grid as its files are (no template
correction: the floor is the term of the standards that no correction
covers) and with **no** misfit term. A star's
smooth vector divided by the truth is (its best scaled ck04 model)/(the real
star): its misfit as it enters the calibration. The mean over the stars is
the misfit they share (it does not average down in the combination); the
floor is

    σ_floor(λ)² = ⟨m(λ)²⟩_250Å + ⟨s(λ)²⟩_250Å / N,

m the mean and s the scatter of the N stars' misfits, ⟨⟩ a 250 Å running
mean, pooled over noise realisations. It is written to
``kspec_fluxcal/data/template_misfit_ck04.ecsv`` (read by
`kspec_fluxcal.error_budget.library_misfit_floor`).

Usage::

    python benchmarks/derive_misfit_floor.py [--data ../shared/data] [--seeds 4] [--write]

Caveat: only six stars exist here, and they are the stars of the CALSPEC
accuracy test, so that test checks the plumbing of the floor, not its size
on other stars.
"""

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import Table
from scipy.ndimage import uniform_filter1d

from kspec_fluxcal.masks import load_mask_array, load_mask_regions
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal
from kspec_fluxcal.simulate import make_calspec_exposure

OUTPUT = Path(__file__).resolve().parents[1] / "kspec_fluxcal" / "data" / "template_misfit_ck04.ecsv"
STEP = 20.0  # Å, sampling of the table
WINDOW = 250.0  # Å, running mean of the squared misfit


FLOOR_STARS = ("hd031128_stis_006.fits.gz", "hd111980_stis_006.fits.gz", "bd_17d4708_stisnic_007.fits.gz",
               "hd209458_stisnic_008.fits.gz", "p177d_stisnic_010.fits.gz", "hd38949_stis_007.fits.gz")
"""The six CALSPEC F/G spectra the shipped floor was derived from (named: more stars in ../shared change nothing)."""


def star_misfits(data, seed, tmp):
    """(wavelength, misfits (n_star, n_pix)) of one noise realisation; NaN where undefined."""
    files = [data / "calspec" / name for name in FLOOR_STARS]
    exposure = make_calspec_exposure(files, fwhm=30.0, n_pix=621, snr_range=(200.0, 300.0), gray_range=(1.0, 1.0),
                                     telluric=False, seed=seed)
    red, cat = exposure.write(tmp, stem=f"floor{seed}")
    run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=data / "ck04models", fwhm=30.0, force=True,
                                           output=tmp / f"floor{seed}_cal.fits", template_misfit=0.0,
                                           template_correction=None))
    wave = run.result.combined_vector.wavelength.to_value(u.AA)
    truth = exposure.truth["system_calibration"]
    truth = np.interp(wave, exposure.truth["wavelength"].to_value(u.AA), u.Quantity(truth).value)
    rows = []
    for vec in run.result.per_star_vectors:
        smooth = vec.smooth_factor.to_value(vec.unit)
        rows.append(smooth / truth - 1.0)
    spacing = run.result.summary["knot_selection"]["spacing"]
    return wave, np.array(rows), spacing


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--write", action="store_true", help=f"write {OUTPUT.name}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp())
    pooled = []
    for seed in range(1, args.seeds + 1):
        wave, misfit, spacing = star_misfits(args.data, seed, tmp)
        print(f"seed {seed}: {misfit.shape[0]} stars, knot spacing {spacing:.0f} Å")
        pooled.append(misfit)
    misfit = np.nanmean(pooled, axis=0)  # the noise averages out; the misfit stays
    mean = np.nanmean(misfit, axis=0)
    scatter2 = np.nanvar(misfit, axis=0)
    ok = np.isfinite(mean) & ~load_mask_array(wave * u.AA, load_mask_regions("telluric_default"))
    n = max(int(round(WINDOW / np.median(np.diff(wave)))), 1)
    smooth_m2 = uniform_filter1d(np.interp(wave, wave[ok], mean[ok] ** 2), n, mode="nearest")
    smooth_s2 = uniform_filter1d(np.interp(wave, wave[ok], scatter2[ok]), n, mode="nearest")
    floor = np.sqrt(smooth_m2 + smooth_s2 / misfit.shape[0])
    grid = np.arange(np.ceil(wave[ok][0] / STEP) * STEP, wave[ok][-1], STEP)
    table = Table({"WAVELENGTH": grid * u.AA, "FRACTION": np.round(np.interp(grid, wave, floor), 5)})
    table.meta["comments"] = [
        "Template-misfit floor of the ck04models grid: fractional 1-sigma misfit common to F/G standards,",
        "derived by benchmarks/derive_misfit_floor.py from the CALSPEC F/G stars of ../shared/data/calspec",
        f"{', '.join(FLOOR_STARS)}",
        f"(FWHM 30 A, {args.seeds} noise realisations, {WINDOW:.0f} A running mean). Wavelengths in air.",
    ]
    for lo, hi in ((3700, 4200), (4200, 4700), (4700, 6500), (6500, 8000), (8000, 9500)):
        sel = (wave >= lo) & (wave < hi) & ok
        print(f"  {lo}-{hi} Å: mean misfit {100 * np.mean(mean[sel]):+.2f}%, floor {100 * np.median(floor[sel]):.2f}%")
    if args.write:
        table.write(OUTPUT, format="ascii.ecsv", overwrite=True)
        print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
