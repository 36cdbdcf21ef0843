"""Tests of kspec_fluxcal.matching on an analytic line model with known truth.

The model: a Planck continuum times exp(−Σ depth_i·G_i(λ)), with Gaussian
lines at the instrument resolution (FWHM 2 Å, R ≈ 3000) whose depths vary smoothly
(log-linearly) with Teff, log g, [M/H] and [α/M].
"""

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table
from scipy.interpolate import make_interp_spline

from kspec_fluxcal.containers import StellarTemplate, make_spectrum
from kspec_fluxcal.exceptions import InputDataError
from kspec_fluxcal.matching import (
    C_KMS,
    TemplateMatch,
    cross_correlate_rv,
    doppler_factor,
    model_fluxes,
    model_spectrum,
    score_template_fit,
    select_best_template,
    select_best_templates,
)
from kspec_fluxcal.templates import PreparedGrid

KMS = u.km / u.s
FWHM = 2.0  # Å: R ≈ 3000 at 6000 Å
GRID_WAVE = np.geomspace(3600.0, 9800.0, 8000)
STAR_WAVE = np.linspace(3700.0, 9700.0, 9000)


class LineModel:
    """Analytic spectra whose line depths vary smoothly with the parameters."""

    def __init__(self, n_lines=900, seed=42):
        rng = np.random.default_rng(seed)
        self.centre = np.exp(rng.uniform(np.log(3500.0), np.log(9950.0), n_lines))
        self.depth = rng.uniform(0.05, 0.6, n_lines)
        self.a_teff = rng.normal(-1.2, 0.5, n_lines)  # per 1000 K
        self.a_logg = rng.normal(0.0, 0.4, n_lines)  # per dex
        self.a_feh = rng.normal(1.0, 0.3, n_lines)  # per dex
        self.a_alpha = rng.normal(0.3, 0.5, n_lines)

    def depths(self, teff, logg, feh, alpha=0.0):
        teff, logg, feh, alpha = (np.atleast_1d(np.asarray(v, float)) for v in (teff, logg, feh, alpha))
        expo = (self.a_teff * (teff[:, None] - 6250.0) / 1000.0 + self.a_logg * (logg[:, None] - 4.25)
                + self.a_feh * feh[:, None] + self.a_alpha * alpha[:, None])
        return self.depth * np.exp(expo)

    def continuum(self, wave, teff):
        teff = np.atleast_1d(np.asarray(teff, float))
        x = 1.4388e8 / (wave[None, :] * teff[:, None])
        return 1e15 / wave[None, :] ** 5 / np.expm1(x)

    def flux(self, wave, teff, logg, feh, alpha=0.0, rv=0.0, continuum=False, fwhm=FWHM):
        """Fluxes (n, n_pix) observed at ``wave`` for a star moving at ``rv`` km/s."""
        rest = wave / (1.0 + rv / C_KMS)
        cont = self.continuum(rest, teff)
        if continuum:
            return cont
        prof = np.exp(-0.5 * ((rest[None, :] - self.centre[:, None]) / (fwhm / 2.3548)) ** 2)
        return cont * np.exp(-self.depths(teff, logg, feh, alpha) @ prof)


MODEL = LineModel()
TEFFS = np.arange(5500.0, 7001.0, 250.0)
LOGGS = np.arange(3.5, 5.01, 0.5)
FEHS = np.arange(-1.0, 0.51, 0.25)


def build_grid(teffs=TEFFS, loggs=LOGGS, fehs=FEHS, alpha_cube=True, drop=()):
    rows = [(t, g, f, 0.0) for t in teffs for g in loggs for f in fehs]
    if alpha_cube:
        rows += [(t, g, f, 0.25) for t in teffs for g in loggs for f in fehs if f <= -0.5]
    rows = [r for r in rows if r not in drop]
    p = np.array(rows)
    flux = MODEL.flux(GRID_WAVE, p[:, 0], p[:, 1], p[:, 2], p[:, 3])
    cont = MODEL.flux(GRID_WAVE, p[:, 0], p[:, 1], p[:, 2], p[:, 3], continuum=True)
    params = Table({"teff": p[:, 0], "logg": p[:, 1], "feh": p[:, 2], "alpha_m": p[:, 3]})
    return PreparedGrid(GRID_WAVE * u.AA, flux, cont, params)


