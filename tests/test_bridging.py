"""The bridging term measures throughput structure the stars share, not their noise or their own misfit."""

import numpy as np
import pytest

from kspec_fluxcal.bridging import fit_residual, line_structure, unfollowed_structure

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


def _line_depth(rng, region, depth=0.08, n_lines=60, sigma=8.0):
    """A template's line depths 1 − model/continuum: Gaussian lines at random places within ``region``."""
    centres = rng.uniform(*region, n_lines)
    return 1.0 - np.prod([1.0 - depth * np.exp(-0.5 * ((WAVE - c) / sigma) ** 2) for c in centres], axis=0)


def _shared_frame(shared, depth, noise=0.003, n_stars=8, seed=1):
    """Stars of one type (one template line pattern ``depth``) sharing the structure ``shared``, with noise."""
    rng = np.random.default_rng(seed)
    return [fit_residual(np.exp(shared + rng.normal(0.0, noise, WAVE.size)), np.ones(WAVE.size),
                         np.full(WAVE.size, noise**2), np.zeros(WAVE.size, bool), depth=depth)
            for _ in range(n_stars)]


def test_shared_misfit_that_follows_the_templates_lines_is_not_structure():
    """Similar stars whose templates all have their lines 25 % too weak: shared, but not the instrument's."""
    depth = _line_depth(np.random.default_rng(8), (4000.0, 6500.0))
    misfit = 0.25 * np.log(1.0 - depth)
    misfit -= np.convolve(misfit, np.ones(25) / 25, mode="same")  # what a smooth form leaves of it
    lines = (WAVE > 4300) & (WAVE < 6200)
    stated = np.full(WAVE.size, 0.001)  # the library states a (broad, small) template misfit
    at_lines = unfollowed_structure(WAVE, _shared_frame(misfit, depth), SPACING, misfit=stated)
    # the same residuals, the templates said to have no lines there: shared structure of 0.7 %, counted
    unexplained = unfollowed_structure(WAVE, _shared_frame(misfit, np.zeros(WAVE.size)), SPACING, misfit=stated)
    assert np.sqrt(np.median(unexplained[lines])) > 0.005
    assert np.sqrt(np.median(at_lines[lines])) < 0.2 * np.sqrt(np.median(unexplained[lines]))
    # a library that states no misfit (SYNTHETIC: its models are the stars' truth) has no line misfit either
    exact = unfollowed_structure(WAVE, _shared_frame(misfit, depth), SPACING)
    assert np.allclose(exact, unfollowed_structure(WAVE, _shared_frame(misfit, depth), SPACING, line_fraction=0.0))


def test_structure_away_from_the_lines_is_still_measured():
    """A ripple where the templates have no lines keeps its whole variance, lines elsewhere or not."""
    depth = _line_depth(np.random.default_rng(8), (4000.0, 6500.0))
    amplitude = 0.012
    ripple = np.where(WAVE > 6700, amplitude * np.sin(2 * np.pi * WAVE / 180.0), 0.0)
    stated = np.full(WAVE.size, 0.001)
    term = unfollowed_structure(WAVE, _shared_frame(ripple, depth), SPACING, misfit=stated)
    unlined = unfollowed_structure(WAVE, _shared_frame(ripple, depth), SPACING, misfit=stated, line_fraction=0.0)
    red = (WAVE > 7000) & (WAVE < 8700)
    assert np.allclose(term[red], unlined[red])
    expected = 0.91 * amplitude**2 / 2  # as in test_shared_structure_is_measured_and_noise_is_not
    assert 0.8 * expected < np.median(term[red]) < 1.2 * expected


def test_line_structure_is_the_line_pattern_the_filtered_residual_sees():
    """One line narrower than the filter: the box-filtered ln F falls by EW/width and rises again."""
    width = 24  # samples of 5 Å: 120 Å
    depth = 0.2 * np.exp(-0.5 * ((WAVE - 6000.0) / 10.0) ** 2)
    structure = line_structure(depth[None, :], width)[0]
    equivalent_width = np.sum(-np.log(1.0 - depth))  # in samples
    assert structure.max() == pytest.approx(equivalent_width / width, rel=0.05)
    assert np.all(structure[np.abs(WAVE - 6000.0) > 200.0] < 1e-6)
    assert np.all(line_structure(np.zeros((2, WAVE.size)), width) == 0.0)
