"""Property-based tests (hypothesis) of the numerical core.

Each property runs on at most 50 generated examples, without a deadline and
without hypothesis's example database (nothing is written into the tree).
"""

import warnings

import numpy as np
import pytest
from astropy import constants as const
from astropy import units as u
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kspec_fluxcal.apply import apply_flux_calibration
from kspec_fluxcal.combine import combine_calibration_vectors
from kspec_fluxcal.containers import FLAM, CalibrationVector, make_spectrum
from kspec_fluxcal.exceptions import KspecFluxcalWarning
from kspec_fluxcal.matching import cross_correlate_rv
from kspec_fluxcal.photometry import band_flux_weights, band_support, synthetic_photometry
from kspec_fluxcal.simulate import synthetic_stellar_spectrum

PER_CT = FLAM / u.ct
C_KMS = const.c.to_value(u.km / u.s)


def _finite(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def calibrations(draw, n_pix):
    """A CalibrationVector on a random increasing grid: factors 1e-20–1e-13 per ct, ≤ 10 % errors."""
    start = draw(_finite(3500.0, 4500.0))
    step = draw(_finite(0.5, 5.0))
    wave = start + step * np.arange(n_pix)
    log_factor = draw(arrays(np.float64, n_pix, elements=_finite(-46.0, -30.0)))
    rel_err = draw(arrays(np.float64, n_pix, elements=_finite(0.0, 0.1)))
    factor = np.exp(log_factor)
    return CalibrationVector(wave * u.AA, factor * PER_CT, (rel_err * factor) ** 2 * PER_CT**2)


@st.composite
def frames(draw):
    """(counts, variance, fiber wavelengths inside the calibration's range, calibration)."""
    n_fib, n_pix = draw(st.integers(1, 4)), draw(st.integers(4, 60))
    cal = draw(calibrations(n_pix))
    counts = draw(arrays(np.float64, (n_fib, n_pix), elements=_finite(-1e5, 1e6)))
    variance = draw(arrays(np.float64, (n_fib, n_pix), elements=_finite(0.0, 1e7)))
    lo, hi = cal.wavelength.value[[0, -1]]
    shrink = draw(arrays(np.float64, (n_fib, 2), elements=_finite(0.0, 0.25)))
    span = hi - lo
    wave = np.array([np.linspace(lo + a * span, hi - b * span, n_pix) for a, b in shrink])
    return counts, variance, wave, cal


@settings(max_examples=50, deadline=None, database=None)
@given(frames())
def test_calibrating_then_dividing_by_the_factor_recovers_the_counts(frame):
    counts, variance, wave, cal = frame
    flux, flux_var = apply_flux_calibration(counts * u.ct, variance * u.ct**2, cal, wavelength=wave)
    # the expectation computed here, not by the package: linear interpolation of K and V_K onto each fiber,
    # F = C·K and V_F = V·K² + C²·V_K
    grid = cal.wavelength.to_value(u.AA)
    factor = np.array([np.interp(w, grid, cal.cal_factor.to_value(PER_CT)) for w in wave])
    cal_var = np.array([np.interp(w, grid, cal.cal_variance.to_value(PER_CT**2)) for w in wave])
    assert flux.unit == FLAM and flux.shape == counts.shape
    np.testing.assert_allclose(flux.value, counts * factor, rtol=1e-9, atol=1e-9 * np.max(np.abs(counts * factor)))
    np.testing.assert_allclose(flux_var.value, variance * factor**2 + counts**2 * cal_var, rtol=1e-9,
                               atol=1e-9 * np.max(variance * factor**2 + counts**2 * cal_var))


@settings(max_examples=50, deadline=None, database=None)
@given(frames(), st.data())
def test_calibrated_variance_is_never_negative(frame, data):
    counts, variance, wave, cal = frame
    damaged = data.draw(arrays(np.int8, counts.shape, elements=st.integers(0, 3)))
    counts = np.where(damaged == 1, np.nan, counts)
    variance = np.where(damaged == 2, -np.abs(variance) - 1.0, np.where(damaged == 3, np.inf, variance))
    flux, flux_var = apply_flux_calibration(counts * u.ct, variance * u.ct**2, cal, wavelength=wave)
    flux, flux_var = flux.value, flux_var.value
    undefined = damaged > 0
    assert np.all(np.isnan(flux[undefined])) and np.all(np.isnan(flux_var[undefined]))
    assert np.all(np.isfinite(flux[~undefined])) and np.all(flux_var[~undefined] >= 0)


@st.composite
def star_vectors(draw):
    """3–6 per-star vectors: one shape times a gray factor, with noise and a few masked pixels."""
    n_star, n_pix = draw(st.integers(3, 6)), draw(st.integers(20, 80))
    wave = np.linspace(3700.0, 9500.0, n_pix) * u.AA
    shape = np.exp(draw(arrays(np.float64, 4, elements=_finite(-1.0, 1.0))) @ np.vander(
        np.linspace(-1, 1, n_pix), 4, increasing=True).T) * 1e-16
    vectors = []
    for i in range(n_star):
        gray = draw(_finite(0.5, 2.0))
        sigma = draw(_finite(1e-3, 0.05))
        noise = draw(arrays(np.float64, n_pix, elements=_finite(-2.0, 2.0)))
        mask = draw(arrays(np.bool_, n_pix, elements=st.sampled_from([False] * 9 + [True])))
        factor = shape * gray * (1 + sigma * noise)
        vectors.append(CalibrationVector(wave, factor * PER_CT, (sigma * factor) ** 2 * PER_CT**2, mask,
                                         meta={"star_name": f"STD{i}", "fiber_id": i}))
    return vectors


def _combine(vectors):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KspecFluxcalWarning)  # when outliers leave a single star
        return combine_calibration_vectors(vectors)


