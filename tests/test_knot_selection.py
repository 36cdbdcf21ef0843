"""Knot spacing chosen by the standards (leave-one-star-out) and its record."""

import numpy as np
import pytest

from kspec_fluxcal.calibration import fit_smooth_vectors
from kspec_fluxcal.exceptions import InputDataError
from kspec_fluxcal.knot_selection import (
    CANDIDATE_SPACINGS,
    DEFAULT_SPACING,
    KnotChoice,
    resolve_knot_spacing,
    select_knot_spacing,
)

WAVE = np.linspace(3600.0, 9800.0, 6200)


def _stars(shared, n_star=8, snr=80.0, seed=0):
    """Per-pixel vectors: a shared shape × each star's gray factor and smooth tilt, with noise."""
    rng = np.random.default_rng(seed)
    x = (WAVE - 6700.0) / 3100.0
    base = 1e-16 * (1 + 0.3 * x) * shared
    gray = rng.uniform(0.7, 1.0, n_star)[:, None]
    tilt = 1 + 0.002 * rng.normal(size=(n_star, 1)) * x[None]
    truth = base[None] * tilt / gray
    sigma = truth / snr
    values = truth + sigma * rng.normal(size=truth.shape)
    return values, sigma**2, np.zeros(values.shape, bool), base


def test_shared_ripple_is_followed():
    ripple = 1 + 0.015 * np.sin(2 * np.pi * WAVE / 350.0)
    values, var, exclude, base = _stars(ripple)
    choice = select_knot_spacing(WAVE, values, var, exclude)
    assert choice.method == "loso" and choice.n_stars == 8
    assert choice.spacing <= 120.0
    smooth, _, _ = fit_smooth_vectors(WAVE, values, var, exclude, knot_spacing=choice.spacing)
    shape = smooth / np.median(smooth / base, axis=1)[:, None] / base
    assert np.sqrt(np.mean((np.mean(shape, axis=0) - 1) ** 2)) < 0.003
    coarse, _, _ = fit_smooth_vectors(WAVE, values, var, exclude, knot_spacing=250.0)
    coarse_shape = coarse / np.median(coarse / base, axis=1)[:, None] / base
    assert np.sqrt(np.mean((np.mean(coarse_shape, axis=0) - 1) ** 2)) > 0.006


def test_smooth_truth_with_noise_is_not_followed():
    values, var, exclude, _ = _stars(np.ones_like(WAVE), snr=15.0)
    choice = select_knot_spacing(WAVE, values, var, exclude)
    assert choice.spacing >= 250.0


def test_scores_one_per_candidate_and_smoothing_term():
    ripple = 1 + 0.015 * np.sin(2 * np.pi * WAVE / 350.0)
    values, var, exclude, _ = _stars(ripple, seed=3)
    choice = select_knot_spacing(WAVE, values, var, exclude)
    assert len(choice.scores) == len(CANDIDATE_SPACINGS)
    assert np.all(np.isfinite(choice.scores))
    term = choice.smoothing_term(WAVE)
    assert term.shape == WAVE.shape and np.all(term >= 0)
    summary = choice.summary()
    again = KnotChoice.from_summary(summary)
    assert again.spacing == choice.spacing and again.method == "loso"
    np.testing.assert_allclose(again.smoothing_term(WAVE), term, atol=1e-5)


def _misfit(level):
    def misfit(wavelength):
        return np.full(np.shape(wavelength), level)
    return misfit


@pytest.mark.parametrize("seed", [0, 1])
def test_shared_template_misfit_is_not_followed(seed):
    """A 0.3 % structure every 150 Å that all stars share: followed from noise alone, not when a shared template
    misfit of 0.5 % (the library's floor) could explain it."""
    lines = 1 + 0.003 * np.sin(2 * np.pi * WAVE / 150.0)
    values, var, exclude, _ = _stars(lines, seed=seed)
    noise_only = select_knot_spacing(WAVE, values, var, exclude)
    assert noise_only.spacing < DEFAULT_SPACING and noise_only.misfit_allowance == 0.0
    choice = select_knot_spacing(WAVE, values, var, exclude, misfit=_misfit(0.005))
    assert choice.spacing == DEFAULT_SPACING
    assert choice.misfit_allowance > 0.3  # (0.5 % / the binned noise)² per term
    assert KnotChoice.from_summary(choice.summary()).misfit_allowance == pytest.approx(choice.misfit_allowance)