@pytest.fixture(scope="module")
def grid():
    return build_grid()


def make_star(teff, logg, feh, alpha=0.0, rv=0.0, snr=None, seed=0, wave=STAR_WAVE, factor=None, var_snr=None):
    """A star spectrum in counts-like units: noise-free unless ``snr`` is given."""
    flux = MODEL.flux(wave, teff, logg, feh, alpha, rv)[0]
    if factor is not None:
        flux = flux * factor
    level = np.median(flux)
    sigma = level / (snr or var_snr or 200.0) * np.sqrt(flux / level).clip(0.2)
    if snr:
        flux = flux + np.random.default_rng(seed).normal(size=flux.size) * sigma
    return make_spectrum(wave, flux, sigma**2, flux_unit="ct")


def node_index(grid, teff, logg, feh, alpha=0.0):
    p = grid.params
    hit = (p["teff"] == teff) & (p["logg"] == logg) & (p["feh"] == feh) & (p["alpha_m"] == alpha)
    return int(np.flatnonzero(hit)[0])


# ----------------------------------------------------------------------------- RV


def test_doppler_factor_is_astropys_optical_equivalency():
    v = np.array([-250000.0, -300.0, 0.0, 12.5, 4000.0]) * KMS
    expected = v.to_value(u.AA, equivalencies=u.doppler_optical(1.0 * u.AA))
    np.testing.assert_allclose(doppler_factor(v), expected, rtol=1e-14)


def test_doppler_factor_optical_convention():
    assert float(doppler_factor(C_KMS / 1000 * KMS)) == pytest.approx(1.001)
    np.testing.assert_allclose(doppler_factor([0, -C_KMS / 2] * KMS), [1.0, 0.5])
    with pytest.raises(InputDataError, match="velocity"):
        doppler_factor(12.0)


@pytest.mark.parametrize("kind", ["spectrum", "stellar_template", "arrays"])
def test_rv_recovered_within_2_kms_at_snr30(kind):
    wave_t = np.geomspace(3500.0, 9950.0, 12000)
    flux_t = MODEL.flux(wave_t, 6000, 4.5, 0.0)[0]
    cont_t = MODEL.flux(wave_t, 6000, 4.5, 0.0, continuum=True)[0]
    template = {
        "spectrum": make_spectrum(wave_t, flux_t, flux_unit="erg / (s cm2 Angstrom)"),
        "stellar_template": StellarTemplate(wave_t * u.AA, flux_t, cont_t, 6000, 4.5, 0.0),
        "arrays": (wave_t * u.AA, flux_t),
    }[kind]
    truths = [-300, -250, -180, -120, -60, -36, -30, -24, -18, -12, -6, 0, 6, 12, 40, 95, 150, 220, 300]
    if kind != "spectrum":
        truths = truths[::3]
    for i, truth in enumerate(truths):
        star = make_star(6000, 4.5, 0.0, rv=truth, snr=30, seed=i)
        rv, err, info = cross_correlate_rv(star, template, max_shift=400 * KMS)
        assert rv.unit == KMS
        assert abs(rv.value - truth) < 2.0, (truth, rv)
        assert 0 < err.value < 2.0
        assert 0.5 < info["peak"] <= 1.0 and not info["at_edge"]


def test_rv_sign_and_lag_ordering():
    template = (GRID_WAVE, MODEL.flux(GRID_WAVE, 6250, 4.0, -0.25)[0])
    for truth in (-150.0, -20.0, 20.0, 150.0):
        rv, _, info = cross_correlate_rv(make_star(6250, 4.0, -0.25, rv=truth), template)
        assert np.sign(rv.value) == np.sign(truth)
        assert abs(rv.value - truth) < 1.0
        # the CCF itself peaks at the right lag
        assert abs(info["velocity"][np.argmax(info["ccf"])].value - truth) < 40


