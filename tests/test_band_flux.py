"""The calibration covariance (FCALCOV) and band fluxes with honest errors (`kspec_fluxcal.band_flux`)."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import Covariance, VarianceUncertainty
from specutils import Spectrum, SpectrumList

from kspec_fluxcal import (
    FluxCalibrationResult,
    KspecFluxcalError,
    MissingCovarianceError,
    apply_flux_calibration,
    band_flux,
    flux_covariance,
    load_calibration,
    save_calibration,
    synthetic_photometry,
)
from kspec_fluxcal.combine import QualityGates
from kspec_fluxcal.containers import FLAM, CalibrationVector, measured_on_grid, spectrum_variance
from kspec_fluxcal.covariance import META_KEY, CalibrationCovariance
from kspec_fluxcal.error_budget import BUDGET_TERMS
from kspec_fluxcal.exceptions import CalibrationError, InputDataError
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal
from kspec_fluxcal.simulate import make_exposure

from .band_pulls import BOX_BANDS, FILTERS, band_label, pooled_rms, target_pulls
from .independent_sim import FAMILY_GATES, accuracy, learned_family_floor, make_frame

WAVE = np.linspace(3600.0, 9800.0, 3101)


def _terms(rng, n=WAVE.size):
    """Budget terms (variance of ln Cal) of plausible sizes, varying with wavelength."""
    shape = 1 + 0.5 * np.sin(np.linspace(0, 6, n))
    return {"noise": 2e-6 * shape, "scale": np.full(n, 4e-6), "zero_point": 9e-6 * shape[::-1],
            "smoothing": 1e-6 * shape, "bridging": 1.5e-6 * shape[::-1], "template_misfit": 2.5e-5 * shape}


@pytest.fixture(scope="module")
def smooth_cov():
    return CalibrationCovariance.from_budget(WAVE, _terms(None), np.ones(WAVE.size, bool), "smooth", 250.0)


def test_diagonal_is_the_per_pixel_budget(smooth_cov):
    terms = _terms(None)
    total = sum(terms.values())
    np.testing.assert_allclose(smooth_cov.variance(WAVE), total, rtol=1e-10)
    pixel = CalibrationCovariance.from_budget(WAVE, terms, np.ones(WAVE.size, bool), "pixel", 250.0)
    np.testing.assert_allclose(pixel.variance(WAVE), total, rtol=1e-10)
    np.testing.assert_allclose(pixel.independent, terms["noise"])  # the per-pixel form's noise is independent
    assert smooth_cov.independent.max() == 0.0
    assert {t.name for t in smooth_cov.terms} == set(BUDGET_TERMS) | {"template_misfit_broad"}


def test_misfit_has_a_short_and_a_broad_part(smooth_cov):
    """The template misfit's variance splits into MISFIT_BROAD_SHARE over MISFIT_BROAD_LENGTH and the rest over
    the knot scale: two pixels 1000 Å apart share the broad part only (a single 400 Å length shared none)."""
    from kspec_fluxcal.covariance import MISFIT_BROAD_LENGTH, MISFIT_BROAD_SHARE

    misfit = _terms(None)["template_misfit"]
    names = {t.name: t for t in smooth_cov.terms}
    np.testing.assert_allclose(names["template_misfit_broad"].sigma ** 2, MISFIT_BROAD_SHARE * misfit, rtol=1e-12)
    np.testing.assert_allclose(names["template_misfit"].sigma ** 2, (1 - MISFIT_BROAD_SHARE) * misfit, rtol=1e-12)
    assert names["template_misfit_broad"].length == MISFIT_BROAD_LENGTH
    only = CalibrationCovariance(WAVE, np.zeros(WAVE.size), [names["template_misfit"], names["template_misfit_broad"]],
                                 np.zeros(WAVE.size, bool), smooth_cov.domain)
    grid = np.array([5000.0, 6000.0])
    dense = only.to_dense(grid)
    rho = dense[0, 1] / np.sqrt(dense[0, 0] * dense[1, 1])
    assert 0.25 < rho < MISFIT_BROAD_SHARE  # the broad part's correlation at 1000 Å, nothing of the short part


def test_correlations_follow_each_term(smooth_cov):
    grid = WAVE[::5]
    dense = smooth_cov.to_dense(grid)
    sigma = np.sqrt(np.diag(dense))
    corr = dense / np.outer(sigma, sigma)
    i = np.searchsorted(grid, 6000.0)
    near, far = np.searchsorted(grid, 6050.0), np.searchsorted(grid, 9000.0)
    assert corr[i, near] > 0.8  # one knot interval shares everything but the finest term
    level = sum(np.interp(grid[i], WAVE, t.sigma) * np.interp(grid[far], WAVE, t.sigma)
                for t in smooth_cov.terms if t.length is None)
    broad = [t for t in smooth_cov.terms if t.name == "template_misfit_broad"]
    level += CalibrationCovariance(WAVE, np.zeros(WAVE.size), broad, smooth_cov.mask,
                                   smooth_cov.domain).to_dense(grid[[i, far]])[0, 1]
    np.testing.assert_allclose(dense[i, far], level, rtol=1e-10)  # far apart: the level terms and the broad misfit
    assert np.all(np.linalg.eigvalsh(dense) > -1e-12 * np.max(dense))


def test_fits_round_trip_and_astropy_covariance(smooth_cov, tmp_path):
    path = tmp_path / "cov.fits"
    fits.HDUList([fits.PrimaryHDU(), smooth_cov.to_hdu()]).writeto(path)
    with fits.open(path) as hdul:
        back = CalibrationCovariance.from_hdu(hdul["FCALCOV"])
    grid = np.linspace(4000.0, 9000.0, 777)  # any grid, not the stored one
    np.testing.assert_allclose(back.to_dense(grid), smooth_cov.to_dense(grid), rtol=1e-5, atol=1e-12)
    cov = back.to_covariance(grid[:50], scale=np.full(50, 2.0) * FLAM)
    assert isinstance(cov, Covariance)
    assert cov.unit == FLAM**2
    np.testing.assert_allclose(np.diag(cov.to_dense()), 4.0 * back.variance(grid[:50]), rtol=1e-10)
    with pytest.raises(InputDataError, match="outside the calibration's defined range"):
        back.to_covariance(np.array([3000.0, 4000.0]))


def _calibrated(cov, flux_value=1e-15, pixel_var=0.0, unit=FLAM):
    """A calibrated spectrum on WAVE with constant flux, its variance = pixel noise + the calibration's diagonal."""
    flux = np.full(WAVE.size, flux_value)
    variance = pixel_var + flux**2 * cov.variance(WAVE)
    meta = {} if cov is None else {META_KEY: cov}
    return Spectrum(spectral_axis=WAVE * u.AA, flux=(flux * FLAM).to(unit, u.spectral_density(WAVE * u.AA)),
                    uncertainty=VarianceUncertainty(
                        (variance * FLAM**2).to_value(FLAM**2) * ((1 * FLAM).to_value(
                            unit, u.spectral_density(WAVE * u.AA))) ** 2, unit=unit**2),
                    meta=meta)


