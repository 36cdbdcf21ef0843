"""Template corrections learned from CALSPEC standards (issue 16)."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from kspec_fluxcal.calspec_correction import derive_template_correction, leave_one_star_out
from kspec_fluxcal.cli import main
from kspec_fluxcal.combine import combine_calibration_vectors
from kspec_fluxcal.containers import CalibrationVector, FluxCalibrationResult
from kspec_fluxcal.error_budget import apply_error_budget
from kspec_fluxcal.exceptions import InputDataError, KspecFluxcalWarning
from kspec_fluxcal.simulate import make_calspec_exposure
from kspec_fluxcal.templates import PreparedGrid, TemplateLibrary
from kspec_fluxcal.templates.correction import (
    TemplateCorrection,
    resolve_template_correction,
    shipped_correction_path,
)

USABLE = ("hd111980", "hd209458", "hd38949", "p177d")
SOLAR_G_DWARFS = ("hd209458", "hd38949", "p177d")


def _toy(name="toy", kind="ck04models"):
    wave = np.array([4000.0, 5000.0, 6000.0, 7000.0])
    return TemplateCorrection(wave, [1.05, 1.0, 0.98, 1.0], [0.03, 0.01, 0.005, 0.002],
                              meta={"name": name, "library_kind": kind}, curves={"star_a": [1.0, 1.1, 0.9, 1.0]})


# ---------------------------------------------------------------------------
# the correction object


def test_correction_interpolates_and_holds_its_ends():
    corr = _toy()
    np.testing.assert_allclose(corr.factor_at([3000.0, 4500.0, 6500.0, 9000.0]), [1.05, 1.025, 0.99, 1.0])
    np.testing.assert_allclose(corr.factor_at([0.45, 0.5] * u.um), [1.025, 1.0])
    sigma = corr.fractional_sigma(np.array([3000.0, 5500.0, 8000.0]))
    np.testing.assert_allclose(sigma, [0.03, 0.0075, 0.002])
    flux = np.ones((2, 3)) * u.erg
    assert corr.apply(np.array([4000.0, 5000.0, 6000.0]), flux).shape == (2, 3)


def test_correction_file_round_trip(tmp_path):
    corr = _toy()
    path = tmp_path / "corr.ecsv"
    corr.write(path)
    back = TemplateCorrection.read(path)
    assert back.fingerprint == corr.fingerprint and back.label == corr.label == f"toy:{corr.fingerprint[:12]}"
    assert back.meta["library_kind"] == "ck04models"
    np.testing.assert_array_equal(back.curves["star_a"], corr.curves["star_a"])
    with pytest.raises(InputDataError, match="exists"):
        corr.write(path, overwrite=False)


@pytest.mark.parametrize(
    ("wave", "factor", "sigma", "match"),
    [
        ([5000.0, 4000.0], [1.0, 1.0], [0.0, 0.0], "strictly increasing"),
        ([4000.0, 5000.0], [1.0, -1.0], [0.0, 0.0], "finite and positive"),
        ([4000.0, 5000.0], [1.0, 1.0], [0.0, np.nan], "finite and ≥ 0"),
        ([4000.0, 5000.0], [1.0, 1.0, 1.0], [0.0, 0.0], "one value per wavelength"),
    ],
)
def test_bad_corrections_are_refused(wave, factor, sigma, match):
    with pytest.raises(InputDataError, match=match):
        TemplateCorrection(wave, factor, sigma)


def test_reading_something_else_says_what_to_do(tmp_path):
    with pytest.raises(InputDataError, match="does not exist"):
        TemplateCorrection.read(tmp_path / "missing.ecsv")
    other = tmp_path / "other.ecsv"
    Table({"a": [1.0]}).write(other, format="ascii.ecsv")
    with pytest.raises(InputDataError, match="not a kspec_fluxcal template correction"):
        TemplateCorrection.read(other)


def test_resolution_of_the_correction_option(tmp_path):
    assert resolve_template_correction(None, "ck04models") is None
    assert resolve_template_correction("none", "ck04models") is None
    assert resolve_template_correction("auto", "bosz2024") is None  # BOSZ and SYNTHETIC grids: none by default
    shipped = resolve_template_correction("auto", "ck04models")
    assert shipped.meta["library_kind"] == "ck04models"
    assert shipped.fingerprint == TemplateCorrection.read(shipped_correction_path("ck04models")).fingerprint
    corr = _toy()
    assert resolve_template_correction(corr, "bosz2024") is corr
    corr.write(tmp_path / "c.ecsv")
    assert resolve_template_correction(str(tmp_path / "c.ecsv"), "ck04models").fingerprint == corr.fingerprint
    with pytest.raises(InputDataError, match="must be 'auto', 'none'"):
        resolve_template_correction(3.0, "ck04models")


def test_shipped_correction_records_its_provenance():
    corr = TemplateCorrection.read(shipped_correction_path("ck04models"))
    assert sorted(corr.meta["used_stars"]) == sorted(USABLE)
    unused = {s["name"]: s["reason"] for s in corr.meta["stars"] if not s["used"]}
    assert set(unused) == {"hd031128", "bd_17d4708"} and all("outside the grid" in r for r in unused.values())
    assert all(name in corr.curves for name in unused)  # their curves are kept for the record
    assert corr.meta["command"].startswith("kspec-fluxcal derive-correction --calspec ")
    assert corr.meta["fit"]["fwhm_A"] == 30.0 and corr.meta["date"]
    assert 0.9 < corr.factor.min() and corr.factor.max() < 1.1
    assert np.all(corr.sigma >= 0.002)


# ---------------------------------------------------------------------------
# the template-misfit term of the error budget


def _vector(level, wave, n=3):
    unit = u.erg / u.cm**2 / u.s / u.AA / u.ct
    factor = np.full(wave.size, level) * unit
    return CalibrationVector(wavelength=wave * u.AA, cal_factor=factor, cal_variance=(1e-3 * factor) ** 2,
                             mask=np.zeros(wave.size, bool), smooth_factor=factor,
                             smooth_variance=(1e-3 * factor) ** 2, meta={"star_name": f"s{n}", "fiber_id": n})


def test_template_misfit_adds_a_shared_variance():
    wave = np.linspace(4000.0, 7000.0, 31)
    vectors = [_vector(lv, wave, i) for i, lv in enumerate((1.0, 1.01, 0.99))]
    combined = combine_calibration_vectors(vectors)
    corr = _toy()
    plain = apply_error_budget(combined, zero_point_sigma=0.0)
    with_misfit = apply_error_budget(combined, template_misfit=corr.fractional_sigma, misfit_label=corr.label,
                                     zero_point_sigma=0.0)
    c = plain.combined_vector.cal_factor.value
    extra = with_misfit.combined_vector.cal_variance.value - plain.combined_vector.cal_variance.value
    np.testing.assert_allclose(extra, (corr.fractional_sigma(wave) * c) ** 2, rtol=1e-10)
    np.testing.assert_array_equal(with_misfit.combined_vector.cal_factor.value, c)
    assert with_misfit.summary["error_budget"]["misfit_source"] == corr.label


# ---------------------------------------------------------------------------
# the library hook


def test_library_applies_the_correction_before_the_lsf(ck04_dir):
    raw = TemplateLibrary(ck04_dir, correction=None)
    default = TemplateLibrary(ck04_dir)
    shipped = TemplateCorrection.read(shipped_correction_path("ck04models"))
    assert default.correction.fingerprint == shipped.fingerprint and raw.correction is None
    assert default.fingerprint != raw.fingerprint
    toy = TemplateLibrary(ck04_dir, correction=_toy())
    assert len({raw.fingerprint, default.fingerprint, toy.fingerprint}) == 3
    t_raw, t_cor = raw.load_template(5), default.load_template(5)
    expected = shipped.factor_at(t_raw.wavelength)
    assert np.ptp(expected) > 0.03
    np.testing.assert_allclose(t_cor.flux.value, t_raw.flux.value * expected, rtol=1e-6)
    np.testing.assert_allclose(t_cor.continuum.value, t_raw.continuum.value * expected, rtol=1e-6)
    # the raw grid is still raw after the corrected one was cached (no shared cache entry)
    np.testing.assert_array_equal(TemplateLibrary(ck04_dir, correction=None).load_template(5).flux, t_raw.flux)
    target = np.linspace(4000, 9000, 300)
    solar = dict(teff_range=(5750, 6250), logg_range=(4.5, 4.5), feh_range=(0.0, 0.0))
    g_raw = PreparedGrid.build(raw, target, 30.0, entries=raw.query(**solar), bands=("ps1_g",))
    g_cor = PreparedGrid.build(default, target, 30.0, entries=default.query(**solar), bands=("ps1_g",))
    assert g_raw.key != g_cor.key
    np.testing.assert_allclose(g_cor.flux / g_raw.flux, np.broadcast_to(shipped.factor_at(target), g_raw.flux.shape),
                               rtol=1e-3)
    assert "corrected by ck04models-calspec" in repr(default)


def test_synthetic_libraries_are_not_corrected_by_default(tmp_path):
    from kspec_fluxcal.simulate import write_bosz_grid

    write_bosz_grid(tmp_path, teffs=(5750, 6000), loggs=(4.5,), fehs=(0.0,), resolution=2000,
                    wave_range=(3000.0, 11000.0), layout="flat")
    lib = TemplateLibrary(tmp_path)
    assert lib.correction is None
    given = TemplateLibrary(tmp_path, correction=_toy())
    np.testing.assert_allclose(given.load_template(0).flux.value,
                               lib.load_template(0).flux.value * _toy().factor_at(lib.wavelength), rtol=1e-6)


# ---------------------------------------------------------------------------
# derivation, command line and the shipped file


def test_shipped_file_is_what_the_command_makes(calspec_dir, ck04_dir, tmp_path):
    out = tmp_path / "corr.ecsv"
    assert main(["derive-correction", "--calspec", str(calspec_dir), "--templates", str(ck04_dir), "-o", str(out),
                 "--quiet"]) == 0
    made = TemplateCorrection.read(out)
    shipped = TemplateCorrection.read(shipped_correction_path("ck04models"))
    np.testing.assert_allclose(made.wavelength.value, shipped.wavelength.value, rtol=1e-9)
    np.testing.assert_allclose(made.factor, shipped.factor, atol=2e-6)
    np.testing.assert_allclose(made.sigma, shipped.sigma, atol=2e-6)
    assert made.meta["used_stars"] == shipped.meta["used_stars"]
    assert made.meta["fit"] == shipped.meta["fit"]


def test_derivation_needs_two_stars_inside_the_grid(calspec_dir, ck04_dir):
    files = sorted(calspec_dir.glob("*.fits*"))
    with pytest.raises(InputDataError, match="only 1 usable CALSPEC star"):
        derive_template_correction(files, ck04_dir, exclude=["hd111980", "hd209458", "hd38949"])


def test_command_line_refuses_an_empty_calspec_folder(ck04_dir, tmp_path, capsys):
    assert main(["derive-correction", "--calspec", str(tmp_path), "--templates", str(ck04_dir), "-o",
                 str(tmp_path / "c.ecsv")]) == 1
    assert "holds no CALSPEC FITS file" in capsys.readouterr().err
    assert not (tmp_path / "c.ecsv").exists()


@pytest.mark.parametrize("option", ["auto", "none", "file"])
def test_calibrate_records_the_correction(calspec_dir, ck04_dir, tmp_path, option):
    files = [p for p in sorted(calspec_dir.glob("*.fits*")) if p.name.split("_stis")[0] in USABLE]
    red, cat = make_calspec_exposure(files, fwhm=30.0, n_pix=621, seed=3).write(tmp_path, stem="calspec")
    value = str(shipped_correction_path("ck04models")) if option == "file" else option
    out = tmp_path / "out.fits"
    assert main(["calibrate", str(red), "--catalog", str(cat), "--templates", str(ck04_dir), "--fwhm", "30",
                 "--output", str(out), "--quiet", "--template-correction", value]) == 0
    header = fits.getheader(out)
    result = FluxCalibrationResult.read(out)
    label = TemplateCorrection.read(shipped_correction_path("ck04models")).label
    if option == "none":
        assert header["FCALTCOR"] == "none" and result.summary["template_correction"] is None
    else:
        assert header["FCALTCOR"] == label
        assert result.summary["template_correction"]["label"] == label
        assert result.summary["error_budget"]["terms"]["template_misfit"]["median_fraction"] > 0


# ---------------------------------------------------------------------------
# guarding against overfitting


@pytest.mark.slow
def test_leave_one_star_out(calspec_dir, ck04_dir):
    """The correction derived without a star improves that star's p95 (near-solar G dwarfs), pulls stay honest.

    The metal-poor F7 dwarf HD 111980 is not improved by a correction learned
    from the three G0 dwarfs (its blue misfit has the other sign): that is
    reported in the docs, and asserted here only through its pulls.
    """
    files = sorted(calspec_dir.glob("*.fits*"))
    table, corrections = leave_one_star_out(files, ck04_dir, seeds=(1, 2))
    assert set(corrections) == set(USABLE)
    for star in SOLAR_G_DWARFS:
        rows = table[table["star"] == star]
        before = rows[rows["case"] == "none"]["p95_abs_error"]
        after = rows[rows["case"] == "leave-one-out"]["p95_abs_error"]
        assert np.mean(after) < np.mean(before)
        assert np.max(after) <= 0.025
    loo = table[table["case"] == "leave-one-out"]
    pooled = np.sqrt(np.mean(np.square(loo["pull_rms"])))
    assert 0.6 <= pooled <= 1.3


def test_correction_improves_an_in_sample_star_frame(calspec_dir, ck04_dir):
    """One-standard frames of HD 209458: the shipped correction lowers the p95 error and the pulls.

    `calspec_frame_accuracy` silences only the one-standard warning: any
    other package warning would fail here.
    """
    from kspec_fluxcal.calspec_correction import calspec_frame_accuracy

    files = [p for p in sorted(calspec_dir.glob("*.fits*")) if p.name.startswith("hd209458")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", KspecFluxcalWarning)
        before = calspec_frame_accuracy(files, ck04_dir, "none", seed=5)
        after = calspec_frame_accuracy(files, ck04_dir, "auto", seed=5)
    assert after["n_stars_used"] == 1 and after["n_pixels"] == before["n_pixels"] > 300
    assert after["p95_abs_error"] < before["p95_abs_error"]
    assert after["pull_rms"] < before["pull_rms"]
