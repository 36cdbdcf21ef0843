"""specutils I/O of KSPEC frames and calibrations, and Spectrum in and out of apply_flux_calibration."""

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import StdDevUncertainty, VarianceUncertainty
from specutils import Spectrum, SpectrumList

import kspec_fluxcal
from kspec_fluxcal import RedFileError, apply_flux_calibration
from kspec_fluxcal.containers import FLAM, CalibrationVector, FluxCalibrationResult
from kspec_fluxcal.exceptions import InputDataError, OutputWriteError
from kspec_fluxcal.io.specutils_formats import identify_kspec_fluxcal, identify_kspec_red
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal
from kspec_fluxcal.products import save_calibration

from .test_io_units import write_red


def _vector(n=300, unit=FLAM / u.ct, smooth=False):
    wave = np.linspace(3900.0, 8100.0, n) * u.AA
    rng = np.random.default_rng(3)
    factor = (1e-17 * (1 + 0.3 * np.sin(wave.value / 500.0)) + rng.normal(0, 1e-20, n)) * unit
    var = (0.01 * factor.value) ** 2 * unit**2
    mask = np.zeros(n, bool)
    mask[[5, 50]] = True
    extra = {"smooth_factor": factor * 1.001, "smooth_variance": var * 2} if smooth else {}
    return CalibrationVector(wave, factor, var, mask, meta={"star_name": "S1", "teff": 6000.0}, **extra)


@pytest.fixture
def shared_red(tmp_path):
    return write_red(tmp_path / "shared.fits", bunit="Counts")


@pytest.fixture
def jittered_red(tmp_path):
    return write_red(tmp_path / "jittered.fits", bunit="e-/s", shared=False)


def test_spectrum_list_read_gives_one_spectrum_per_fiber(jittered_red):
    for spectra in (SpectrumList.read(jittered_red, format="KSPEC-RED"), SpectrumList.read(jittered_red)):
        assert len(spectra) == 3
        with fits.open(jittered_red) as hdul:
            for i, spec in enumerate(spectra):
                assert spec.flux.unit == u.electron / u.s
                np.testing.assert_array_equal(spec.flux.value, hdul[0].data[i])
                assert isinstance(spec.uncertainty, VarianceUncertainty)
                np.testing.assert_array_equal(spec.uncertainty.array, hdul["VARIANCE"].data[i])
                np.testing.assert_array_equal(spec.spectral_axis.to_value(u.AA), hdul["WAVELA"].data[i])
                assert spec.meta["fibre"]["NAME"] == f"f{i}" and spec.meta["fiber"] == i
                assert spec.meta["header"]["SPECFWHM"] == 3.0
                assert spec.mask.dtype == bool and not spec.mask.any()


def test_spectrum_read_gives_2d_on_a_shared_grid(shared_red):
    for spec in (Spectrum.read(shared_red, format="KSPEC-RED"), Spectrum.read(shared_red)):
        assert spec.flux.shape == (3, 200) and spec.spectral_axis.shape == (200,)
        assert spec.flux.unit == u.ct
        np.testing.assert_array_equal(spec.flux.value, fits.getdata(shared_red))
        assert list(spec.meta["fibres"]["TYPE"]) == ["C", "P", "S"]


def test_spectrum_read_refuses_fibers_on_different_grids(jittered_red):
    with pytest.raises(RedFileError, match="different wavelengths.*SpectrumList.read"):
        Spectrum.read(jittered_red, format="KSPEC-RED")


def test_mask_marks_non_finite_and_negative_variance(tmp_path):
    path = write_red(tmp_path / "bad.fits")
    with fits.open(path, mode="update") as hdul:
        hdul[0].data[0, 3] = np.nan
        hdul["VARIANCE"].data[1, 7] = -1.0
    spectra = SpectrumList.read(path)
    assert np.flatnonzero(spectra[0].mask).tolist() == [3]
    assert np.flatnonzero(spectra[1].mask).tolist() == [7]


def test_identifier_recognises_only_kspec_layouts(tmp_path, shared_red):
    other = tmp_path / "other.fits"
    fits.HDUList([fits.PrimaryHDU(np.ones((2, 5)))]).writeto(other)
    text = tmp_path / "notes.fits"
    text.write_text("not a FITS file")
    assert identify_kspec_red("read", str(shared_red), None)
    assert not identify_kspec_red("read", str(other), None)
    assert not identify_kspec_red("read", str(text), None)
    assert not identify_kspec_fluxcal("read", str(shared_red), None)
    with pytest.raises(RedFileError, match="no VARIANCE extension"):
        SpectrumList.read(other, format="KSPEC-RED")