def test_rv_error_matches_scatter():
    template = (GRID_WAVE, MODEL.flux(GRID_WAVE, 6000, 4.5, 0.0)[0])
    rvs, errs = [], []
    for seed in range(40):
        rv, err, _ = cross_correlate_rv(make_star(6000, 4.5, 0.0, rv=25.0, snr=10, seed=seed), template)
        rvs.append(rv.value)
        errs.append(err.value)
    ratio = np.std(rvs, ddof=1) / np.mean(errs)
    assert 0.8 < ratio < 1.25  # achieved: 1.03


def test_max_shift_excludes_a_stronger_wrong_peak():
    """A star blended with a stronger companion: the window picks the wanted one."""
    rest = STAR_WAVE
    wanted, other = (
        MODEL.flux(rest, 6000, 4.5, 0.0, rv=v)[0] / MODEL.flux(rest, 6000, 4.5, 0.0, rv=v, continuum=True)[0]
        for v in (40.0, -250.0)
    )
    flux = 1e4 * (0.3 * wanted + 0.7 * other)
    star = make_spectrum(rest, flux, (flux / 100) ** 2, flux_unit="ct")
    template = (GRID_WAVE, MODEL.flux(GRID_WAVE, 6000, 4.5, 0.0)[0])
    rv_all, _, _ = cross_correlate_rv(star, template, max_shift=500 * KMS)
    assert abs(rv_all.value + 250) < 3
    rv_win, _, info = cross_correlate_rv(star, template, rv_guess=40 * KMS, max_shift=100 * KMS)
    assert abs(rv_win.value - 40) < 5 and not info["at_edge"]  # the companion blends a little


def test_mask_regions_and_masked_pixels_in_ccf():
    star = make_star(6000, 4.5, 0.0, rv=-36.0, snr=30, seed=3)
    mask = np.zeros(STAR_WAVE.size, bool)
    mask[1000:1200] = True
    star.flux.value[mask] = 1e9  # garbage under the mask
    star.mask[:] = mask
    template = (GRID_WAVE, MODEL.flux(GRID_WAVE, 6000, 4.5, 0.0)[0])
    rv, _, _ = cross_correlate_rv(star, template, mask_regions=[[6860, 6960], [7590, 7700]] * u.AA)
    assert abs(rv.value + 36) < 2


# ----------------------------------------------------------------------------- scores


@pytest.mark.parametrize("metric", ["chi2", "huber"])
@pytest.mark.parametrize("fit_scale", [True, False])
def test_vectorised_scores_equal_per_template_loop(metric, fit_scale):
    rng = np.random.default_rng(5)
    n = 800
    models = 1 - 0.3 * rng.random((25, n))
    obs = 1.05 * models[7] + rng.normal(0, 0.02, n)
    obs[100] += 2.0  # an outlier so Huber differs from chi2
    var = np.full(n, 0.02**2)
    mask = np.zeros(n, bool)
    mask[500:520] = True
    vec, red, ndof = score_template_fit(obs, models, var, mask, metric=metric, huber_delta=2.0, fit_scale=fit_scale)
    assert vec.shape == (25,)
    loop = np.array([
        score_template_fit(obs, mk, var, mask, metric=metric, huber_delta=2.0, fit_scale=fit_scale)[0]
        for mk in models
    ])
    np.testing.assert_allclose(vec, loop, rtol=1e-10)
    # reference written out here
    good = ~mask
    ref = []
    for mk in models:
        o, mm, s = obs[good], mk[good], 0.02
        if fit_scale:
            amp = np.sum(o * mm) / np.sum(mm * mm)
            if metric == "huber":
                for _ in range(3):
                    r = np.abs(o - amp * mm) / s
                    h = np.minimum(1, 2.0 / r)
                    amp = np.sum(h * o * mm) / np.sum(h * mm * mm)
        else:
            amp = 1.0
        r = np.abs(o - amp * mm) / s
        ref.append(np.sum(r**2) if metric == "chi2" else np.sum(np.where(r <= 2, r**2, 4 * r - 4)))
    np.testing.assert_allclose(vec, ref, rtol=1e-8)
    assert ndof == good.sum() - int(fit_scale)
    np.testing.assert_allclose(red, vec / ndof)
    assert np.argmin(vec) == 7


# ----------------------------------------------------------------------------- selection