def test_level_error_does_not_average_down():
    """A pure level error of 1 %: a band's σ is 1 % of its flux, whatever its width."""
    n = WAVE.size
    terms = {"scale": np.full(n, 1e-4)}
    cov = CalibrationCovariance.from_budget(WAVE, terms, np.ones(n, bool), "smooth", 250.0)
    spectrum = _calibrated(cov)
    flux, sigma = band_flux(spectrum, (5000 * u.AA, 7000 * u.AA))
    assert flux.unit == FLAM and sigma.unit == FLAM
    np.testing.assert_allclose(sigma / flux, 0.01, rtol=1e-6)
    naive = np.sqrt(np.mean(spectrum_variance(spectrum).value[(WAVE >= 5000) & (WAVE <= 7000)]) /
                    np.count_nonzero((WAVE >= 5000) & (WAVE <= 7000)))
    assert sigma.value > 10 * naive


def test_pixel_noise_averages_down_and_is_not_counted_twice(smooth_cov):
    pixel_var = 1e-34
    spectrum = _calibrated(smooth_cov, pixel_var=pixel_var)
    inside = (WAVE >= 6000) & (WAVE <= 6500)
    _, sigma = band_flux(spectrum, (6000 * u.AA, 6500 * u.AA))
    _, sigma_cal = band_flux(_calibrated(smooth_cov), (6000 * u.AA, 6500 * u.AA))
    np.testing.assert_allclose(sigma.value**2 - sigma_cal.value**2, pixel_var / np.count_nonzero(inside), rtol=1e-6)
    cov = flux_covariance(spectrum, (6000 * u.AA, 6500 * u.AA))
    np.testing.assert_allclose(np.diag(cov.to_dense()), spectrum_variance(spectrum).value[inside], rtol=1e-10)
    only = flux_covariance(spectrum, (6000 * u.AA, 6500 * u.AA), calibration_only=True)
    np.testing.assert_allclose(np.diag(only.to_dense()), np.diag(cov.to_dense()) - pixel_var, rtol=1e-6)
    weights = np.full(inside.sum(), 1.0 / inside.sum())
    np.testing.assert_allclose(weights @ cov.to_dense() @ weights, sigma.value**2, rtol=1e-8)


