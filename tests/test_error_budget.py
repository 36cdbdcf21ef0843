"""The error budget of the combined calibration: its terms, the library floors, the caller's misfit."""

import numpy as np
import pytest
from astropy import units as u

from kspec_fluxcal.containers import FLAM, CalibrationVector, FluxCalibrationResult
from kspec_fluxcal.error_budget import (
    BUDGET_TERMS,
    apply_error_budget,
    library_misfit_floor,
    misfit_function,
)
from kspec_fluxcal.exceptions import InputDataError
from kspec_fluxcal.knot_selection import KnotChoice

WAVE = np.linspace(3700.0, 9500.0, 600)
UNIT = FLAM / u.ct


def _result(frac_sigma=0.003, n_used=4, design=None):
    factor = 1e-16 * (1 + 0.2 * np.sin(WAVE / 900.0))
    mask = np.zeros(WAVE.size, bool)
    mask[:5] = True
    combined = CalibrationVector(WAVE * u.AA, np.where(mask, np.nan, factor) * UNIT,
                                 np.where(mask, np.nan, (frac_sigma * factor) ** 2) * UNIT**2, mask=mask)
    design = design or {"jacobian": [[1.0, 3.5], [1.0, 2.6], [1.0, 1.9], [1.0, 1.5]], "weights": [1e4] * 4}
    stars = [CalibrationVector(WAVE * u.AA, factor * UNIT, (frac_sigma * factor) ** 2 * UNIT**2,
                               meta={"used": True, "phot_log_variance": 1e-6, "phot_design": design})
             for _ in range(n_used)]
    return FluxCalibrationResult(combined, stars, [], {"representation": "smooth", "n_stars_used": n_used})


def _zero_point_variance(wave, sigma, jacobian=((1.0, 3.5), (1.0, 2.6), (1.0, 1.9), (1.0, 1.5))):
    """Var ln F(λ) from independent band offsets of ``sigma`` mag, fitted by unweighted least squares."""
    from dust_extinction.parameter_averages import F99

    jac = np.asarray(jacobian)
    sens = np.linalg.lstsq(jac, np.eye(len(jac)), rcond=None)[0]  # (offset, E) per unit offset of each band
    k = 3.1 * F99(Rv=3.1)(np.asarray(wave) * u.AA)
    response = 0.4 * np.log(10) * (sens[0][None, :] + k[:, None] * sens[1][None, :])
    return sigma**2 * np.sum(response**2, axis=1)


def _fraction(result):
    vec = result.combined_vector
    return np.sqrt(vec.cal_variance.value) / vec.cal_factor.value


def test_terms_add_up_and_shares_sum_to_one():
    base = _result()
    choice = KnotChoice(85.0, "loso", (60.0, 85.0), [1.1, 1.0], 4, WAVE, np.full(WAVE.size, 0.002**2))
    out = apply_error_budget(base, choice, misfit_function(0.004, {})[0], "constant", zero_point_sigma=0.005)
    budget = out.summary["error_budget"]
    assert list(budget["terms"]) == list(BUDGET_TERMS)
    shares = [t["share"] for t in budget["terms"].values()]
    assert sum(shares) == pytest.approx(1.0)
    assert budget["terms"]["smoothing"]["median_fraction"] == pytest.approx(0.002)
    assert budget["terms"]["template_misfit"]["median_fraction"] == pytest.approx(0.004)
    assert budget["terms"]["zero_point"]["median_fraction"] > 0
    ok = ~out.combined_vector.mask
    before = _fraction(base)[ok] ** 2
    added = _fraction(out)[ok] ** 2 - before
    # every term from first principles: the smoothing and misfit variances as given, and the zero-point term of
    # 0.005 mag per band propagated through the least-squares fit of (offset, E(B-V)) by numpy, with the F99
    # curve of dust_extinction: δ ln F(λ) = −0.4 ln 10 (δoffset + k(λ) δE)
    np.testing.assert_allclose(added, 0.002**2 + 0.004**2 + _zero_point_variance(WAVE[ok], 0.005), rtol=0.01)
    assert np.all(np.isnan(out.combined_vector.cal_variance.value[~ok]))
    assert out.summary["knot_selection"]["spacing"] == 85.0


