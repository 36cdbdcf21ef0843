"""The containers validate themselves, name the field at fault, and round-trip through FITS."""

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty
from specutils import Spectrum, Spectrum1D

from kspec_fluxcal.cli import main
from kspec_fluxcal.containers import (
    FLAM,
    CalibrationVector,
    FilterCurve,
    FluxCalibrationResult,
    Photometry,
    StellarTemplate,
    make_spectrum,
    spectrum_variance,
    validate_spectrum,
)
from kspec_fluxcal.exceptions import InputDataError

CAL = FLAM / u.ct


def test_make_spectrum_converts_units_and_builds_conventions():
    spec = make_spectrum(np.linspace(0.4, 0.5, 6) * u.micron, np.arange(6.0), np.ones(6), flux_unit="ct")
    assert spec.spectral_axis.unit == u.AA
    np.testing.assert_allclose(spec.spectral_axis.value, np.linspace(4000, 5000, 6))
    assert isinstance(spec.uncertainty, VarianceUncertainty)
    assert spec.uncertainty.unit == u.ct**2
    assert spec.mask.dtype == bool and not spec.mask.any()


@pytest.mark.parametrize(
    ("wave", "message"),
    [
        (np.arange(5) * u.pix, "not a wavelength"),
        (np.arange(5) * u.Hz, "not a wavelength"),
        (np.array([5.0, 4, 3, 2, 1]) * u.AA, "increase strictly"),
        (np.array([1.0, 2, np.nan, 4, 5]) * u.AA, "non-finite"),
    ],
)
def test_make_spectrum_rejects_bad_axes(wave, message):
    with pytest.raises(InputDataError, match=message):
        make_spectrum(wave, np.ones(5), flux_unit="ct")


def test_make_spectrum_rejects_mismatches():
    with pytest.raises(InputDataError, match="flux has shape"):
        make_spectrum(np.arange(1.0, 6.0), np.ones(4), flux_unit="ct")
    with pytest.raises(InputDataError, match="variance unit"):
        make_spectrum(np.arange(1.0, 6.0), np.ones(5) * u.ct, np.ones(5) * u.m)
    with pytest.raises(InputDataError, match="no unit"):
        make_spectrum(np.arange(1.0, 6.0), np.ones(5))


@pytest.mark.filterwarnings("ignore:The Spectrum1D class is deprecated")  # accepted on input, still
def test_validate_accepts_spectrum1d_and_other_uncertainties():
    wave = np.linspace(500, 600, 5) * u.nm
    for unc, expected in ((StdDevUncertainty(np.full(5, 2.0)), 4.0), (InverseVariance(np.full(5, 0.25)), 4.0)):
        old = Spectrum1D(spectral_axis=wave, flux=np.ones(5) * u.ct, uncertainty=unc)
        spec = validate_spectrum(old)
        assert isinstance(spec, Spectrum) and spec.spectral_axis.unit == u.AA
        np.testing.assert_allclose(spectrum_variance(spec).value, expected)
    with pytest.raises(InputDataError, match="specutils Spectrum"):
        validate_spectrum(np.ones(5))


def test_photometry_names_the_field():
    phot = Photometry(["ps1_g", "ps1_r"], [15.0, np.nan], [0.01, 0.02])
    np.testing.assert_array_equal(phot.valid, [True, False])
    assert phot["ps1_g"] == (15.0, 0.01)
    with pytest.raises(InputDataError, match="Photometry.magnitudes"):
        Photometry(["ps1_g", "ps1_r"], [15.0], [0.01, 0.02])
    with pytest.raises(InputDataError, match="Photometry.mag_errors"):
        Photometry(["ps1_g"], [15.0], [-0.1])
    with pytest.raises(InputDataError, match="duplicate"):
        Photometry(["ps1_g", "ps1_g"], [15.0, 15.0], [0.01, 0.01])


def test_filter_curve_validates():
    from synphot import SpectralElement
    from synphot.models import Empirical1D

    band = SpectralElement(Empirical1D, points=[4000, 5000, 6000] * u.AA, lookup_table=[0, 1, 0])
    curve = FilterCurve("box", band, system="Vega", vega_to_ab=0.1)
    assert curve.pivot_wavelength.unit == u.AA
    with pytest.raises(InputDataError, match="FilterCurve.system"):
        FilterCurve("box", band, system="ST")
    with pytest.raises(InputDataError, match="FilterCurve.bandpass"):
        FilterCurve("box", [0, 1, 0])