def test_units_and_band_forms(smooth_cov):
    spectrum = _calibrated(smooth_cov)
    in_fnu = _calibrated(smooth_cov, unit=u.Jy)
    for band in ((5500 * u.AA, 6800 * u.AA), (550 * u.nm, 680 * u.nm), "ps1_r"):
        flux, sigma = band_flux(spectrum, band)
        flux_nu, sigma_nu = band_flux(in_fnu, band)
        np.testing.assert_allclose([flux_nu.value, sigma_nu.value], [flux.value, sigma.value], rtol=1e-8)
    for bad in ((5500, 6800), (5500 * u.AA,), (5500 * u.s, 6800 * u.s)):
        with pytest.raises(InputDataError, match="pair of wavelength Quantities"):
            band_flux(spectrum, bad)
    with pytest.raises(InputDataError, match="no usable pixel"):
        band_flux(spectrum, (1000 * u.AA, 2000 * u.AA))
    counts = Spectrum(spectral_axis=WAVE * u.AA, flux=np.ones(WAVE.size) * u.ct,
                      uncertainty=VarianceUncertainty(np.ones(WAVE.size), unit=u.ct**2), meta={META_KEY: smooth_cov})
    with pytest.raises(InputDataError, match="not a flux density"):
        band_flux(counts, "ps1_r")


def test_missing_covariance_is_a_package_error():
    spectrum = _calibrated(CalibrationCovariance.from_budget(WAVE, {"scale": np.full(WAVE.size, 1e-4)},
                                                             np.ones(WAVE.size, bool), "smooth"))
    spectrum.meta.pop(META_KEY)
    for call in (lambda: band_flux(spectrum, "ps1_r"), lambda: flux_covariance(spectrum),
                 lambda: synthetic_photometry(spectrum, "ps1_r", return_error=True)):
        with pytest.raises(MissingCovarianceError, match="no calibration covariance") as info:
            call()
        assert isinstance(info.value, KspecFluxcalError)
    assert np.isfinite(synthetic_photometry(spectrum, "ps1_r").value)  # without the option: as before


def test_synthetic_photometry_error(smooth_cov):
    spectrum = _calibrated(smooth_cov, pixel_var=1e-34)
    mag = synthetic_photometry(spectrum, "ps1_g")
    mag2, err = synthetic_photometry(spectrum, "ps1_g", return_error=True)
    assert mag2 == mag and err.unit == u.mag
    flux, sigma = band_flux(spectrum, "ps1_g")
    np.testing.assert_allclose(err.value, 2.5 / np.log(10) * sigma.value / flux.value, rtol=1e-10)
    mags, errs = synthetic_photometry(spectrum, ["ps1_g", "ps1_z"], return_error=True)
    assert mags.shape == errs.shape == (2,) and errs[0] == err


@pytest.fixture(scope="module")
def calibrated_run(synthetic_grid_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bandflux")
    exposure = make_exposure(n_standards=4, n_science=2, n_sky=1, n_pix=3000, fwhm=2.5, seed=5)
    red, cat = exposure.write(tmp, stem="bf")
    run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=synthetic_grid_dir, output=tmp / "bf_cal.fits",
                                           save_calibration=tmp / "bf_product.fits"))
    return run, red, tmp