def test_zero_point_term_is_common_and_grows_with_sigma():
    base = _result()
    small = apply_error_budget(base, zero_point_sigma=0.002)
    large = apply_error_budget(base, zero_point_sigma=0.01)
    none = apply_error_budget(base, zero_point_sigma=0.0)
    assert none.summary["error_budget"]["terms"]["zero_point"]["median_fraction"] == 0
    ratio = (large.summary["error_budget"]["terms"]["zero_point"]["median_fraction"]
             / small.summary["error_budget"]["terms"]["zero_point"]["median_fraction"])
    assert ratio == pytest.approx(5.0, rel=1e-6)
    # common to all standards: more stars do not shrink it
    many = apply_error_budget(_result(n_used=16), zero_point_sigma=0.01)
    assert (many.summary["error_budget"]["terms"]["zero_point"]["median_fraction"]
            == pytest.approx(large.summary["error_budget"]["terms"]["zero_point"]["median_fraction"]))


def test_pixel_form_has_no_smoothing_term():
    choice = KnotChoice(85.0, "loso", (60.0, 85.0), [1.1, 1.0], 4, WAVE, np.full(WAVE.size, 0.002**2))
    out = apply_error_budget(_result(), choice, representation="pixel")
    assert out.summary["error_budget"]["terms"]["smoothing"]["median_fraction"] == 0


def test_library_floors(tmp_path, ck04_dir):
    synthetic = tmp_path / "syn"
    synthetic.mkdir()
    (synthetic / "README.txt").write_text("SYNTHETIC stellar template grid -- NOT real BOSZ models\n")
    function, label = library_misfit_floor({"library_kind": "bosz2024", "source": str(synthetic)})
    assert function is None and "SYNTHETIC" in label
    function, label = library_misfit_floor({"library_kind": "ck04models", "source": str(ck04_dir)})
    floor = function(WAVE)
    assert "ck04" in label
    assert np.all((floor > 0.001) & (floor < 0.05))
    assert np.median(floor[WAVE < 4700]) > np.median(floor[WAVE > 6500])  # the blue is where ck04 misfits most
    assert library_misfit_floor({"library_kind": "other"})[0] is None


def test_caller_misfit_is_validated():
    assert misfit_function(lambda w: 0.01 * np.ones_like(w), {})[1] == "caller's template_misfit"
    for bad in (-0.1, "large", np.nan):
        with pytest.raises(InputDataError, match="template_misfit"):
            misfit_function(bad, {})
    with pytest.raises(InputDataError, match="one finite fraction"):
        apply_error_budget(_result(), template_misfit=lambda w: np.ones(3))


def test_reddening_tilt_turns_about_the_pivot():
    """Each star's fit error less its gray part is 0.921² V_EE (k(λ) − k*)², k* = −V_μE/V_EE: zero at the pivot.

    k(λ) comes from dust_extinction, the fit's covariance from numpy on the design; the old profile turned about
    −k* (a sign error): it never crossed zero and stated a tilt as large at 8500 Å as the noise allowed."""
    from dust_extinction.parameter_averages import F99

    from kspec_fluxcal.error_budget import photometric_profiles

    design = {"jacobian": [[1.0, 3.5], [1.0, 2.6], [1.0, 1.9], [1.0, 1.5]], "weights": [1e4] * 4}
    n_used = 4
    result = _result(design=design, n_used=n_used)
    jac, w = np.array(design["jacobian"]), np.array(design["weights"])
    cov = np.linalg.inv(jac.T @ (w[:, None] * jac))
    pinned = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    cov *= 1e-6 / ((0.4 * np.log(10)) ** 2 * pinned)  # the star's stated gray variance (phot_log_variance)
    k = 3.1 * F99(Rv=3.1)(WAVE * u.AA)
    expected = (0.4 * np.log(10)) ** 2 * cov[1, 1] * (k + cov[0, 1] / cov[1, 1]) ** 2 / n_used
    tilt = photometric_profiles(result, WAVE, "F99", 3.1, 0.005)["noise"]
    np.testing.assert_allclose(np.sum(tilt**2, axis=1), expected, rtol=1e-6, atol=1e-12)
    pivot = np.argmin(np.abs(k + cov[0, 1] / cov[1, 1]))
    assert np.sum(tilt[pivot] ** 2) < 0.01 * np.max(expected)
