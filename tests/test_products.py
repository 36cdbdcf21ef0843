"""Calibration products: FITS and ECSV round trips, provenance, and applying a stored calibration."""

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits

from kspec_fluxcal import __version__
from kspec_fluxcal.cli import main
from kspec_fluxcal.containers import FLAM, CalibrationVector, FluxCalibrationResult
from kspec_fluxcal.exceptions import InputDataError
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal
from kspec_fluxcal.products import calibration_for_frame, file_sha256, load_calibration, save_calibration
from kspec_fluxcal.simulate import make_exposure
from kspec_fluxcal.templates import TemplateLibrary


@pytest.fixture(scope="module")
def derived(synthetic_grid_dir, tmp_path_factory):
    """A SYNTHETIC frame calibrated from its standards, with its calibration saved as a product."""
    exp = make_exposure(n_standards=4, n_science=2, n_sky=1, n_pix=3000, fwhm=2.5, teff_range=(5300, 7700),
                        logg_range=(4.05, 4.45), feh_range=(-0.9, 0.4), seed=11)
    folder = tmp_path_factory.mktemp("products")
    red, cat = exp.write(folder, stem="frame")
    with fits.open(red, mode="update") as hdul:
        hdul[0].header["DATE-OBS"] = "2026-03-01T03:04:05"
    sha = file_sha256(red)
    product = folder / "frame_fluxcal.fits"
    run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=synthetic_grid_dir, output=folder / "derived.fits",
                                           save_calibration=product))
    return {"red": red, "cat": cat, "sha": sha, "product": product, "run": run, "folder": folder}


def _assert_same_vector(a, b):
    assert a.unit == b.unit
    np.testing.assert_array_equal(a.wavelength.to_value(u.AA), b.wavelength.to_value(u.AA))
    np.testing.assert_array_equal(a.cal_factor.value, b.cal_factor.value)
    np.testing.assert_array_equal(a.cal_variance.to_value(a.unit**2), b.cal_variance.to_value(a.unit**2))
    np.testing.assert_array_equal(a.mask, b.mask)
    assert (a.smooth_factor is None) == (b.smooth_factor is None)
    if a.smooth_factor is not None:
        np.testing.assert_array_equal(a.smooth_factor.value, b.smooth_factor.value)


def test_fits_product_round_trips_with_provenance(derived, synthetic_grid_dir):
    original = derived["run"].result
    stored = load_calibration(derived["product"])
    _assert_same_vector(stored.combined_vector, original.combined_vector)
    assert stored.combined_vector.meta == original.combined_vector.meta
    assert len(stored.per_star_vectors) == len(original.per_star_vectors) >= 3
    for got, want in zip(stored.per_star_vectors, original.per_star_vectors):
        _assert_same_vector(got, want)
        assert got.meta["star_name"] == want.meta["star_name"] and got.meta["used"] == want.meta["used"]
        assert got.meta["teff"] == want.meta["teff"]
    for got, want in zip(stored.per_star_residuals, original.per_star_residuals):
        np.testing.assert_array_equal(got.value, want.value)
    for key in ("n_stars_used", "n_stars_rejected", "rms_scatter", "wavelength_range", "per_star_metrics"):
        assert stored.summary[key] == original.summary[key]
    prov = stored.summary["provenance"]
    assert prov == original.summary["provenance"]
    assert prov["kind"] == "exposure" and prov["package_version"] == __version__
    assert prov["red_file"] == "frame_red.fits" and prov["red_sha256"] == derived["sha"]
    assert prov["date_obs"] == "2026-03-01T03:04:05"
    assert prov["template_fingerprint"] == TemplateLibrary(synthetic_grid_dir).fingerprint
    assert prov["options"]["metric"] == "chi2" and prov["options"]["gates"]["outlier_sigma"] == 5.0
    header = fits.getheader(derived["product"])
    assert header["FCALPROD"] == "exposure" and header["FCALRED"] == "frame_red.fits"
    assert header["FCALRSHA"] == derived["sha"] and header["DATE-OBS"] == "2026-03-01T03:04:05"
    assert header["FCALNSTR"] == original.summary["n_stars_used"]
    with fits.open(derived["product"], checksum=True) as hdul:
        assert hdul[1].header["CHECKSUM"]