def test_pipeline_stores_the_covariance(calibrated_run):
    run, _, tmp = calibrated_run
    cov = run.result.covariance
    vec = run.result.combined_vector
    ok = ~vec.mask
    factor = vec.cal_factor.value[ok]
    # the per-pixel variance is unchanged: the covariance's diagonal is CAL_VARIANCE / CAL_FACTOR²
    np.testing.assert_allclose(cov.variance(vec.wavelength.value[ok]), vec.cal_variance.value[ok] / factor**2,
                               rtol=1e-8)
    with fits.open(run.output) as hdul:
        assert "FCALCOV" in hdul
        assert hdul["FCALCOV"].header["FCOVNTRM"] == len(cov.terms)
        assert len(hdul["FCALCOV"].data) == vec.wavelength.size
    for product in (tmp / "bf_product.fits", run.output):
        back = load_calibration(product).covariance
        np.testing.assert_allclose(back.variance(vec.wavelength.value[ok]), cov.variance(vec.wavelength.value[ok]),
                                   rtol=1e-5)
    loaded = Spectrum.read(tmp / "bf_product.fits", format="KSPEC-FLUXCAL")
    assert isinstance(loaded.meta[META_KEY], CalibrationCovariance)


def test_band_flux_from_file_and_memory_agree(calibrated_run):
    run, red, _ = calibrated_run
    fibers = SpectrumList.read(run.output, format="KSPEC-RED")
    raw = SpectrumList.read(red, format="KSPEC-RED")
    science = [i for i, s in enumerate(fibers) if s.meta["fibre"]["TYPE"] == "P"]
    assert science
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memory = apply_flux_calibration(raw, run.result)
    for i in science:
        assert isinstance(fibers[i].meta[META_KEY], CalibrationCovariance)
        assert memory[i].meta[META_KEY] is run.result.covariance
        for band in ((5000 * u.AA, 6000 * u.AA), "ps1_g"):  # outside the telluric windows (file: corrected)
            from_file = band_flux(fibers[i], band)
            from_memory = band_flux(memory[i], band)
            np.testing.assert_allclose([q.value for q in from_file], [q.value for q in from_memory], rtol=2e-4)
            assert from_file[1] > 0
    plain = apply_flux_calibration(raw[science[0]], run.result.combined_vector)  # a bare vector: no covariance
    with pytest.raises(MissingCovarianceError):
        band_flux(plain, "ps1_r")
    with pytest.raises(MissingCovarianceError):
        band_flux(SpectrumList.read(red, format="KSPEC-RED")[science[0]], "ps1_r")


def test_telluric_corrected_file_leaves_out_the_bridging_it_cancels(calibrated_run):
    # T is measured against the calibration applied: in the corrected flux the bridging term cancels where T was
    # measured (the file's variance and the covariance read with it), and stays beside the windows
    run, _, _ = calibrated_run
    telluric, cov = run.result.telluric, run.result.covariance
    assert telluric is not None and len(telluric.windows) and "bridging" in [t.name for t in cov.terms]
    with fits.open(run.output) as hdul:
        assert hdul[0].header["TELBRID"] is True
        variance = hdul["VARIANCE"].data.astype(float)
        flux = hdul[0].data.astype(float)
    fiber = SpectrumList.read(run.output, format="KSPEC-RED")[0]
    wave = fiber.spectral_axis.to_value(u.AA)
    read = fiber.meta[META_KEY]
    measured = measured_on_grid(telluric, wave)
    stated = cov.term_sigma("bridging", wave)
    assert measured.any() and np.nanmax(stated[measured]) > 0
    inner = measured & (np.convolve(measured, np.ones(7), "same") == 7)
    assert np.all(read.term_sigma("bridging", wave[inner]) == 0.0)
    beside = (np.convolve(measured, np.ones(7), "same") == 0) & np.isfinite(stated)
    assert np.max(stated[beside]) > 0
    np.testing.assert_allclose(read.term_sigma("bridging", wave[beside]), stated[beside], rtol=1e-6)
    # the file's variance still holds the rest of the calibration's per-pixel error there
    ok = inner & np.isfinite(flux[0]) & (flux[0] > 0)
    assert np.all(variance[0, ok] >= flux[0, ok] ** 2 * read.variance(wave[ok]) * (1 - 1e-3))


def test_written_spectra_keep_the_covariance(calibrated_run, tmp_path):
    run, _, _ = calibrated_run
    fibers = SpectrumList.read(run.output, format="KSPEC-RED")
    fibers.write(tmp_path / "copy.fits", format="KSPEC-RED")
    again = SpectrumList.read(tmp_path / "copy.fits", format="KSPEC-RED")
    band = (5000 * u.AA, 6000 * u.AA)
    np.testing.assert_allclose([q.value for q in band_flux(again[0], band)],
                               [q.value for q in band_flux(fibers[0], band)], rtol=1e-6)
    single = tmp_path / "one.fits"
    fibers[0].write(single, format="KSPEC-RED")
    assert isinstance(SpectrumList.read(single, format="KSPEC-RED")[0].meta[META_KEY], CalibrationCovariance)