def test_stellar_template_names_the_field():
    wave = np.linspace(4000, 5000, 10)
    tpl = StellarTemplate(wave, np.ones(10) * FLAM, np.ones(10) * FLAM, teff=6000, logg=4.5, feh=0.0)
    assert tpl.to_spectrum(normalized=True).flux.unit == u.one
    with pytest.raises(InputDataError, match="StellarTemplate.continuum"):
        StellarTemplate(wave, np.ones(10) * FLAM, np.ones(9) * FLAM, teff=6000, logg=4.5, feh=0.0)
    with pytest.raises(InputDataError, match="StellarTemplate.flux"):
        StellarTemplate(wave, np.ones(10) * u.m, np.ones(10) * FLAM, teff=6000, logg=4.5, feh=0.0)
    with pytest.raises(InputDataError, match="StellarTemplate.teff"):
        StellarTemplate(wave, np.ones(10) * FLAM, np.ones(10) * FLAM, teff=np.nan, logg=4.5, feh=0.0)


def _vector(n=20, **meta):
    wave = np.linspace(4000, 9000, n) * u.AA
    factor = np.linspace(1, 2, n) * 1e-17 * CAL
    mask = np.zeros(n, bool)
    mask[3] = True
    return CalibrationVector(wave, factor, (0.01 * factor) ** 2, mask, factor * 1.001, (0.005 * factor) ** 2,
                             meta=dict(star_name="s", fiber_id=3, teff=6000.0, band_residuals={"ps1_g": 0.01}, **meta))


def test_calibration_vector_names_the_field():
    vec = _vector()
    assert vec.unit == CAL
    factor, _ = vec.best()
    assert factor is vec.smooth_factor
    wave = vec.wavelength
    with pytest.raises(InputDataError, match="CalibrationVector.cal_factor must be a Quantity"):
        CalibrationVector(wave, np.ones(20), np.ones(20))
    with pytest.raises(InputDataError, match="CalibrationVector.cal_variance has unit"):
        CalibrationVector(wave, np.ones(20) * CAL, np.ones(20) * u.m)
    with pytest.raises(InputDataError, match="CalibrationVector.mask has shape"):
        CalibrationVector(wave, np.ones(20) * CAL, np.ones(20) * CAL**2, mask=np.zeros(3, bool))
    with pytest.raises(InputDataError, match="CalibrationVector.smooth_variance is required"):
        CalibrationVector(wave, np.ones(20) * CAL, np.ones(20) * CAL**2, smooth_factor=np.ones(20) * CAL)
    with pytest.raises(InputDataError, match="negative"):
        CalibrationVector(wave, np.ones(20) * CAL, -np.ones(20) * CAL**2)


def test_result_round_trips_through_fits(tmp_path):
    vecs = [_vector(fiber=i) for i in range(3)]
    residuals = [np.linspace(-0.01, 0.01, 20) * u.one for _ in vecs]
    summary = {"n_stars_used": 3, "n_stars_rejected": 0, "rms_scatter": 0.004, "wavelength_range": [4000.0, 9000.0],
               "per_star_metrics": [{"fiber_id": 1, "used": True, "reject_reason": None}]}
    result = FluxCalibrationResult(vecs[0], vecs, residuals, summary)
    path = tmp_path / "cal.fits"
    result.write(path)
    with fits.open(path) as hdul:
        from_hdus = FluxCalibrationResult.from_hdulist(hdul)
    for back in (FluxCalibrationResult.read(path), from_hdus):
        assert back.summary == summary
        assert len(back.per_star_vectors) == 3
        for a, b in zip(back.per_star_vectors, vecs):
            assert a.unit == b.unit
            np.testing.assert_array_equal(a.cal_factor.value, b.cal_factor.value)
            np.testing.assert_array_equal(a.smooth_variance.value, b.smooth_variance.value)
            np.testing.assert_array_equal(a.mask, b.mask)
            assert a.meta == b.meta
        np.testing.assert_array_equal(back.per_star_residuals[1].value, residuals[1].value)
    with pytest.raises(InputDataError, match="per_star_vectors"):
        FluxCalibrationResult(vecs[0], [vecs[0], "not a vector"])


def test_cli_info_lists_filters(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "ps1_g" in out and "2mass_ks" in out and "cache folder" in out
