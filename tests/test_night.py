"""The nightly transfer function: gray terms, outlier exposures, and the fallback for frames without standards."""

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits

from kspec_fluxcal.apply import apply_flux_calibration, calibration_on_grid
from kspec_fluxcal.cli import main
from kspec_fluxcal.containers import FLAM, CalibrationVector, FluxCalibrationResult
from kspec_fluxcal.exceptions import CalibrationError
from kspec_fluxcal.night import combine_night, rescale_nightly
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal
from kspec_fluxcal.products import calibration_for_frame, load_calibration, save_calibration
from kspec_fluxcal.simulate import make_exposure, write_refcat_csv

UNIT = FLAM / u.ct
GRAYS = np.array([0.62, 0.8, 0.9, 1.0, 1.07, 0.71])
NOISE = 0.003
LEVEL = np.exp(np.median(np.log(GRAYS)))  # the median gray in ln space (for an even number, a geometric mean)


def _shape(wave):
    """A smooth throughput-like calibration (flux per count)."""
    return 1e-17 * (1.0 + 0.5 * np.exp(-0.5 * ((wave - 6000.0) / 1500.0) ** 2)) * (wave / 6000.0) ** -1.5


def _exposure(i, gray, tilt=0.0, exptime=None, seed=0):
    """One exposure's calibration: the shape times a gray factor, with 0.3 % noise, on a grid of its own."""
    rng = np.random.default_rng(seed + i)
    wave = np.linspace(3700.0 + 7 * i, 9700.0 - 5 * i, 2500)
    factor = gray * _shape(wave) * (wave / 6000.0) ** tilt * (1 + NOISE * rng.standard_normal(wave.size))
    vec = CalibrationVector(wave * u.AA, factor * UNIT, (NOISE * factor) ** 2 * UNIT**2)
    prov = {"kind": "exposure", "red_file": f"exp{i}_red.fits", "exptime": exptime}
    return FluxCalibrationResult(vec, summary={"n_stars_used": 4, "rms_scatter": 0.01, "provenance": prov})


def _ratio_to(result, truth):
    wave = result.combined_vector.wavelength.to_value(u.AA)
    factor, _, bad = calibration_on_grid(result.combined_vector, wave)
    sel = ~bad & (wave > 3800) & (wave < 9600)
    return factor[sel] / truth(wave[sel])


def test_gray_terms_are_separated_from_the_shape(tmp_path):
    exposures = [_exposure(i, g) for i, g in enumerate(GRAYS)]
    night = combine_night(exposures)
    ratio = _ratio_to(night, lambda w: LEVEL * _shape(w))
    assert np.median(np.abs(ratio - 1)) < 0.0015 and np.max(np.abs(ratio - 1)) < 0.01
    s = night.summary
    assert s["n_exposures"] == s["n_exposures_used"] == 6 and s["n_exposures_rejected"] == 0
    grays = np.array([e["gray_factor"] for e in s["per_exposure"]])
    np.testing.assert_allclose(grays, GRAYS / LEVEL, rtol=2e-3)
    assert s["n_stars_used"] == 24
    # the level variance carries the night's gray scatter; the shape part is the noise of a 6-exposure mean
    lg = np.log(GRAYS)
    assert s["gray_scatter"] == pytest.approx(1.4826 * np.median(np.abs(lg - np.median(lg))), rel=0.05)
    vec = night.combined_vector
    rel_var = (vec.cal_variance.value / vec.cal_factor.value**2)[~vec.mask]
    assert np.all(rel_var >= s["level_variance"])
    shape_sigma = np.sqrt(np.median(rel_var - s["level_variance"]))
    assert 0.8 * NOISE / np.sqrt(6) < shape_sigma < 1.25 * NOISE / np.sqrt(6)  # achieved: 1.00 × NOISE / √6
    # a nightly product round-trips like any other
    stored = load_calibration(save_calibration(night, tmp_path / "night.fits"))
    np.testing.assert_array_equal(stored.combined_vector.cal_factor.value, vec.cal_factor.value)
    assert stored.summary["provenance"]["kind"] == "night"
    assert [p["red_file"] for p in stored.summary["provenance"]["exposures"]] == [f"exp{i}_red.fits" for i in range(6)]
    assert fits.getheader(tmp_path / "night.fits")["FCALNEXP"] == 6


def test_an_outlier_exposure_is_rejected_with_its_reason():
    exposures = [_exposure(i, g) for i, g in enumerate(GRAYS)]
    exposures.append(_exposure(6, 0.85, tilt=0.15))  # a ±7 % colour term: e.g. a fiber off its star
    night = combine_night(exposures)
    s = night.summary
    assert s["n_exposures_used"] == 6 and s["n_exposures_rejected"] == 1
    rejected = s["per_exposure"][6]
    assert rejected["used"] is False and rejected["exposure"] == "exp6_red.fits"
    assert "shape deviates from the other exposures" in rejected["reject_reason"]
    assert all(e["used"] and e["reject_reason"] is None for e in s["per_exposure"][:6])
    ratio = _ratio_to(night, lambda w: LEVEL * _shape(w))
    assert np.median(np.abs(ratio - 1)) < 0.0015


