"""Benchmark of template matching: 20 stars × 520 templates × 12 000 pixels.

A synthetic grid with the BOSZ subgrid's node layout (Teff 5000–8000 step 250,
log g 3.5–5.0 step 0.5, [M/H] −1.0…+0.5 step 0.25 at [α/M] 0, plus [α/M]
+0.25 for [M/H] ≤ −0.5) is built from random Gaussian absorption lines whose
depths vary smoothly with the parameters (FWHM 2 Å, 12 000 log-λ pixels,
3600–9800 Å). Twenty noisy stars at random off-node parameters and RVs are
matched with `select_best_templates`; the first call builds the per-grid cache
(cold), the next ones reuse it (warm). Wall and CPU times are printed: on a
shared machine, multi-threaded BLAS can wait for busy cores (compare with
``OPENBLAS_NUM_THREADS=1``).

Run: ``PYTHONPATH=. python benchmarks/bench_matching.py [--repeat N] [--metric chi2|huber]``
"""

import argparse
import time

import numpy as np
from astropy import units as u
from astropy.table import Table

from kspec_fluxcal.containers import make_spectrum
from kspec_fluxcal.matching import C_KMS, select_best_templates
from kspec_fluxcal.templates import PreparedGrid

FWHM = 2.0
N_LINES = 1500


def line_model(seed=1):
    rng = np.random.default_rng(seed)
    return {
        "centre": np.exp(rng.uniform(np.log(3550.0), np.log(9900.0), N_LINES)),
        "depth": rng.uniform(0.05, 0.6, N_LINES),
        "coef": np.column_stack([
            rng.normal(-1.2, 0.5, N_LINES),  # per 1000 K
            rng.normal(0.0, 0.4, N_LINES),  # per dex log g
            rng.normal(1.0, 0.3, N_LINES),  # per dex [M/H]
            rng.normal(0.3, 0.5, N_LINES),  # per dex [α/M]
        ]),
    }


def spectra(model, wave, params, rv=0.0):
    """F_λ (n, n_pix) of parameter rows (teff, logg, feh, alpha) seen at ``wave`` (Å) at ``rv`` km/s."""
    params = np.atleast_2d(params)
    rest = wave / (1.0 + rv / C_KMS)
    x = np.column_stack([(params[:, 0] - 6500.0) / 1000.0, params[:, 1] - 4.25, params[:, 2], params[:, 3]])
    depth = model["depth"] * np.exp(x @ model["coef"].T)
    prof = np.exp(-0.5 * ((rest[None, :] - model["centre"][:, None]) / (FWHM / 2.3548)) ** 2)
    planck = 1e15 / rest[None, :] ** 5 / np.expm1(1.4388e8 / (rest[None, :] * params[:, :1]))
    return planck * np.exp(-(depth @ prof))


def build_grid(model, n_pix=12000):
    wave = np.geomspace(3600.0, 9800.0, n_pix)
    rows = [
        (t, g, f, a)
        for a in (0.0, 0.25)
        for t in np.arange(5000.0, 8001.0, 250.0)
        for g in np.arange(3.5, 5.01, 0.5)
        for f in np.arange(-1.0, 0.51, 0.25)
        if a == 0.0 or f <= -0.5
    ]
    params = np.array(rows)
    flux = spectra(model, wave, params)
    cont = 1e15 / wave[None, :] ** 5 / np.expm1(1.4388e8 / (wave[None, :] * params[:, :1]))
    table = Table({"teff": params[:, 0], "logg": params[:, 1], "feh": params[:, 2], "alpha_m": params[:, 3]})
    return PreparedGrid(wave * u.AA, flux, cont, table)


def make_stars(model, n_stars=20, n_pix=12000, snr=50, seed=2):
    rng = np.random.default_rng(seed)
    wave = np.linspace(3650.0, 9750.0, n_pix)
    truth = np.column_stack([
        rng.uniform(5300, 7700, n_stars), rng.uniform(3.6, 4.9, n_stars),
        rng.uniform(-0.9, 0.4, n_stars), np.zeros(n_stars),
    ])
    rv = rng.uniform(-300, 300, n_stars)
    stars = []
    for p, v in zip(truth, rv):
        flux = spectra(model, wave, p, rv=v)[0] * 1e10
        sigma = np.median(flux) / snr * np.sqrt(flux / np.median(flux))
        flux = flux + rng.normal(size=n_pix) * sigma
        stars.append(make_spectrum(wave, flux, sigma**2, flux_unit="ct"))
    return stars, truth, rv


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--metric", default="chi2", choices=("chi2", "huber"))
    args = parser.parse_args()

    model = line_model()
    t0 = time.perf_counter()
    grid = build_grid(model)
    stars, truth, rv = make_stars(model)
    print(f"built grid {grid.flux.shape} and {len(stars)} stars in {time.perf_counter() - t0:.1f} s")
    windows = [(t - 500.0, t + 500.0) for t in truth[:, 0]]

    t0 = time.perf_counter()
    matches = select_best_templates(stars, grid, teff_windows=windows, metric=args.metric)
    cold = time.perf_counter() - t0
    warm, cpu = [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        matches = select_best_templates(stars, grid, teff_windows=windows, metric=args.metric)
        warm.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(f"select_best_templates ({args.metric}): cold {cold:.3f} s; warm wall best {min(warm):.3f} s, "
          f"median {np.median(warm):.3f} s; CPU median {np.median(cpu):.3f} s over {args.repeat} runs")
    drv = np.array([m.rv.to_value(u.km / u.s) for m in matches]) - rv
    dt = np.array([m.params["teff"] for m in matches]) - truth[:, 0]
    dg = np.array([m.params["logg"] for m in matches]) - truth[:, 1]
    df = np.array([m.params["feh"] for m in matches]) - truth[:, 2]
    print(f"RV error: max |Δ| {np.abs(drv).max():.2f} km/s, rms {np.sqrt(np.mean(drv**2)):.2f} km/s")
    print(f"params error (max |Δ|): Teff {np.abs(dt).max():.0f} K, log g {np.abs(dg).max():.3f}, "
          f"[M/H] {np.abs(df).max():.3f}; refined {sum(m.refined for m in matches)}/{len(matches)}")


if __name__ == "__main__":
    main()