def test_on_node_noiseless_star_recovered_exactly(grid):
    star = make_star(6250, 4.0, -0.25, rv=57.0)
    match = select_best_template(star, grid)
    assert isinstance(match, TemplateMatch)
    truth = node_index(grid, 6250, 4.0, -0.25)
    assert match.index == truth
    assert match.node_params == {"teff": 6250.0, "logg": 4.0, "feh": -0.25, "alpha_m": 0.0}
    assert abs(match.rv.value - 57.0) < 1.0
    assert match.weights.sum() == pytest.approx(1.0)
    assert np.count_nonzero(match.weights) <= 8
    assert abs(match.params["teff"] - 6250) < 30 and abs(match.params["feh"] + 0.25) < 0.03
    assert match.n_candidates == grid.n_templates
    assert np.all(np.isfinite(match.scores))
    assert match.score <= match.scores[truth] < match.runner_up_score
    assert match.on_edge == {"teff": None, "logg": None, "feh": None}


def test_off_node_star_refined_between_nodes(grid):
    truth = {"teff": 6125.0, "logg": 4.25, "feh": -0.125}
    star = make_star(truth["teff"], truth["logg"], truth["feh"], rv=-20.0, snr=100, seed=2)
    match = select_best_template(star, grid)
    assert match.refined
    assert abs(match.params["teff"] - truth["teff"]) < 250 / 3
    assert abs(match.params["logg"] - truth["logg"]) < 0.5 / 3
    assert abs(match.params["feh"] - truth["feh"]) < 0.25 / 3
    assert 1 < np.count_nonzero(match.weights) <= 8
    assert match.weights.sum() == pytest.approx(1.0)
    assert match.score < match.scores[match.index]
    # the nodes carrying weight surround the truth
    used = grid.params[match.weights > 0]
    for p in truth:
        assert used[p].min() <= truth[p] + 1e-9 or used[p].max() >= truth[p] - 1e-9


def test_smooth_throughput_and_reddening_do_not_change_the_choice(grid):
    x = (STAR_WAVE - 6500.0) / 3000.0
    throughput = (1.0 + 0.4 * x - 0.3 * x**2 + 0.1 * x**3) * 10 ** (-0.4 * 0.5 * (5500.0 / STAR_WAVE))
    plain = select_best_template(make_star(6500, 4.5, 0.0, rv=10.0, snr=80, seed=9), grid)
    tilted = select_best_template(make_star(6500, 4.5, 0.0, rv=10.0, snr=80, seed=9, factor=throughput), grid)
    assert plain.index == tilted.index == node_index(grid, 6500, 4.5, 0.0)
    for p in ("teff", "logg", "feh"):
        assert tilted.params[p] == pytest.approx(plain.params[p], abs={"teff": 30, "logg": 0.05, "feh": 0.03}[p])


def test_teff_window_widened_when_truth_outside(grid):
    star = make_star(6750, 4.5, 0.0, rv=0.0, snr=60, seed=4)
    match = select_best_template(star, grid, teff_window=(5500, 6000))
    assert match.window_widened
    assert match.node_params["teff"] == 6750
    lo, hi = match.teff_window.to_value(u.K)
    assert lo <= 6750 <= hi and hi > 6750  # the best node is no longer on the window edge
    assert np.isnan(match.scores[grid.params["teff"] > hi]).all()
    assert match.n_candidates == np.count_nonzero((grid.params["teff"] >= lo) & (grid.params["teff"] <= hi))
    # a window holding the truth is kept as it is
    kept = select_best_template(star, grid, teff_window=(6000 * u.K, 7000 * u.K))
    assert not kept.window_widened and kept.node_params["teff"] == 6750


def test_window_at_grid_edge_is_reported(grid):
    star = make_star(7000, 4.5, 0.0, snr=60, seed=6)
    match = select_best_template(star, grid, teff_window=(6500, 7000))
    assert not match.window_widened
    assert match.on_edge["teff"] == "grid_high"