def test_ecsv_product_round_trips(derived, tmp_path):
    original = derived["run"].result
    path = save_calibration(original, tmp_path / "frame.ecsv")
    stored = load_calibration(path)
    _assert_same_vector(stored.combined_vector, original.combined_vector)
    assert stored.combined_vector.meta == original.combined_vector.meta
    assert stored.combined_vector.unit == FLAM / u.ct
    assert stored.summary["provenance"] == original.summary["provenance"]
    assert stored.summary["per_star_metrics"] == original.summary["per_star_metrics"]
    assert stored.per_star_vectors == []
    assert "# %ECSV" in path.read_text().splitlines()[0]
    # the covariance rides along: the same terms, and the same band error as the FITS product gives
    cov, again = original.covariance, stored.covariance
    assert [t.name for t in again.terms] == [t.name for t in cov.terms]
    assert [t.length for t in again.terms] == [t.length for t in cov.terms]
    wave = np.linspace(*cov.domain, 300)[1:-1]
    np.testing.assert_allclose(again.to_dense(wave), cov.to_dense(wave), rtol=1e-5, atol=1e-12)


def test_an_ecsv_product_without_covariance_says_so(derived, tmp_path, caplog):
    original = derived["run"].result
    bare = FluxCalibrationResult(original.combined_vector, summary=dict(original.summary))
    stored = load_calibration(save_calibration(bare, tmp_path / "bare.ecsv"))
    assert stored.covariance is None
    assert "no calibration covariance" in caplog.text and "MissingCovarianceError" in caplog.text


def test_a_calibrated_frame_reads_as_a_product(derived):
    stored = load_calibration(derived["run"].output)
    _assert_same_vector(stored.combined_vector, derived["run"].result.combined_vector)
    assert stored.summary["provenance"]["red_sha256"] == derived["sha"]


def test_bad_products_are_refused(derived, tmp_path):
    with pytest.raises(InputDataError, match="no FLUXCAL"):
        load_calibration(derived["red"])  # an uncalibrated frame holds no calibration
    with pytest.raises(InputDataError, match="does not exist"):
        load_calibration(tmp_path / "missing.fits")
    with pytest.raises(InputDataError, match=r"\*\.fits"):
        save_calibration(derived["run"].result, tmp_path / "frame.txt")
    with pytest.raises(InputDataError, match="exists already"):
        save_calibration(derived["run"].result, derived["product"])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stored_calibration_gives_the_derived_frame(derived, tmp_path, capsys):
    """Applying the product gives bit-identical PRIMARY and VARIANCE, without catalogue or templates."""
    out = tmp_path / "applied.fits"
    status = main(["calibrate", str(derived["red"]), "--calibration", str(derived["product"]), "--output", str(out),
                   "--quiet"])
    assert status == 0, capsys.readouterr().err
    with fits.open(out) as applied, fits.open(derived["run"].output) as reference:
        np.testing.assert_array_equal(applied[0].data, reference[0].data)
        np.testing.assert_array_equal(applied["VARIANCE"].data, reference["VARIANCE"].data)
        header = applied[0].header
        assert header["FLUXCAL"] is True and header["FCALFALL"] is False
        assert header["FCALSRC"] == "frame_fluxcal.fits"
        assert header["FCALTFP"] == reference[0].header["FCALTFP"]
        history = [str(h) for h in header["HISTORY"]]
        assert any("frame_fluxcal.fits applied" in h and "frame_red.fits" in h for h in history)
        assert not any(h.startswith("FCAL fiber") for h in history)


def _vector(unit, value=2.0e-17):
    wave = np.linspace(4000.0, 9000.0, 50) * u.AA
    factor = np.full(wave.size, value) * unit
    return CalibrationVector(wave, factor, (0.01 * factor) ** 2)


def test_calibration_converts_with_the_exposure_time():
    per_rate = FluxCalibrationResult(_vector(FLAM / (u.ct / u.s)))
    converted = calibration_for_frame(per_rate, u.ct, exptime=200.0)
    assert converted.combined_vector.unit == FLAM / u.ct
    np.testing.assert_allclose(converted.combined_vector.cal_factor.value, 1.0e-19)
    np.testing.assert_allclose(converted.combined_vector.cal_variance.value, (1.0e-21) ** 2)
    assert calibration_for_frame(per_rate, u.ct / u.s) is per_rate
    per_count = FluxCalibrationResult(_vector(FLAM / u.ct), summary={"provenance": {"exptime": 300.0}})
    np.testing.assert_allclose(calibration_for_frame(per_count, u.ct / u.s).combined_vector.cal_factor.value, 6e-15)
    with pytest.raises(InputDataError, match="exposure time"):
        calibration_for_frame(per_rate, u.ct)