def test_result_without_covariance_round_trips(calibrated_run, tmp_path):
    run, _, _ = calibrated_run
    bare = FluxCalibrationResult(run.result.combined_vector, summary=dict(run.result.summary))
    save_calibration(bare, tmp_path / "bare.fits")
    assert load_calibration(tmp_path / "bare.fits").covariance is None
    assert isinstance(bare.combined_vector, CalibrationVector)


def _pooled_frame_pulls(frames_and_runs):
    pooled = {}
    for seed, (frame, run) in enumerate(frames_and_runs):
        metrics = run.result.summary["per_star_metrics"]
        level = [m["fiber_id"] for m in metrics if m.get("used") and m.get("sets_level", True)]
        pulls = target_pulls(run.result, frame.truth["wavelength"], frame.reference_calibration(level),
                             np.random.default_rng(seed), n_targets=2, atmosphere=frame.truth["atmosphere"])
        for label, d in pulls.items():
            pooled.setdefault(label, {"new": [], "old": []})
            for kind in ("new", "old"):
                pooled[label][kind] += d[kind]
    return pooled


def _check(pooled):
    boxes, filters = [band_label(b) for b in BOX_BANDS], list(FILTERS)
    for bands in (boxes, filters):
        after = pooled_rms(pooled, "new", bands)
        before = pooled_rms(pooled, "old", bands)
        assert 0.7 <= after <= 1.4, (bands, after)
        assert before > 1.3 * after, (bands, before, after)


@pytest.mark.slow
def test_band_pulls_on_real_calspec_frames(calspec_dir, ck04_dir, tmp_path):
    """Real CALSPEC standards (half of them per frame), no template correction: honest band errors, pooled."""
    files = sorted(calspec_dir.glob("*.fits*"))
    runs = []
    for seed in range(1, 7):
        chosen = np.random.default_rng(seed).choice(len(files), len(files) // 2, replace=False)
        frame = make_frame(calspec_files=[files[i] for i in sorted(chosen)], n_pix=621, fwhm=30.0,
                           snr_range=(50.0, 150.0), seed=seed)
        red, cat = frame.write(tmp_path, stem=f"cs{seed}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=ck04_dir, fwhm=30.0,
                                                   template_correction="none", output=tmp_path / f"cs{seed}_out.fits"))
        runs.append((frame, run))
    _check(_pooled_frame_pulls(runs))


@pytest.mark.slow
def test_band_pulls_on_independent_synthetic_frames(synthetic_grid_dir, tmp_path):
    """SYNTHETIC standards of the independent star family through an independent instrument with structured
    throughputs, with the family's misfit learned from training frames (`tests.independent_sim`)."""
    gates = QualityGates(**FAMILY_GATES)

    def calibrate(frame, stem, **options):
        red, cat = frame.write(tmp_path, stem=stem)
        return apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=synthetic_grid_dir, gates=gates,
                                                output=tmp_path / f"{stem}_out.fits", **options))

    floor = learned_family_floor(lambda frame, stem: accuracy(calibrate(frame, stem).result, frame))
    runs = []
    for seed in range(1, 7):
        frame = make_frame(n_standards=8, n_pix=4000, seed=seed)
        runs.append((frame, calibrate(frame, f"ind{seed}", template_misfit=floor)))
    _check(_pooled_frame_pulls(runs))


