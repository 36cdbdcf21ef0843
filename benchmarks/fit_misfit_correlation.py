"""Fit the correlation lengths of the template-misfit term to real stars (a script, not a test).

The template correction learned from the CALSPEC F/G stars with the ck04 grid
keeps, per star, its leave-one-star-out residual: how the correction learned
without the star misses it — the misfit a new standard brings
(`kspec_fluxcal.calspec_correction.derive_template_correction`). Their
correlogram (pooled over the stars, each residual's mean over
``--range`` removed, as the level terms hold the mean) is compared with the
correlogram of draws from this package's own covariance bases
(`kspec_fluxcal.covariance.CalibrationCovariance`, one term of constant σ,
the draws' means removed alike), for one length L, and for two lengths: a
share f over L_short and 1 − f over L_broad. The best of each by least
squares over lags 0–``--max-lag`` Å, and the spread of the two-length fit
over a bootstrap of the stars, are printed; they set
`~kspec_fluxcal.covariance.MISFIT_CORRELATION_LENGTH`,
`~kspec_fluxcal.covariance.MISFIT_BROAD_LENGTH` and
`~kspec_fluxcal.covariance.MISFIT_BROAD_SHARE`.

Usage::

    python benchmarks/fit_misfit_correlation.py [--shared ../shared/data] [--boot 100]
"""

import argparse
import logging
from pathlib import Path

import numpy as np

from kspec_fluxcal.calspec_correction import derive_template_correction
from kspec_fluxcal.covariance import CalibrationCovariance, CovarianceTerm

STEP = 10.0
SHORT = (150.0, 200.0, 250.0, 300.0, 350.0, 400.0, 450.0, 500.0, 600.0)
BROAD = (800.0, 1000.0, 1500.0, 2000.0, 3000.0)
SHARES = np.round(np.arange(0.0, 1.001, 0.05), 2)


def correlogram(curves, lags):
    """Correlation of ``curves`` (n, m) on a grid of `STEP` Å at ``lags`` (Å), pooled over the curves."""
    out = []
    for lag in lags:
        s = int(round(lag / STEP))
        a, b = curves[:, : curves.shape[1] - s], curves[:, s:]
        out.append(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return np.array(out)


def model_correlogram(length, grid, domain, lags, rng, n_draw=400):
    """Correlogram of draws of one covariance term of knot spacing ``length`` (Å), means removed."""
    full = np.arange(domain[0], domain[1] + STEP / 2, STEP)
    term = CovarianceTerm("misfit", np.ones(full.size), length)
    cov = CalibrationCovariance(full, np.zeros(full.size), [term], np.zeros(full.size, bool), domain)
    _, factor = cov.factors(full)
    sel = (full >= grid[0]) & (full <= grid[-1])
    draws = (factor[sel] @ rng.normal(size=(factor.shape[1], n_draw))).T
    return correlogram(draws - draws.mean(axis=1, keepdims=True), lags)


def fit(empirical, models, lags, max_lag):
    """(sse, L_short, L_broad, share of L_broad) of the best two-length model; share 1 - f = 0 is one length."""
    use = lags <= max_lag
    best = None
    for short in SHORT:
        for broad in BROAD:
            for share in SHARES:
                model = (1 - share) * models[short] + share * models[broad]
                sse = float(np.sum((model[use] - empirical[use]) ** 2))
                if best is None or sse < best[0]:
                    best = (sse, short, broad, share)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--range", type=float, nargs=2, default=(3800.0, 9200.0), help="Å compared")
    parser.add_argument("--max-lag", type=float, default=2000.0)
    parser.add_argument("--boot", type=int, default=100)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    files = sorted((args.shared / "calspec").glob("*.fits*"))
    correction = derive_template_correction(files, args.shared / "ck04models", fwhm=30.0)
    grid = np.arange(args.range[0], args.range[1] + STEP / 2, STEP)
    wave = np.asarray(correction._wave)
    curves = np.array([np.interp(grid, wave, r) for r in correction.residuals.values()])
    curves -= curves.mean(axis=1, keepdims=True)
    lags = np.arange(0.0, args.max_lag + 1, 50.0)
    rng = np.random.default_rng(0)
    empirical = correlogram(curves, lags)
    domain = (3600.0, 9800.0)
    models = {length: model_correlogram(length, grid, domain, lags, rng) for length in SHORT + BROAD}
    use = lags <= args.max_lag
    print(f"{len(curves)} stars' leave-one-out residuals, {args.range[0]:.0f}-{args.range[1]:.0f} Å")
    print("lag (Å)   " + " ".join(f"{lag:5.0f}" for lag in lags[::2]))
    print("empirical " + " ".join(f"{x:5.2f}" for x in empirical[::2]))
    half = float(np.interp(0.5, empirical[::-1], lags[::-1]))
    print(f"half-correlation lag {half:.0f} Å")
    print("one length: Σ(Δρ)² over the lags")
    for length in SHORT + BROAD:
        print(f"  L = {length:6.0f} Å: {np.sum((models[length][use] - empirical[use]) ** 2):6.3f}")
    sse, short, broad, share = fit(empirical, models, lags, args.max_lag)
    print(f"two lengths: {1 - share:.2f} of the variance over {short:.0f} Å, {share:.2f} over {broad:.0f} Å "
          f"(Σ(Δρ)² = {sse:.3f})")
    boots = []
    for _ in range(args.boot):
        pick = rng.integers(0, len(curves), len(curves))
        boots.append(fit(correlogram(curves[pick], lags), models, lags, args.max_lag))
    boots = np.array([b[1:] for b in boots])
    for name, column in (("L_short", 0), ("L_broad", 1), ("broad share", 2)):
        lo, mid, hi = np.percentile(boots[:, column], [16, 50, 84])
        print(f"  bootstrap over the stars, {name}: {mid:g} ({lo:g}-{hi:g}, 16-84 %)")


if __name__ == "__main__":
    main()