def test_exposure_times_are_taken_out_of_the_gray_terms():
    times = np.array([100.0, 300.0, 200.0])
    exposures = [_exposure(i, 1.0 / t, exptime=t) for i, t in enumerate(times)]  # per ct: 1/t of the rate
    night = combine_night(exposures)
    assert night.combined_vector.unit == FLAM / (u.ct / u.s)
    assert night.summary["gray_scatter"] < 0.002
    ratio = _ratio_to(night, _shape)
    assert np.median(ratio) == pytest.approx(1.0, abs=0.002)
    for_frame = calibration_for_frame(night, u.ct, exptime=50.0)
    assert np.median(_ratio_to(for_frame, lambda w: _shape(w) / 50.0)) == pytest.approx(1.0, abs=0.002)


def test_nothing_to_combine_is_a_clear_error():
    vec = _exposure(0, 1.0).combined_vector
    empty = CalibrationVector(vec.wavelength, vec.cal_factor, vec.cal_variance, np.ones(vec.mask.shape, bool))
    with pytest.raises(CalibrationError, match="no exposure"):
        combine_night([FluxCalibrationResult(empty)])


@pytest.fixture(scope="module")
def night_setup(synthetic_grid_dir, tmp_path_factory):
    """A nightly product from a derived SYNTHETIC exposure (and a grayer copy), and a second exposure."""
    folder = tmp_path_factory.mktemp("night")
    kw = dict(n_standards=4, n_science=2, n_sky=1, n_pix=3000, fwhm=2.5, teff_range=(5300, 7700),
              logg_range=(4.05, 4.45), feh_range=(-0.9, 0.4))
    red_a, cat_a = make_exposure(seed=31, **kw).write(folder, stem="a")
    run = apply_fluxcal(red_a, FluxcalConfig(catalog=cat_a, templates=synthetic_grid_dir, output=folder / "a_cal.fits"))
    vec = run.result.combined_vector
    grayer = FluxCalibrationResult(CalibrationVector(vec.wavelength, 0.8 * vec.cal_factor, 0.64 * vec.cal_variance,
                                                     vec.mask), summary={"n_stars_used": 4})
    night = save_calibration(combine_night([run.result, grayer]), folder / "night.fits")
    exp_b = make_exposure(seed=32, **kw)
    red_b, cat_b = exp_b.write(folder, stem="b")
    return {"folder": folder, "night": night, "red": red_b, "cat": cat_b, "exposure": exp_b}


def test_fallback_calibrates_a_frame_without_usable_standards(night_setup, synthetic_grid_dir, tmp_path, capsys):
    s = night_setup
    field_only = s["exposure"].catalog[s["exposure"].catalog["objid"] >= 5000]  # no row is on a standard fiber
    cat = tmp_path / "field.csv"
    write_refcat_csv(field_only, cat)
    out = tmp_path / "b_cal.fits"
    args = ["calibrate", str(s["red"]), "--catalog", str(cat), "--templates", str(synthetic_grid_dir),
            "--output", str(out)]
    assert main([*args, "--quiet"]) != 0  # no standard: no calibration of its own
    capsys.readouterr()
    assert main([*args, "--fallback", str(s["night"])]) == 0
    assert "fallback" in capsys.readouterr().out
    night = load_calibration(s["night"])
    with fits.open(out) as hdul, fits.open(s["red"]) as raw:
        header = hdul[0].header
        assert header["FLUXCAL"] is True and header["FCALFALL"] is True
        assert header["FCALSRC"] == "night.fits" and header["FCALNOWN"] == 0
        history = " ".join(str(h) for h in header["HISTORY"])
        assert "FCAL fallback: nightly calibration night.fits applied because" in history
        assert "no catalogue row" in history or "rejected" in history
        flux, var = apply_flux_calibration(raw[0].data.astype(float), raw["VARIANCE"].data.astype(float), night,
                                           wavelength=raw["WAVELA"].data)
        np.testing.assert_allclose(hdul[0].data, flux.value.astype(np.float32), rtol=1e-6)
        np.testing.assert_allclose(hdul["VARIANCE"].data, var.value.astype(np.float32), rtol=1e-6)
    assert load_calibration(out).summary["provenance"]["kind"] == "night"


def test_too_few_standards_rescale_the_nightly_function(night_setup, synthetic_grid_dir, tmp_path):
    s = night_setup
    own = apply_fluxcal(s["red"], FluxcalConfig(catalog=s["cat"], templates=synthetic_grid_dir,
                                                output=tmp_path / "own.fits"))
    n_own = own.result.summary["n_stars_used"]
    run = apply_fluxcal(s["red"], FluxcalConfig(catalog=s["cat"], templates=synthetic_grid_dir,
                                                output=tmp_path / "fallback.fits", fallback=s["night"],
                                                min_standards=n_own + 1))
    header = fits.getheader(tmp_path / "fallback.fits")
    assert header["FCALFALL"] is True and header["FCALNOWN"] == n_own
    assert header["FCALGRAY"] == pytest.approx(run.result.summary["gray_rescale"]["factor"])
    # the nightly shape at this frame's own level: the median ratio to its own calibration is 1
    ratio = _ratio_to(run.result, lambda w: calibration_on_grid(own.result.combined_vector, w)[0])
    assert np.median(ratio) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(CalibrationError, match="fewer than the minimum"):
        apply_fluxcal(s["red"], FluxcalConfig(catalog=s["cat"], templates=synthetic_grid_dir,
                                              output=tmp_path / "none.fits", min_standards=n_own + 1))
    assert not (tmp_path / "none.fits").exists()


