"""Tests of kspec_fluxcal.continuum: clipped fits, masks, variance propagation, the smoother."""

import numpy as np
import pytest
from astropy import units as u

from kspec_fluxcal.containers import make_spectrum
from kspec_fluxcal.continuum import (
    fit_stellar_continuum,
    normalize_continuum,
    normalize_with_model_continuum,
    smoothing_operator,
)
from kspec_fluxcal.exceptions import InputDataError

WAVE = np.linspace(3800.0, 9200.0, 5000)


def true_continuum(wave):
    return 1e4 * (wave / 5000.0) ** -1.2 * (1.0 + 0.08 * np.sin(wave / 700.0))


def line_absorption(wave, seed=3, n_lines=300):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(wave[0], wave[-1], n_lines)
    depths = rng.uniform(0.1, 0.7, n_lines)
    sigma = rng.uniform(0.8, 2.0, n_lines)
    tau = (depths[:, None] * np.exp(-0.5 * ((wave[None, :] - centres[:, None]) / sigma[:, None]) ** 2)).sum(0)
    return np.exp(-tau)


def noisy(flux, snr, seed=0, wave=WAVE):
    rng = np.random.default_rng(seed)
    var = (true_continuum(wave) / snr) ** 2
    return flux + rng.normal(size=flux.size) * np.sqrt(var), var


@pytest.mark.parametrize("method", ["bspline", "polynomial", "running_median"])
def test_continuum_ignores_absorption_lines(method):
    cont = true_continuum(WAVE)
    flux, var = noisy(cont * line_absorption(WAVE), 100)
    spec = make_spectrum(WAVE, flux, var, flux_unit="ct")
    fit = fit_stellar_continuum(spec, method=method)
    rel = fit.flux.value / cont - 1
    tol = 0.01 if method == "running_median" else 0.005
    assert np.median(np.abs(rel[100:-100])) < tol
    assert fit.flux.unit == u.ct
    # without clipping the lines drag the fit down clearly more (a median resists them better)
    plain = fit_stellar_continuum(spec, method=method, max_iter=0)
    gain = 0.005 if method == "running_median" else 0.01
    assert np.median(plain.flux.value / cont - 1) < np.median(rel) - gain
    assert fit.meta["method"] == method and fit.meta["fit_mask"].sum() < WAVE.size


@pytest.mark.parametrize("method", ["bspline", "polynomial", "running_median"])
def test_masked_pixels_and_regions_are_interpolated(method):
    cont = true_continuum(WAVE)
    flux, var = noisy(cont.copy(), 200, seed=1)
    hole = (WAVE > 6000) & (WAVE < 6300)
    flux[hole] = 0.0  # garbage under the mask
    bump = (WAVE > 7000) & (WAVE < 7200)
    flux[bump] *= 1.5  # an emission feature excluded by mask_regions
    spec = make_spectrum(WAVE, flux, var, mask=hole, flux_unit="ct")
    fit = fit_stellar_continuum(spec, method=method, mask_regions=[[7000, 7200]] * u.AA)
    rel = fit.flux.value / cont - 1
    assert np.all(np.isfinite(fit.flux.value))
    # a running median can only interpolate linearly across the 300 Å hole
    tol = 0.015 if method == "running_median" else 0.01
    assert np.max(np.abs(rel[hole])) < tol
    assert np.max(np.abs(rel[bump])) < tol
    assert not fit.meta["fit_mask"][hole].any() and not fit.meta["fit_mask"][bump].any()


@pytest.mark.parametrize("method,tol", [("bspline", 0.12), ("polynomial", 0.12), ("running_median", 0.35)])
def test_variance_matches_monte_carlo(method, tol):
    wave = np.linspace(4000.0, 8000.0, 1500)
    cont = true_continuum(wave)
    var = (cont / 50.0) ** 2
    rng = np.random.default_rng(7)
    fits, prop = [], None
    for _ in range(300):
        spec = make_spectrum(wave, cont + rng.normal(size=wave.size) * np.sqrt(var), var, flux_unit="ct")
        fit = fit_stellar_continuum(spec, method=method, max_iter=0, knot_spacing=400 * u.AA, window=200 * u.AA)
        fits.append(fit.flux.value)
        prop = fit.uncertainty.array
    ratio = np.var(fits, axis=0, ddof=1) / prop
    inner = slice(100, -100)
    assert abs(np.median(ratio[inner]) - 1) < tol