def test_batch_equals_single_and_vectorised(grid):
    stars = [
        make_star(5750, 4.0, -0.5, rv=-36.0, snr=50, seed=1),
        make_star(6500, 4.5, 0.25, rv=12.0, snr=50, seed=2),
        make_star(6000, 3.5, -1.0, alpha=0.25, rv=150.0, snr=50, seed=3),
    ]
    windows = [(5500, 6250), None, (5700, 6300)]
    batch = select_best_templates(stars, grid, rv_guesses=[0, 0, 100] * KMS, teff_windows=windows)
    for star, window, guess, m in zip(stars, windows, [0, 0, 100], batch):
        single = select_best_template(star, grid, rv_guess=guess * KMS, teff_window=window)
        np.testing.assert_allclose(m.scores, single.scores, rtol=1e-9, equal_nan=True)
        assert m.index == single.index and m.rv == single.rv
    assert batch[2].node_params["alpha_m"] == 0.25
    assert [m.node_params["teff"] for m in batch] == [5750, 6500, 6000]


def test_one_template_grid():
    one = build_grid(teffs=[6000.0], loggs=[4.5], fehs=[0.0], alpha_cube=False)
    match = select_best_template(make_star(6000, 4.5, 0.0, rv=30.0, snr=40), one, teff_window=(5000, 5500))
    assert match.index == 0 and not match.refined
    np.testing.assert_array_equal(match.weights, [1.0])
    assert abs(match.rv.value - 30) < 2
    assert match.runner_up_score != match.runner_up_score  # NaN: no runner-up


def test_single_node_axis_and_missing_nodes():
    # one log g only; two nodes missing next to (not around) the truth
    flat = build_grid(loggs=[4.5], alpha_cube=False, drop={(6500.0, 4.5, 0.25, 0.0), (5750.0, 4.5, -0.5, 0.0)})
    match = select_best_template(make_star(6125, 4.5, -0.125, snr=100), flat)
    assert match.refined and match.params["logg"] == 4.5
    assert abs(match.params["teff"] - 6125) < 250 / 3 and abs(match.params["feh"] + 0.125) < 0.25 / 3
    assert np.count_nonzero(match.weights) <= 4 and match.weights.sum() == pytest.approx(1.0)
    # the cell around the truth lacks corners: the refinement stays on complete cells or edges
    holes = {(6250.0, 4.5, 0.0, 0.0), (6000.0, 4.5, -0.25, 0.0)}
    holed = build_grid(loggs=[4.5], alpha_cube=False, drop=holes)
    match = select_best_template(make_star(6125, 4.5, -0.125, snr=100), holed)
    assert match.score <= match.scores[match.index]
    assert abs(match.params["teff"] - 6125) < 250 and abs(match.params["feh"] + 0.125) < 0.5
    assert np.count_nonzero(match.weights) <= 4 and match.weights.sum() == pytest.approx(1.0)


def test_huber_resists_cosmic_rays_that_fool_chi2():
    grid1d = build_grid(teffs=[6000.0, 6100.0, 6200.0], loggs=[4.5], fehs=[0.0], alpha_cube=False)
    star = make_star(6000, 4.5, 0.0, snr=50, seed=8)
    flux, var = star.flux.value.copy(), star.uncertainty.array
    # 60σ cosmic rays (3 pixels) on the cores of the 20 lines that weaken most with Teff
    weakening = MODEL.depths(6000, 4.5, 0.0)[0] - MODEL.depths(6200, 4.5, 0.0)[0]
    inside = (MODEL.centre > 3800) & (MODEL.centre < 9600)
    for c in MODEL.centre[inside][np.argsort(weakening[inside])[-20:]]:
        pix = np.argmin(np.abs(STAR_WAVE - c))
        flux[pix - 1 : pix + 2] += 60 * np.sqrt(var[pix])
    hit = make_spectrum(STAR_WAVE, flux, var, flux_unit="ct")
    chi2 = select_best_template(hit, grid1d, refine=False)
    huber = select_best_template(hit, grid1d, refine=False, metric="huber")
    assert chi2.node_params["teff"] != 6000
    assert huber.node_params["teff"] == 6000 and huber.metric == "huber"
    # with refinement, Huber stays close to the truth too
    refined = select_best_template(hit, grid1d, metric="huber")
    assert abs(refined.params["teff"] - 6000) < 100 / 3