def _assert_same_spectrum(a, b):
    assert a.flux.unit == b.flux.unit and a.flux.shape == b.flux.shape
    np.testing.assert_array_equal(a.flux.value, b.flux.value)
    np.testing.assert_array_equal(a.uncertainty.array, b.uncertainty.array)
    np.testing.assert_array_equal(a.spectral_axis.to_value(u.AA), b.spectral_axis.to_value(u.AA))
    np.testing.assert_array_equal(a.mask, b.mask)


def test_2d_spectrum_round_trips_without_loss(shared_red, tmp_path):
    spec = Spectrum.read(shared_red)
    mask = spec.mask.copy()
    mask[1, 20:25] = True  # masked by the user, values finite: kept in a MASK extension
    spec = Spectrum(spectral_axis=spec.spectral_axis, flux=spec.flux, uncertainty=spec.uncertainty, mask=mask,
                    meta=spec.meta)
    out = tmp_path / "copy.fits"
    spec.write(out, format="KSPEC-RED")
    back = Spectrum.read(out)
    _assert_same_spectrum(spec, back)
    assert back.meta["header"]["SPECFWHM"] == 3.0
    assert list(back.meta["fibres"]["NAME"]) == ["f0", "f1", "f2"]
    with fits.open(out) as hdul:
        assert "MASK" in hdul
    with pytest.raises(OutputWriteError, match="exists already"):
        spec.write(out, format="KSPEC-RED")
    spec.write(out, format="KSPEC-RED", overwrite=True)


def test_spectrum_list_round_trips_with_own_wavelengths(jittered_red, tmp_path):
    spectra = SpectrumList.read(jittered_red)
    out = tmp_path / "copy.fits"
    spectra.write(out, format="KSPEC-RED")
    back = SpectrumList.read(out)
    assert len(back) == len(spectra)
    for a, b in zip(spectra, back):
        _assert_same_spectrum(a, b)
        assert a.meta["fibre"] == b.meta["fibre"]
    with fits.open(out) as hdul:
        assert "MASK" not in hdul and hdul["WAVELA"].data.shape == (3, 200)


def test_spectrum_list_of_unequal_lengths_is_refused(tmp_path):
    spectra = SpectrumList([Spectrum(spectral_axis=np.linspace(4000, 5000, n) * u.AA, flux=np.ones(n) * u.ct)
                            for n in (10, 12)])
    with pytest.raises(InputDataError, match="one length"):
        spectra.write(tmp_path / "x.fits", format="KSPEC-RED")


def test_one_fiber_writes_and_reads(tmp_path):
    spec = Spectrum(spectral_axis=np.linspace(4000, 5000, 10) * u.AA, flux=np.arange(1.0, 11.0) * u.adu,
                    uncertainty=StdDevUncertainty(np.full(10, 2.0)))
    spec.write(tmp_path / "one.fits", format="KSPEC-RED")
    back = SpectrumList.read(tmp_path / "one.fits")
    assert len(back) == 1 and back[0].flux.unit == u.adu
    np.testing.assert_array_equal(back[0].uncertainty.array, np.full(10, 4.0))


@pytest.mark.parametrize("smooth", [False, True])
def test_calibration_vector_spectrum_round_trip(smooth):
    vec = _vector(smooth=smooth)
    spec = vec.to_spectrum()
    assert isinstance(spec.uncertainty, VarianceUncertainty) and spec.mask.sum() == 2
    back = CalibrationVector.from_spectrum(spec)
    assert back.unit == vec.unit and back.meta == vec.meta
    for name in ("wavelength", "cal_factor", "cal_variance", "smooth_factor", "smooth_variance"):
        a, b = getattr(vec, name), getattr(back, name)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a.value, b.value)
            assert a.unit == b.unit
    np.testing.assert_array_equal(back.mask, vec.mask)
    with pytest.raises(InputDataError, match="1-D specutils Spectrum"):
        CalibrationVector.from_spectrum(vec.cal_factor)