@pytest.mark.parametrize("seed", [0, 1])
def test_ripple_larger_than_the_misfit_is_still_followed(seed):
    """A 1.5 % ripple every 350 Å is instrument structure a 0.5 % shared misfit cannot explain."""
    ripple = 1 + 0.015 * np.sin(2 * np.pi * WAVE / 350.0)
    values, var, exclude, _ = _stars(ripple, seed=seed)
    assert select_knot_spacing(WAVE, values, var, exclude, misfit=_misfit(0.005)).spacing <= 120.0


@pytest.mark.parametrize("n_star", [1, 2])
def test_one_or_two_stars_use_the_default(n_star):
    values, var, exclude, _ = _stars(np.ones_like(WAVE), n_star=n_star)
    choice = select_knot_spacing(WAVE, values, var, exclude)
    assert choice.method == "default" and choice.spacing == DEFAULT_SPACING
    assert np.sqrt(np.max(choice.smoothing_term(WAVE))) < 0.001  # noise alone leaves next to nothing


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_spacing_states_the_structure_it_cannot_follow(seed):
    """One star, a 1.5 % ripple every 350 Å: 250 Å knots miss it, and the smoothing term says by how much."""
    ripple = 1 + 0.015 * np.sin(2 * np.pi * WAVE / 350.0)
    values, var, exclude, base = _stars(ripple, n_star=1, seed=seed)
    choice = select_knot_spacing(WAVE, values, var, exclude)
    assert choice.method == "default"
    smooth, smooth_var, _ = fit_smooth_vectors(WAVE, values, var, exclude, knot_spacing=choice.spacing)
    missed = np.log(smooth[0] / base)
    missed -= np.median(missed)
    stated = np.mean(smooth_var[0] / smooth[0] ** 2)
    rms = np.sqrt(np.mean(missed**2))
    assert rms > 3 * np.sqrt(stated)  # the noise term alone would be far too small
    assert 0.7 < rms / np.sqrt(stated + np.mean(choice.smoothing_term(WAVE))) < 1.4


def test_resolve_fixed_and_bad_values():
    values, var, exclude, _ = _stars(np.ones_like(WAVE), n_star=3)
    fixed = resolve_knot_spacing(180, WAVE, values, var, exclude)
    assert fixed.method == "fixed" and fixed.spacing == 180.0
    for bad in ("often", -5.0, np.nan):
        with pytest.raises(InputDataError, match="knot_spacing"):
            resolve_knot_spacing(bad, WAVE, values, var, exclude)
    with pytest.raises(InputDataError, match="candidate"):
        select_knot_spacing(WAVE, values, var, exclude, candidates=(0.0, 100.0))


def test_gray_factors_are_removed_where_bands_are_masked():
    """Stars of very different gray factors and S/N slopes, a masked band: the held-out error is the noise's."""
    rng = np.random.default_rng(4)
    x = (WAVE - 6700.0) / 3100.0
    gray = np.linspace(0.3, 1.0, 6)[:, None]
    snr = 60.0 * np.exp(rng.uniform(-1.0, 1.0, (6, 1)) * x[None])  # some stars blue, some red
    truth = 1e-16 * (1 + 0.3 * x)[None] / gray
    values = truth * (1 + rng.normal(size=truth.shape) / snr)
    exclude = np.broadcast_to((WAVE > 7550.0) & (WAVE < 7700.0), values.shape)
    choice = select_knot_spacing(WAVE, values, (truth / snr) ** 2, exclude)
    assert choice.spacing >= 250.0
    assert 0.7 < min(choice.scores) < 1.5  # per unit variance: the noise alone


def test_banded_least_squares_matches_scipy():
    from scipy.interpolate import make_lsq_spline

    from kspec_fluxcal.splines import banded_least_squares

    rng = np.random.default_rng(1)
    x = np.sort(rng.uniform(0.0, 100.0, 400))
    y = np.sin(x / 7.0)[None] + 0.05 * rng.normal(size=(3, x.size))
    w = rng.uniform(0.5, 2.0, (3, x.size))
    interior = np.linspace(0.0, 100.0, 12)[1:-1]
    basis, solve = banded_least_squares(x, interior, 3, x[0], x[-1], ridge=0.0)
    fitted = (basis @ solve(y, w).T).T
    knots = np.concatenate([[x[0]] * 4, interior, [x[-1]] * 4])
    for row in range(3):
        reference = make_lsq_spline(x, y[row], knots, k=3, w=np.sqrt(w[row]))(x)
        assert np.allclose(fitted[row], reference, atol=1e-9)