def test_model_spectrum_in_the_star_frame(grid):
    star = make_star(6125, 4.25, -0.125, rv=-80.0)
    match = select_best_template(star, grid)
    model = model_spectrum(grid, match.weights, STAR_WAVE * u.AA, rv=match.rv)
    assert model.unit == u.erg / (u.s * u.cm**2 * u.AA)
    cont = model_spectrum(grid, match, STAR_WAVE * u.AA, rv=match.rv, continuum=True)
    # at rv = 0 on the grid's own pixels it is exactly weights @ grid.flux
    on_grid = model_spectrum(grid, match.weights, GRID_WAVE * u.AA)
    np.testing.assert_allclose(on_grid.value, match.weights @ grid.flux, rtol=1e-12)
    # shifted, it is a cubic spline of the model
    spline = make_interp_spline(GRID_WAVE, match.weights @ grid.flux, k=3)
    np.testing.assert_allclose(model.value, spline(STAR_WAVE / doppler_factor(match.rv)), rtol=1e-12)
    # model and star line up: their ratio is smooth (no line residual pattern)
    ratio = star.flux.value / model.value
    assert np.std(ratio / np.median(ratio)) < 0.03
    assert np.all(cont.value >= model.value * 0.995)  # up to a cubic-spline overshoot
    outside = model_spectrum(grid, match.weights, [3000.0, 6000.0] * u.AA)
    assert np.isnan(outside.value[0]) and np.isfinite(outside.value[1])


def test_model_fluxes_of_many_stars_are_their_model_spectra(grid):
    stars = [make_star(6125, 4.25, -0.125, rv=-80.0), make_star(5750, 4.5, 0.0, rv=35.0)]
    matches = [select_best_template(star, grid) for star in stars]
    waves = [STAR_WAVE, STAR_WAVE[::3] + 0.3]
    batch = model_fluxes(grid, matches, waves)
    for match, wave, model in zip(matches, waves, batch):
        single = model_spectrum(grid, match, wave * u.AA, rv=match.rv).value
        np.testing.assert_allclose(model, single, rtol=1e-10, equal_nan=True)
    assert model_fluxes(grid, [], []) == []


def test_mask_regions_reduce_ndof_and_errors(grid):
    star = make_star(6000, 4.5, 0.0, snr=50)
    free = select_best_template(star, grid)
    masked = select_best_template(star, grid, mask_regions=[[6860, 6960], [7590, 7700]] * u.AA)
    assert masked.ndof < free.ndof and masked.index == free.index
    with pytest.raises(InputDataError, match="metric"):
        select_best_template(star, grid, metric="l1")
    with pytest.raises(InputDataError, match="teff_windows"):
        select_best_templates([star, star], grid, teff_windows=[None])
    with pytest.raises(InputDataError, match="overlaps"):
        select_best_template(make_spectrum(np.linspace(20000, 21000, 100), np.ones(100), flux_unit="ct"), grid)


def test_low_resolution_frame():
    """FWHM 40 Å, a few hundred pixels: the smoother adapts its knots and matching still works."""
    wave = np.geomspace(3600.0, 9800.0, 400)
    p = np.array([(t, 4.5, f, 0.0) for t in (5750.0, 6000.0, 6250.0, 6500.0) for f in (-0.5, 0.0, 0.5)])
    flux = MODEL.flux(wave, p[:, 0], p[:, 1], p[:, 2], fwhm=40.0)
    cont = MODEL.flux(wave, p[:, 0], p[:, 1], p[:, 2], continuum=True)
    params = Table({"teff": p[:, 0], "logg": p[:, 1], "feh": p[:, 2], "alpha_m": p[:, 3]})
    low = PreparedGrid(wave * u.AA, flux, cont, params)
    star_wave = np.linspace(3700.0, 9700.0, 300)
    star_flux = MODEL.flux(star_wave, 6100.0, 4.5, 0.1, rv=30.0, fwhm=40.0)[0]
    star = make_spectrum(star_wave, star_flux, (star_flux / 200) ** 2, flux_unit="ct")
    match = select_best_template(star, low)
    assert abs(match.rv.value - 30) < 40  # 750 km/s pixels: a few per cent of a pixel
    assert abs(match.params["teff"] - 6100) < 125 and abs(match.params["feh"] - 0.1) < 0.25