def test_a_fallback_calibration_carries_its_covariance(night_setup, synthetic_grid_dir, tmp_path):
    """The nightly function, rescaled to a frame's own standards, has a covariance whose diagonal is its variance,
    with the gray factor's variance as its level term; band fluxes of the calibrated file need no more."""
    from specutils import SpectrumList

    from kspec_fluxcal import band_flux
    from kspec_fluxcal.night import NIGHT_LEVEL

    s = night_setup
    night = load_calibration(s["night"])
    own = apply_fluxcal(s["red"], FluxcalConfig(catalog=s["cat"], templates=synthetic_grid_dir,
                                                output=tmp_path / "own.fits"))
    out = tmp_path / "fallback.fits"
    run = apply_fluxcal(s["red"], FluxcalConfig(catalog=s["cat"], templates=synthetic_grid_dir, output=out,
                                                fallback=s["night"],
                                                min_standards=own.result.summary["n_stars_used"] + 1))
    for result in (night, run.result):
        vec, cov = result.combined_vector, result.covariance
        ok = ~vec.mask
        wave = vec.wavelength.to_value(u.AA)[ok]
        expected = (vec.cal_variance / vec.cal_factor**2).value[ok]
        # the product stores variances and σ in float32: the night's large level term rounds at 1e-7 of itself
        np.testing.assert_allclose(cov.variance(wave), expected, rtol=1e-5,
                                   atol=1e-6 * night.summary["level_variance"])
    gray_var = run.result.summary["gray_rescale"]["log_variance"]
    level = run.result.covariance.term_sigma(NIGHT_LEVEL, wave)
    np.testing.assert_allclose(level**2, gray_var, rtol=1e-6)
    assert night.summary["level_variance"] != pytest.approx(gray_var)
    science = [f for f in SpectrumList.read(out, format="KSPEC-RED") if f.meta["fibre"]["TYPE"] == "P"]
    flux, sigma = band_flux(science[0], "ps1_r")
    # the level alone is the floor of any band's relative error
    assert np.isfinite(flux.value) and sigma.value / abs(flux.value) >= np.sqrt(gray_var)


def test_the_rescaled_level_variance_is_that_of_the_fitted_gray_factor():
    """Frames whose level errs by their stated scale and zero-point σ, plus wavelength-dependent noise.

    The truth: the level offset is drawn from the scale and zero-point σ the
    frame states, the rest is noise at 250 Å knots joined linearly (drawn
    here, not by the package). The gray factor fitted over 3800–9600 Å
    averages the noise, so its pull over many frames must be about 1 (the
    whole per-pixel variance as the level's would give about 0.6).
    """
    rng = np.random.default_rng(11)
    wave = np.linspace(3800.0, 9600.0, 3000)
    knots = np.arange(3800.0, 9601.0, 250.0)
    sigma = {"scale": 0.004, "zero_point": 0.002, "noise": 0.006}
    terms = {name: {"median_fraction": sigma.get(name, 0.0)} for name in
             ("noise", "scale", "zero_point", "smoothing", "template_misfit")}
    summary = {"n_stars_used": 1, "representation": "smooth", "knot_selection": {"spacing": 250.0},
               "error_budget": {"terms": terms, "representation": "smooth"}}
    night = FluxCalibrationResult(CalibrationVector(wave * u.AA, _shape(wave) * UNIT, (1e-4 * _shape(wave)) ** 2
                                                    * UNIT**2), summary={"level_variance": 0.0})
    rel_var = sum(s**2 for s in sigma.values())
    pulls = []
    for _ in range(400):
        gray = rng.uniform(0.6, 1.1)
        level = rng.normal(0.0, np.hypot(sigma["scale"], sigma["zero_point"]))
        noise = np.interp(wave, knots, sigma["noise"] * rng.standard_normal(knots.size))
        factor = gray * _shape(wave) * np.exp(level + noise)
        own = FluxCalibrationResult(CalibrationVector(wave * u.AA, factor * UNIT, rel_var * factor**2 * UNIT**2),
                                    summary=summary)
        rescale = rescale_nightly(night, own).summary["gray_rescale"]
        pulls.append((np.log(rescale["factor"]) - np.log(gray)) / np.sqrt(rescale["log_variance"]))
    assert 0.85 < np.sqrt(np.mean(np.square(pulls))) < 1.2
    # a calibration without an error budget keeps the conservative per-pixel level variance
    bare = FluxCalibrationResult(own.combined_vector, summary={"n_stars_used": 1})
    assert rescale_nightly(night, bare).summary["gray_rescale"]["log_variance"] == pytest.approx(rel_var)