def test_variance_without_input_variance_is_scaled_by_residuals():
    wave = np.linspace(4000.0, 8000.0, 1500)
    cont = true_continuum(wave)
    sigma = cont.mean() / 80.0
    rng = np.random.default_rng(11)
    fits, prop = [], []
    for _ in range(200):
        spec = make_spectrum(wave, cont + rng.normal(size=wave.size) * sigma, flux_unit="ct")
        fit = fit_stellar_continuum(spec, max_iter=0, knot_spacing=400 * u.AA)
        fits.append(fit.flux.value)
        prop.append(fit.uncertainty.array)
    ratio = np.var(fits, axis=0, ddof=1) / np.mean(prop, axis=0)
    assert abs(np.median(ratio) - 1) < 0.15


def test_normalize_continuum_propagates_variance():
    cont = true_continuum(WAVE)
    flux, var = noisy(cont * line_absorption(WAVE), 100, seed=4)
    spec = make_spectrum(WAVE, flux, var, flux_unit="ct")
    norm, fit = normalize_continuum(spec, knot_spacing=200 * u.AA)
    assert norm.flux.unit == u.one
    c, cv = fit.flux.value, fit.uncertainty.array
    expected = var / c**2 + flux**2 * cv / c**4
    np.testing.assert_allclose(norm.uncertainty.array, expected, rtol=1e-12)
    continuum_pixels = line_absorption(WAVE) > 0.999
    assert abs(np.median(norm.flux.value[continuum_pixels]) - 1) < 0.003


def test_normalize_with_model_continuum():
    cont = true_continuum(WAVE)
    spec = make_spectrum(WAVE, cont * 2.0, (cont * 0.01) ** 2, flux_unit="ct")
    out = normalize_with_model_continuum(spec, cont * u.ct)
    np.testing.assert_allclose(out.flux.value, 2.0)
    np.testing.assert_allclose(out.uncertainty.array, 1e-4)
    assert out.flux.unit == u.one
    # template fluxes (n_templates, n_pix) against their continua
    flux = np.vstack([cont, 0.5 * cont])
    ratio = normalize_with_model_continuum(flux, np.vstack([cont, cont]))
    np.testing.assert_allclose(ratio, np.array([[1.0], [0.5]]) * np.ones(WAVE.size))
    q = normalize_with_model_continuum(flux * u.erg, cont * u.erg)
    assert q.unit == u.one
    with pytest.raises(InputDataError, match="shape"):
        normalize_with_model_continuum(spec, cont[:-1])


def test_smoothing_operator_linear_and_consistent():
    wave = np.geomspace(3600.0, 9800.0, 6000)
    op = smoothing_operator(wave * u.AA, knot_spacing=150 * u.AA)
    # exact on cubics
    x = (wave - 6000.0) / 1000.0
    cubic = 1 + x - 0.3 * x**2 + 0.05 * x**3
    np.testing.assert_allclose(op(cubic), cubic, rtol=1e-9)
    # rows vs single spectra vs column convention
    rng = np.random.default_rng(0)
    y = rng.normal(size=(3, wave.size))
    rows = op(y)
    np.testing.assert_allclose(rows[1], op(y[1]))
    np.testing.assert_allclose((op @ y.T).T, rows)
    np.testing.assert_allclose(op(2 * y[0] + 3 * y[1]), 2 * rows[0] + 3 * rows[1], atol=1e-12)
    # same as an unclipped, unweighted B-spline continuum fit
    spec = make_spectrum(wave, 10 + y[0], flux_unit="ct")
    fit = fit_stellar_continuum(spec, max_iter=0, knot_spacing=150 * u.AA)
    np.testing.assert_allclose(fit.flux.value, op(10 + y[0]), rtol=1e-10)
    assert op.n_coef == op.projector.shape[0] == op.basis.shape[1]


def test_smoothing_operator_weights_exclude_pixels():
    wave = np.linspace(4000.0, 8000.0, 2000)
    weights = np.ones(wave.size)
    weights[900:1000] = 0.0
    y = np.ones(wave.size)
    y[900:1000] = 1e6
    op = smoothing_operator(wave, knot_spacing=300 * u.AA, weights=weights)
    np.testing.assert_allclose(op(y), 1.0, atol=1e-8)
    with pytest.raises(InputDataError, match="weights"):
        smoothing_operator(wave, weights=-weights)


def test_errors_are_actionable():
    spec = make_spectrum(WAVE, np.ones(WAVE.size), flux_unit="ct")
    with pytest.raises(InputDataError, match="method"):
        fit_stellar_continuum(spec, method="spline")
    with pytest.raises(InputDataError, match="good pixels"):
        fit_stellar_continuum(make_spectrum(WAVE, np.ones(WAVE.size), mask=np.arange(WAVE.size) > 2, flux_unit="ct"))
    with pytest.raises(InputDataError, match="knot_spacing"):
        fit_stellar_continuum(spec, knot_spacing=-5 * u.AA)
    with pytest.raises(InputDataError, match=r"\(n, 2\)"):
        fit_stellar_continuum(spec, mask_regions=[1, 2, 3] * u.AA)