@settings(max_examples=50, deadline=None, database=None)
@given(star_vectors(), st.randoms(use_true_random=False))
def test_combination_ignores_the_order_of_the_stars(vectors, rng):
    order = list(range(len(vectors)))
    rng.shuffle(order)
    first, second = _combine(vectors), _combine([vectors[i] for i in order])
    a, b = first.combined_vector, second.combined_vector
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.cal_factor.value, b.cal_factor.value, rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(a.cal_variance.value, b.cal_variance.value, rtol=1e-9, equal_nan=True)
    used = {m["fiber_id"]: m["used"] for m in first.summary["per_star_metrics"]}
    assert used == {m["fiber_id"]: m["used"] for m in second.summary["per_star_metrics"]}
    good = ~a.mask
    assert np.all(a.cal_variance.value[good] >= 0) and np.all(a.cal_factor.value[good] > 0)


BANDS = ["ps1_g", "ps1_r", "ps1_i", "ps1_z", "gaia_bp", "gaia_rp", "sdss_g"]


@st.composite
def smooth_spectra(draw):
    """f_λ(λ): a blackbody with a linear tilt and up to 8 Gaussian absorption lines (σ ≥ 3 Å)."""
    teff = draw(_finite(4000.0, 10000.0))
    tilt = draw(_finite(-0.4, 0.4))
    lines = draw(st.lists(st.tuples(_finite(3500.0, 10500.0), _finite(0.0, 0.9), _finite(3.0, 30.0)), max_size=8))

    def flam(wave):
        x = 1.4387769e8 / (wave * teff)
        f = 1e-3 / wave**5 / np.expm1(x) * (1 + tilt * (wave - 6500.0) / 3000.0)
        for centre, depth, sigma in lines:
            f = f * (1 - depth * np.exp(-0.5 * ((wave - centre) / sigma) ** 2))
        return f

    return flam


@settings(max_examples=50, deadline=None, database=None)
@given(smooth_spectra(), st.sampled_from(BANDS), _finite(0.5, 2.5), st.integers(2, 6))
def test_band_flux_is_invariant_to_finer_sampling(flam, band, step, refine):
    lo, hi = band_support(band).to_value(u.AA)
    coarse = np.arange(lo - 20.0, hi + 20.0 + step, step)
    fine = np.linspace(coarse[0], coarse[-1], (coarse.size - 1) * refine + 1)
    mags = [-2.5 * np.log10(flam(w) @ band_flux_weights(w, band)) for w in (coarse, fine)]
    assert abs(mags[0] - mags[1]) < 1e-3


@settings(max_examples=25, deadline=None, database=None)
@given(smooth_spectra(), st.sampled_from(BANDS), _finite(1.0, 2.5))
def test_synthetic_magnitude_is_invariant_to_finer_sampling(flam, band, step):
    lo, hi = band_support(band).to_value(u.AA)
    coarse = np.arange(lo - 20.0, hi + 20.0 + step, step)
    fine = np.linspace(coarse[0], coarse[-1], (coarse.size - 1) * 4 + 1)
    mags = [synthetic_photometry(make_spectrum(w, flam(w), flux_unit=FLAM), band).value for w in (coarse, fine)]
    assert abs(mags[0] - mags[1]) < 1e-3


@pytest.fixture(scope="module")
def rv_template():
    """A SYNTHETIC F/G star at R = 3000 on a ln λ grid of 3 samples per resolution element (rest frame)."""
    wave = np.exp(np.arange(np.log(4000.0), np.log(7200.0), 1.0 / (3 * 3000)))
    flux, _ = synthetic_stellar_spectrum(wave, 6200.0, 4.3, -0.2, resolution=3000)
    return wave, flux


@settings(max_examples=40, deadline=None, database=None)
@given(_finite(-300.0, 300.0))
def test_the_rv_of_a_shifted_template_is_recovered(rv_template, rv):
    wave_t, flux_t = rv_template
    wave = np.linspace(4300.0, 6900.0, 3000)
    flux, _ = synthetic_stellar_spectrum(wave / (1 + rv / C_KMS), 6200.0, 4.3, -0.2, resolution=3000)
    star = make_spectrum(wave, flux, (1e-3 * flux) ** 2, flux_unit=FLAM)
    measured, error, info = cross_correlate_rv(star, (wave_t * u.AA, flux_t * FLAM))
    assert abs(measured.to_value(u.km / u.s) - rv) < 2.0
    assert not info["at_edge"]
