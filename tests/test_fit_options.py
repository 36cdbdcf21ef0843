"""The issue-12 options end to end: --form, --knot-spacing, --mag-floor and what the file records."""

import numpy as np
import pytest
from astropy.io import fits

from kspec_fluxcal.cli import main
from kspec_fluxcal.containers import FluxCalibrationResult
from kspec_fluxcal.engine import EngineOptions
from kspec_fluxcal.error_budget import BUDGET_TERMS
from kspec_fluxcal.exceptions import InputDataError
from kspec_fluxcal.pipeline import FluxcalConfig
from kspec_fluxcal.simulate import make_exposure


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    exp = make_exposure(n_standards=5, n_science=1, n_sky=1, n_pix=3000, fwhm=2.5, teff_range=(5300, 7700),
                        logg_range=(4.05, 4.45), feh_range=(-0.9, 0.4), seed=8)
    return exp.write(tmp_path_factory.mktemp("opts"), stem="opts")


def _run(frame, grid, out, *options):
    red, cat = frame
    status = main(["calibrate", str(red), "--catalog", str(cat), "--templates", str(grid), "--output", str(out),
                   "--quiet", *options])
    assert status == 0
    return fits.getheader(out), FluxCalibrationResult.read(out)


def test_defaults_record_the_choice_and_the_budget(frame, synthetic_grid_dir, tmp_path):
    header, result = _run(frame, synthetic_grid_dir, tmp_path / "auto.fits")
    choice = result.summary["knot_selection"]
    assert header["FCALKSEL"] == choice["method"] == "loso"
    assert header["FCALKNOT"] == choice["spacing"]
    assert len(choice["scores"]) == len(choice["candidates"])
    assert header["FCALMFLR"] == 0.005 and header["FCALFORM"] == "smooth"
    budget = result.summary["error_budget"]
    assert list(budget["terms"]) == list(BUDGET_TERMS)
    assert sum(t["share"] for t in budget["terms"].values()) == pytest.approx(1.0)
    assert budget["terms"]["template_misfit"]["median_fraction"] == 0  # SYNTHETIC library
    assert "SYNTHETIC" in header["FCALMISF"]
    assert header["FCALEZP"] == pytest.approx(budget["terms"]["zero_point"]["median_fraction"])
    # the star vectors keep their spacing, not a copy of the whole choice
    assert all(v.meta["knot_spacing"] == choice["spacing"] for v in result.per_star_vectors)
    assert not any("knot_selection" in v.meta for v in result.per_star_vectors)


def test_pixel_form_fixed_knots_and_floor(frame, synthetic_grid_dir, tmp_path):
    header, result = _run(frame, synthetic_grid_dir, tmp_path / "pixel.fits", "--form", "pixel",
                          "--knot-spacing", "200", "--mag-floor", "0.02", "--zero-point-sigma", "0.02")
    assert header["FCALFORM"] == "pixel"
    assert header["FCALKNOT"] == 200.0 and header["FCALKSEL"] == "fixed"
    assert header["FCALMFLR"] == 0.02 and header["FCALZPS"] == 0.02
    assert result.summary["error_budget"]["terms"]["smoothing"]["median_fraction"] == 0
    _, default = _run(frame, synthetic_grid_dir, tmp_path / "pixel5.fits", "--form", "pixel")
    # a larger zero-point error means a larger zero-point term
    assert (result.summary["error_budget"]["terms"]["zero_point"]["median_fraction"]
            > 3 * default.summary["error_budget"]["terms"]["zero_point"]["median_fraction"])
    vec = result.combined_vector
    assert np.all(np.isfinite(vec.cal_variance.value[~vec.mask]))


def test_caller_misfit_goes_into_the_variance(frame, synthetic_grid_dir, tmp_path):
    from kspec_fluxcal.pipeline import apply_fluxcal

    red, cat = frame
    plain = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=synthetic_grid_dir, output=tmp_path / "a.fits"))
    run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=synthetic_grid_dir, output=tmp_path / "b.fits",
                                           template_misfit=lambda w: np.full(np.shape(w), 0.02)))
    assert run.result.summary["error_budget"]["misfit_source"] == "caller's template_misfit"
    a, b = plain.result.combined_vector, run.result.combined_vector
    ok = ~a.mask & ~b.mask
    added = (b.cal_variance.value[ok] - a.cal_variance.value[ok]) / b.cal_factor.value[ok] ** 2
    np.testing.assert_allclose(added, 0.02**2, rtol=0.05)


@pytest.mark.parametrize("options, match", [
    ({"form": "spline"}, "form"), ({"knot_spacing": "wide"}, "knot_spacing"),
    ({"knot_spacing": -100}, "knot_spacing"), ({"mag_floor": -0.01}, "mag_floor"),
    ({"zero_point_sigma": np.nan}, "zero_point_sigma"),
])
def test_bad_options_are_refused(options, match):
    with pytest.raises(InputDataError, match=match):
        FluxcalConfig(**options)


def test_engine_defaults():
    options = EngineOptions()
    assert options.knot_spacing == "auto" and options.template_misfit is None and options.mag_floor == 0.005
    assert options.zero_point_sigma == 0.005