@pytest.mark.parametrize("unit", [FLAM / u.ct, FLAM / u.electron, FLAM / u.DN])
def test_fluxcal_products_read_as_spectrum(tmp_path, unit):
    vec = _vector(unit=unit)
    path = save_calibration(FluxCalibrationResult(vec, summary={"n_stars_used": 1}), tmp_path / "cal.fits")
    spec = Spectrum.read(path)  # identified as KSPEC-FLUXCAL
    assert spec.flux.unit == unit
    np.testing.assert_array_equal(spec.flux.value, vec.cal_factor.value)
    np.testing.assert_array_equal(spec.mask, vec.mask)


def _expected(counts, variance, vec, wave):
    """V_F = V K² + C² V_K with K, V_K interpolated linearly (computed here, not by the package)."""
    k = np.interp(wave, vec.wavelength.value, vec.cal_factor.value)
    vk = np.interp(wave, vec.wavelength.value, vec.cal_variance.value)
    return counts * k, variance * k**2 + counts**2 * vk


def test_apply_to_2d_spectrum_and_list(shared_red, jittered_red):
    vec = _vector()
    spec = Spectrum.read(shared_red)
    calibrated = apply_flux_calibration(spec, vec)
    assert isinstance(calibrated, Spectrum) and calibrated.flux.shape == spec.flux.shape
    assert calibrated.flux.unit == FLAM and isinstance(calibrated.uncertainty, VarianceUncertainty)
    wave = spec.spectral_axis.to_value(u.AA)
    bad = np.interp(wave, vec.wavelength.value, vec.mask.astype(float)) > 0
    flux, var = _expected(spec.flux.value, spec.uncertainty.array, vec, wave)
    np.testing.assert_allclose(calibrated.flux.value[:, ~bad], flux[:, ~bad], rtol=1e-12)
    np.testing.assert_allclose(calibrated.uncertainty.array[:, ~bad], var[:, ~bad], rtol=1e-12)
    assert np.all(calibrated.mask[:, bad]) and np.all(np.isnan(calibrated.flux.value[:, bad]))
    assert calibrated.meta["header"]["FLUXCAL"] and spec.meta["header"].get("FLUXCAL") is None
    listed = apply_flux_calibration(SpectrumList.read(shared_red), calibration=vec)
    assert isinstance(listed, SpectrumList) and len(listed) == 3
    for i, one in enumerate(listed):
        np.testing.assert_array_equal(one.flux.value, calibrated.flux.value[i])
    per_rate = _vector(unit=FLAM / (u.electron / u.s))
    jitter = SpectrumList.read(jittered_red)
    out = apply_flux_calibration(jitter, per_rate.to_spectrum())  # a calibration Spectrum works too
    for one, raw in zip(out, jitter):
        w = raw.spectral_axis.to_value(u.AA)
        keep = ~one.mask
        f, v = _expected(raw.flux.value, raw.uncertainty.array, per_rate, w)
        np.testing.assert_allclose(one.flux.value[keep], f[keep], rtol=1e-12)
        np.testing.assert_allclose(one.uncertainty.array[keep], v[keep], rtol=1e-12)


def test_apply_refuses_a_wrong_unit_and_arrays_still_work(shared_red):
    spec = Spectrum.read(shared_red)
    with pytest.raises(u.UnitsError, match="not a flux density"):
        apply_flux_calibration(spec, _vector(unit=FLAM / u.adu))
    with pytest.raises(InputDataError, match="calibration must be"):
        apply_flux_calibration(spec, "cal.fits")
    flux, var = apply_flux_calibration(spec.flux.value, spec.uncertainty.array, _vector(),
                                       wavelength=spec.spectral_axis)
    np.testing.assert_array_equal(flux.value, apply_flux_calibration(spec, _vector()).flux.value)


def test_calibrated_frame_reads_back_through_specutils(tmp_path, shared_red):
    vec = _vector()
    product = save_calibration(FluxCalibrationResult(vec, summary={"n_stars_used": 1}), tmp_path / "cal.fits")
    run = apply_fluxcal(shared_red, FluxcalConfig(calibration=product, output=tmp_path / "cal_red.fits"))
    spectra = SpectrumList.read(run.output)
    assert spectra[0].flux.unit == FLAM and spectra[0].meta["header"]["FLUXCAL"]
    direct = apply_flux_calibration(Spectrum.read(shared_red), vec)
    np.testing.assert_allclose(spectra[1].flux.value[~spectra[1].mask], direct.flux.value[1][~direct.mask[1]],
                               rtol=1e-6)  # the frame is written in float32
    cal = Spectrum.read(run.output, format="KSPEC-FLUXCAL")
    np.testing.assert_array_equal(cal.flux.value, vec.cal_factor.value)