@pytest.mark.slow
def test_band_pulls_with_the_nightly_fallback(calspec_dir, ck04_dir, tmp_path):
    """One CALSPEC standard per frame, calibrated with a night of three exposures of other CALSPEC stars (same
    instrument, catalogue and atmosphere) rescaled to it: the fallback's covariance gives honest band errors."""
    from kspec_fluxcal.night import combine_night
    from kspec_fluxcal.products import save_calibration as save

    files = sorted(calspec_dir.glob("*.fits*"))
    pooled = {}
    options = dict(templates=ck04_dir, fwhm=30.0, template_correction="none")
    n_frames = 0
    for seed in range(1, 9):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(files))
        single, others = files[order[0]], [files[i] for i in order[1:]]
        frame = make_frame(calspec_files=[single], n_pix=640, fwhm=30.0, snr_range=(50.0, 150.0), seed=seed)
        red, cat = frame.write(tmp_path, stem=f"f{seed}")
        try:  # a star the quality gates reject (e.g. on the grid's metallicity edge) cannot set the level
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                apply_fluxcal(red, FluxcalConfig(catalog=cat, output=tmp_path / f"f{seed}own.fits", **options))
        except CalibrationError:
            continue
        exposures = []
        for k in range(3):
            chosen = sorted(rng.choice(len(others), 4, replace=False))
            exposure = make_frame(calspec_files=[others[i] for i in chosen], n_pix=621 + 2 * k, fwhm=30.0,
                                  snr_range=(50.0, 150.0), seed=seed)
            red_k, cat_k = exposure.write(tmp_path, stem=f"n{seed}_{k}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = FluxcalConfig(catalog=cat_k, output=tmp_path / f"n{seed}_{k}o.fits", **options)
                exposures.append(apply_fluxcal(red_k, config).result)
        night = save(combine_night(exposures), tmp_path / f"night{seed}.fits")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = apply_fluxcal(red, FluxcalConfig(catalog=cat, output=tmp_path / f"f{seed}o.fits", fallback=night,
                                                   min_standards=2, **options))
        assert run.result.summary["gray_rescale"]["n_standards"] == 1
        pulls = target_pulls(run.result, frame.truth["wavelength"], frame.reference_calibration([0]),
                             np.random.default_rng(seed), n_targets=2, atmosphere=frame.truth["atmosphere"])
        for label, d in pulls.items():
            pooled.setdefault(label, {"new": [], "old": []})
            for kind in ("new", "old"):
                pooled[label][kind] += d[kind]
        n_frames += 1
        if n_frames == 4:
            break
    assert n_frames == 4
    _check(pooled)


@pytest.mark.slow
def test_one_real_standard_sets_the_fallback_level_within_its_sigma(calspec_dir, ck04_dir, tmp_path):
    """The level that one standard gives the nightly fallback is honest.

    With the fallback, most of a band's stated variance is the frame's gray
    factor (``night_level``: 64–86 % in ``benchmarks/bench_band_flux.py --kinds
    fallback --terms``), stated by `kspec_fluxcal.error_budget.level_log_variance`.
    Here frames of one real CALSPEC star (correction learned without it) are
    calibrated on their own; the median of ln(Cal/truth), the level
    `kspec_fluxcal.night.rescale_nightly` would adopt, is compared with that σ.
    """
    from kspec_fluxcal.calspec_correction import _star_name, derive_template_correction
    from kspec_fluxcal.error_budget import level_log_variance

    files = sorted(calspec_dir.glob("*.fits*"))
    pulls = []
    for seed in range(1, 13):
        star = files[np.random.default_rng(seed).integers(len(files))]
        correction = derive_template_correction(files, ck04_dir, fwhm=30.0, exclude=[_star_name(star)])
        frame = make_frame(calspec_files=[star], n_pix=640, fwhm=30.0, snr_range=(50.0, 150.0), seed=seed)
        red, cat = frame.write(tmp_path, stem=f"g{seed}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=ck04_dir, fwhm=30.0, min_standards=1,
                                                      template_correction=correction,
                                                      output=tmp_path / f"g{seed}o.fits")).result
        vec = result.combined_vector
        wave = vec.wavelength.to_value(u.AA)
        ok = ~vec.mask & np.isfinite(vec.cal_factor.value)
        truth = np.interp(wave[ok], frame.truth["wavelength"], frame.reference_calibration([0]))
        error = np.median(np.log(vec.cal_factor.value[ok] / truth))
        pulls.append(error / np.sqrt(level_log_variance(result, wave[ok][-1] - wave[ok][0])))
    # achieved: 0.76 on these 12 frames (1.04 on the 24 single-star frames of seeds 1–24 of the benchmark's
    # fallback); the whole per-pixel variance as the level's would give about 0.4, the level without the star's
    # photometric scale about 1.2 (scaled by the stated σ's parts: 0.65 % of which 0.51 % scale, 1.2 % per pixel)
    assert 0.6 <= np.sqrt(np.mean(np.square(pulls))) <= 1.15
