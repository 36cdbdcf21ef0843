"""The bridging term measures throughput structure the stars share, not their noise or their own misfit."""

import numpy as np

from kspec_fluxcal.bridging import fit_residual, unfollowed_structure

WAVE = np.linspace(4000.0, 9000.0, 1001)  # 5 Å samples
SPACING = 120.0


def _residuals(rng, ripple, noise=0.004, own=0.0, gap=None, n_stars=8):
    """Stars whose per-pixel vectors carry a shared ripple, their own noise and their own smooth misfit."""
    out = []
    for _ in range(n_stars):
        mine = own * np.sin(2 * np.pi * WAVE / rng.uniform(150.0, 250.0) + rng.uniform(0, 2 * np.pi))
        values = np.exp(ripple + mine + rng.normal(0.0, noise, WAVE.size))
        excluded = np.zeros(WAVE.size, bool) if gap is None else (WAVE > gap[0]) & (WAVE < gap[1])
        out.append(fit_residual(values, np.ones(WAVE.size), np.full(WAVE.size, noise**2), excluded))
    return out


def test_shared_structure_is_measured_and_noise_is_not():
    rng = np.random.default_rng(3)
    amplitude = 0.006
    ripple = amplitude * np.sin(2 * np.pi * WAVE / 180.0)
    term = unfollowed_structure(WAVE, _residuals(rng, ripple), SPACING)
    inner = (WAVE > 4300) & (WAVE < 8700)
    # a quarter-interval box filter passes sinc(30/180) = 0.95 of a 180 Å ripple: variance 0.91 A²/2
    expected = 0.91 * amplitude**2 / 2
    assert 0.8 * expected < np.median(term[inner]) < 1.2 * expected
    quiet = unfollowed_structure(WAVE, _residuals(rng, np.zeros(WAVE.size)), SPACING)
    assert np.sqrt(np.median(quiet[inner])) < 0.2 * amplitude  # pure noise (0.4 % per pixel) states nothing


def test_each_stars_own_misfit_is_not_structure():
    rng = np.random.default_rng(4)
    term = unfollowed_structure(WAVE, _residuals(rng, np.zeros(WAVE.size), own=0.01), SPACING)
    assert np.sqrt(np.median(term)) < 0.002  # 1 % ripples of each star's own, at its own period and phase


def test_the_stated_template_misfit_is_not_counted_twice():
    rng = np.random.default_rng(5)
    ripple = 0.006 * np.sin(2 * np.pi * WAVE / 180.0)
    residuals = _residuals(rng, ripple)
    full = unfollowed_structure(WAVE, residuals, SPACING)
    half = unfollowed_structure(WAVE, residuals, SPACING, misfit=np.full(WAVE.size, 0.003))
    assert np.allclose(half, np.maximum(full - 0.003**2, 0.0), atol=1e-12)
    assert np.all(unfollowed_structure(WAVE, residuals, SPACING, misfit=np.full(WAVE.size, 0.01)) == 0.0)


def test_it_grows_across_a_masked_gap():
    rng = np.random.default_rng(6)
    ripple = 0.006 * np.sin(2 * np.pi * WAVE / 60.0)  # two periods a knot interval: an even local variance
    gap = (7580.0, 7720.0)
    term = unfollowed_structure(WAVE, _residuals(rng, ripple, gap=gap), SPACING)
    beside = np.median(term[(WAVE > gap[0] - 300) & (WAVE < gap[0] - 60)])
    middle = np.interp(0.5 * sum(gap), WAVE, term)
    # 70 Å from the nearest kept sample the growth is 1 + (2·70/120)² = 2.4 (more with the gap's edges)
    assert middle > 1.9 * beside
    narrow = unfollowed_structure(WAVE, _residuals(np.random.default_rng(6), ripple, gap=(7630.0, 7670.0)), SPACING)
    assert np.interp(0.5 * sum(gap), WAVE, narrow) < 0.5 * middle


def test_one_star_states_nothing():
    rng = np.random.default_rng(7)
    ripple = 0.006 * np.sin(2 * np.pi * WAVE / 180.0)
    assert np.all(unfollowed_structure(WAVE, _residuals(rng, ripple, n_stars=1), SPACING) == 0.0)