def test_top_level_is_curated():
    assert 12 <= len(kspec_fluxcal.__all__) <= 22
    for name in kspec_fluxcal.__all__:
        assert getattr(kspec_fluxcal, name) is not None
    assert {"apply_fluxcal", "derive_flux_calibration", "apply_flux_calibration", "TemplateLibrary",
            "PreparedGrid", "CalibrationVector", "Photometry", "synthetic_photometry"} <= set(kspec_fluxcal.__all__)


def test_list_of_unequal_fibers_and_exposure_time_conversion(tmp_path):
    red = write_red(tmp_path / "red.fits", bunit="ct", exptime=50.0)
    fibers = SpectrumList.read(red)
    short = Spectrum(spectral_axis=fibers[0].spectral_axis[:120], flux=fibers[0].flux[:120],
                     uncertainty=VarianceUncertainty(fibers[0].uncertainty.array[:120], unit=u.ct**2),
                     mask=fibers[0].mask[:120], meta=fibers[0].meta)
    per_rate = FluxCalibrationResult(_vector(unit=FLAM / (u.ct / u.s)), summary={"n_stars_used": 2})
    out = apply_flux_calibration(SpectrumList([short, fibers[1]]), per_rate)  # per ct/s on counts: ÷ EXPTIME
    assert [len(s.flux) for s in out] == [120, 200]
    vec = per_rate.combined_vector
    for one, raw in zip(out, (short, fibers[1])):
        w = raw.spectral_axis.to_value(u.AA)
        f, v = _expected(raw.flux.value / 50.0, raw.uncertainty.array / 50.0**2, vec, w)
        keep = ~one.mask
        np.testing.assert_allclose(one.flux.value[keep], f[keep], rtol=1e-12)
        np.testing.assert_allclose(one.uncertainty.array[keep], v[keep], rtol=1e-12)


def test_stacked_list_gives_each_fiber_its_own_spectrum(shared_red):
    """The stacked path: axes in Å kept, other units converted, one header per fiber, the covariance in meta."""
    fibers = SpectrumList.read(shared_red)
    fibers[0].meta["header"]["OBSERVER"] = "someone"  # one fiber's header differs from the others'
    in_nm = Spectrum(spectral_axis=fibers[2].spectral_axis.to(u.nm), flux=fibers[2].flux,
                     uncertainty=StdDevUncertainty(np.sqrt(fibers[2].uncertainty.array), unit=fibers[2].flux.unit),
                     mask=fibers[2].mask, meta=dict(fibers[2].meta))
    spectra = SpectrumList([fibers[0], fibers[1], in_nm])
    result = FluxCalibrationResult(_vector(), summary={"n_stars_used": 3, "rms_scatter": 0.01})
    result.covariance = "a covariance"  # any object: it is handed on, not used
    out = apply_flux_calibration(spectra, result)
    reference = apply_flux_calibration(Spectrum.read(shared_red), result)
    headers = [one.meta["header"] for one in out]
    assert len({id(h) for h in headers}) == 3 and all(h["FLUXCAL"] and h["FCALNSTR"] == 3 for h in headers)
    assert headers[0]["OBSERVER"] == "someone" and "OBSERVER" not in headers[1]
    assert all(s.meta["header"].get("FLUXCAL") is None for s in spectra)  # the input is untouched
    for i, one in enumerate(out):
        assert isinstance(one, Spectrum) and one.spectral_axis.unit == u.AA and one.flux.unit == FLAM
        assert isinstance(one.uncertainty, VarianceUncertainty) and one.uncertainty.unit == FLAM**2
        np.testing.assert_allclose(one.spectral_axis.value, reference.spectral_axis.value, rtol=1e-12)
        np.testing.assert_allclose(one.flux.value, reference.flux.value[i], rtol=1e-12)
        np.testing.assert_allclose(one.uncertainty.array, reference.uncertainty.array[i], rtol=1e-12)
        np.testing.assert_array_equal(one.mask, reference.mask[i])
        assert one.meta["fluxcal_covariance"] == "a covariance" and one.meta["fiber"] == i
