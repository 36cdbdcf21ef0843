"""Template corrections learned from CALSPEC standards (issue 16)."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from kspec_fluxcal.calspec_correction import CK04_TRAINING_FILES, derive_template_correction, leave_one_star_out
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

USABLE = tuple(name.split("_stis")[0] for name in CK04_TRAINING_FILES)
"""The 17 CALSPEC stars the shipped ck04 correction is learned from (all inside the grid)."""
FRAME_STARS = ("hd111980_stis_006.fits.gz", "hd209458_stisnic_008.fits.gz", "hd38949_stis_007.fits.gz",
               "p177d_stisnic_010.fits.gz")
"""Standards of the calibrated test frames: an F7 dwarf at [M/H] ≈ −0.7 and three solar G dwarfs."""


def _named(calspec_dir, names):
    """The named CALSPEC files of ``calspec_dir`` (tests never glob: more data there must change nothing)."""
    return [calspec_dir / name for name in names]


def _toy(name="toy", kind="ck04models"):
    wave = np.array([4000.0, 5000.0, 6000.0, 7000.0])
    return TemplateCorrection(wave, [1.05, 1.0, 0.98, 1.0], [0.03, 0.01, 0.005, 0.002],
                              meta={"name": name, "library_kind": kind}, curves={"star_a": [1.0, 1.1, 0.9, 1.0]})


def _kernel_toy():
    """A [M/H]-dependent correction of two training stars (curves of opposite sign in the blue)."""
    wave = np.array([4000.0, 5000.0, 6000.0, 7000.0])
    curves = {"poor": np.array([1.03, 1.0, 0.99, 1.0]), "rich": np.array([0.97, 1.0, 1.01, 1.0])}
    model = {"kind": "feh-kernel", "bandwidth_dex": 0.3, "training": ["poor", "rich"], "feh": [-1.0, 0.0],
             "teff": [6000.0, 6200.0], "domain": {"teff": [5750.0, 6450.0], "feh": [-1.25, 0.25]}}
    return TemplateCorrection(wave, [1.0, 1.0, 1.0, 1.0], [0.02, 0.01, 0.005, 0.003],
                              meta={"name": "kern", "library_kind": "ck04models", "model": model}, curves=curves)


def _shrunk_mean(curves, w, shrink):
    """Weighted mean of ``curves``; with ``shrink`` each wavelength's departure from 1 times d²/(d² + s²/n_eff)."""
    mean = sum(wi * c for wi, c in zip(w, curves)) / sum(w)
    if not shrink:
        return mean
    n_eff = sum(w) ** 2 / sum(wi**2 for wi in w)
    out = np.ones_like(mean)
    for k in range(mean.size):
        d = mean[k] - 1.0
        column = [c[k] for c in curves]
        s2 = sum((x - np.mean(column)) ** 2 for x in column) / (len(column) - 1)
        out[k] = 1.0 + d**3 / (d**2 + s2 / n_eff) if d != 0 else 1.0
    return out


def _kernel_mean(corr, feh):
    """What a template at ``feh`` receives, computed here from the file's own numbers."""
    model = corr.meta["model"]
    w = [np.exp(-0.5 * ((feh - f) / model["bandwidth_dex"]) ** 2) for f in model["feh"]]
    return _shrunk_mean([corr.curves[n] for n in model["training"]], w, model.get("shrinkage", False))


# ---------------------------------------------------------------------------
# the correction object


def test_shrinkage_keeps_what_the_stars_agree_on():
    """Agreeing stars: their mean; disagreeing: half way to 1 when the mean's departure equals its noise."""
    wave = np.array([4000.0, 5000.0, 6000.0])
    curves = {"a": np.array([1.03, 1.04, 1.02]), "b": np.array([1.03, 1.00, 0.98])}
    model = {"kind": "feh-kernel", "bandwidth_dex": 0.3, "training": ["a", "b"], "feh": [0.0, 0.0],
             "teff": [6000.0, 6100.0], "domain": {"teff": [5750.0, 6350.0], "feh": [-0.25, 0.25]}}
    meta = {"name": "shrunk", "library_kind": "ck04models"}
    plain = TemplateCorrection(wave, [1.0] * 3, [0.01] * 3, meta={**meta, "model": model}, curves=curves)
    shrunk = TemplateCorrection(wave, [1.0] * 3, [0.01] * 3, meta={**meta, "model": {**model, "shrinkage": True}},
                                curves=curves)
    np.testing.assert_allclose(plain.factor_for(wave, 6000.0, 0.0), [1.03, 1.02, 1.0], rtol=1e-12)
    # mean departure 0.02 with s²/n = 0.0008/2: weight 0.0004/(0.0004 + 0.0004) = 1/2
    np.testing.assert_allclose(shrunk.factor_for(wave, 6000.0, 0.0), [1.03, 1.01, 1.0], rtol=1e-12)
    np.testing.assert_allclose(shrunk.factor_for(wave, 6000.0, 0.0), _kernel_mean(shrunk, 0.0), rtol=1e-12)
    assert shrunk.fingerprint != plain.fingerprint


def test_kernel_correction_depends_on_feh_and_stops_at_its_domain(tmp_path):
    corr = _kernel_toy()
    wave = corr.wavelength.value
    np.testing.assert_allclose(corr.factor_for(wave, 6000.0, -0.5), _kernel_mean(corr, -0.5), rtol=1e-12)
    # near a training star the factor approaches its curve; midway the two cancel
    blue = [4000.0]
    assert abs(corr.factor_for(blue, 6000.0, -1.0)[0] - 1.03) < abs(corr.factor_for(blue, 6000.0, 0.0)[0] - 1.03)
    np.testing.assert_allclose(corr.factor_for(wave, 6000.0, -0.5), 1.0, atol=1e-12)
    for teff, feh in ((5500.0, 0.0), (6000.0, 0.5), (7000.0, -0.5)):  # outside: uncorrected
        assert not corr.covers(teff, feh)
        np.testing.assert_array_equal(corr.factor_for(wave, teff, feh), 1.0)
    assert corr.covers(6000.0, 0.25) and corr.covers(5750.0, -1.25)
    corr.write(tmp_path / "k.ecsv")
    back = TemplateCorrection.read(tmp_path / "k.ecsv")
    assert back.fingerprint == corr.fingerprint
    np.testing.assert_array_equal(back.factor_for(wave, 6100.0, -0.3), corr.factor_for(wave, 6100.0, -0.3))
    # the model is part of the fingerprint (caches of corrected grids follow it)
    other = _kernel_toy()
    other.meta["model"]["bandwidth_dex"] = 0.5
    assert TemplateCorrection(wave, other.factor, other.sigma, other.meta, other.curves).fingerprint != corr.fingerprint


@pytest.mark.parametrize(
    ("change", "match"),
    [({"kind": "spline"}, "unknown template correction model"),
     ({"training": ["poor", "absent"]}, "missing curves: absent"),
     ({"bandwidth_dex": 0.0}, "bandwidth_dex > 0")],
)
def test_bad_kernel_models_are_refused(change, match):
    toy = _kernel_toy()
    with pytest.raises(InputDataError, match=match):
        TemplateCorrection(toy.wavelength, toy.factor, toy.sigma, {**toy.meta, "model": {**toy.model, **change}},
                           toy.curves)


def test_misfit_term_uses_the_floor_for_standards_outside_the_domain():
    corr = _kernel_toy()
    wave = np.linspace(4000.0, 7000.0, 7)

    def floor(w):
        return np.full(np.shape(w), 0.015)

    inside, n_in = corr.misfit_for_standards([(6000.0, -0.2), (6100.0, -0.8)], floor)
    assert n_in == 2
    np.testing.assert_allclose(inside(wave), np.interp(wave, corr.wavelength.value, corr.sigma), rtol=1e-12)
    mixed, n_in = corr.misfit_for_standards([(6000.0, -0.2), (5200.0, 0.0)], floor)
    assert n_in == 1
    np.testing.assert_allclose(mixed(wave), np.sqrt((corr.fractional_sigma(wave) ** 2 + 0.015**2) / 2), rtol=1e-12)
    outside, n_in = corr.misfit_for_standards([(5200.0, 0.0)], floor)
    assert n_in == 0
    np.testing.assert_allclose(outside(wave), 0.015)



def _four_star_toy():
    """Two metal-poor and two solar training stars, with leave-one-out residuals (so σ depends on [M/H])."""
    wave = np.array([4000.0, 5000.0, 6000.0, 7000.0])
    curves = {"p1": np.array([1.04, 1.0, 0.99, 1.0]), "p2": np.array([1.02, 1.01, 0.99, 1.0]),
              "s1": np.array([0.96, 1.0, 1.01, 1.0]), "s2": np.array([0.99, 0.995, 1.01, 1.0])}
    residuals = {"p1": np.array([0.02, -0.01, 0.0, 0.002]), "p2": np.array([-0.025, 0.012, 0.001, -0.002]),
                 "s1": np.array([-0.03, 0.004, 0.0, 0.003]), "s2": np.array([0.028, -0.006, 0.001, -0.002])}
    model = {"kind": "feh-kernel", "bandwidth_dex": 0.3, "training": list(curves), "feh": [-1.0, -1.0, 0.0, 0.0],
             "teff": [6000.0, 6100.0, 6200.0, 5900.0], "domain": {"teff": [5650.0, 6450.0], "feh": [-1.25, 0.25]},
             "sigma_floor": 0.002}
    return TemplateCorrection(wave, [1.0] * 4, [0.02, 0.01, 0.005, 0.003],
                              meta={"name": "four", "library_kind": "ck04models", "model": model}, curves=curves,
                              residuals=residuals)


def _parts_here(corr, feh):
    """(shared², own²) of a standard at ``feh``, from the file's numbers: own² the kernel-weighted scatter of the
    curves about their weighted mean (÷ (1 − Σŵ²), at least ½), at most the leave-one-out mean square."""
    model = corr.meta["model"]
    w = np.array([np.exp(-0.5 * ((feh - f) / model["bandwidth_dex"]) ** 2) for f in model["feh"]])
    w = w / w.sum()
    curves = [corr.curves[n] for n in model["training"]]
    mean = sum(wi * c for wi, c in zip(w, curves))
    scatter = sum(wi * (c / mean - 1.0) ** 2 for wi, c in zip(w, curves)) / max(1.0 - np.sum(w**2), 0.5)
    loo2 = np.maximum(sum(wi * corr.residuals[n] ** 2 for wi, n in zip(w, model["training"])),
                      model["sigma_floor"] ** 2)
    own2 = np.minimum(scatter, loo2)
    return loo2 - own2, own2, w


def test_misfit_term_averages_the_standards_own_parts_and_keeps_the_shared_ones():
    """One standard: its σ; N alike: shared² + own²/N; two unlike (disjoint kernels): each part over N²."""
    corr = _four_star_toy()
    wave = corr.wavelength.value
    shared2, own2, _ = _parts_here(corr, 0.0)
    assert np.all(own2[:3] > 0) and np.any(shared2 > 0)
    np.testing.assert_allclose(sum(p**2 for p in corr.sigma_parts(wave, 6000.0, 0.0)), shared2 + own2, rtol=1e-9)
    one, _ = corr.misfit_for_standards([(6000.0, 0.0)])
    np.testing.assert_allclose(one(wave), corr.sigma_for(wave, 6000.0, 0.0), rtol=1e-9)
    np.testing.assert_allclose(one(wave), np.sqrt(shared2 + own2), rtol=1e-9)
    alike, _ = corr.misfit_for_standards([(6000.0, 0.0)] * 4)
    np.testing.assert_allclose(alike(wave), np.sqrt(shared2 + own2 / 4), rtol=1e-9)
    assert np.all(alike(wave)[:3] < one(wave)[:3])
    # stars of -1 and 0 dex see the training stars through nearly disjoint kernels (ρ = e^-5.6 here)
    shared_p, own_p, w_p = _parts_here(corr, -1.0)
    _, _, w_s = _parts_here(corr, 0.0)
    rho = w_p @ w_s / np.sqrt((w_p @ w_p) * (w_s @ w_s))
    unlike, _ = corr.misfit_for_standards([(6000.0, -1.0), (6000.0, 0.0)])
    expected = (shared_p + shared2 + 2 * rho * np.sqrt(shared_p * shared2) + own_p + own2) / 4
    np.testing.assert_allclose(unlike(wave), np.sqrt(expected), rtol=1e-9)
    # a standard outside the domain brings the library floor, shared by all such standards
    mixed, n_in = corr.misfit_for_standards([(6000.0, 0.0), (5200.0, 0.0), (5100.0, 0.0)],
                                            lambda w: np.full(np.shape(w), 0.015))
    assert n_in == 1
    np.testing.assert_allclose(mixed(wave), np.sqrt((shared2 + own2) / 9 + (2 / 3) ** 2 * 0.015**2), rtol=1e-9)



def test_misfit_term_of_a_weighted_mean_counts_each_standards_weight():
    """With the combination's weights w: Σ ρ w_j w_k s_j s_k + Σ w_j² own_j²; equal weights give the 1/N rule."""
    corr = _four_star_toy()
    wave = corr.wavelength.value
    standards = [(6000.0, -1.0), (6000.0, 0.0), (6100.0, 0.0)]
    equal, _ = corr.misfit_for_standards(standards)
    same, _ = corr.misfit_for_standards(standards, weights=(wave, np.full((3, wave.size), 1 / 3)))
    np.testing.assert_allclose(same(wave), equal(wave), rtol=1e-9)
    w = np.array([[0.6, 0.5, 0.4, 0.3], [0.2, 0.25, 0.3, 0.35], [0.2, 0.25, 0.3, 0.35]])
    weighted, _ = corr.misfit_for_standards(standards, weights=(wave, w))
    parts = [_parts_here(corr, f) for _, f in standards]
    shared = [np.sqrt(p[0]) for p in parts]
    kernels = [p[2] for p in parts]
    expected = sum(w[j] ** 2 * parts[j][1] for j in range(3))
    for j in range(3):
        for k in range(3):
            rho = kernels[j] @ kernels[k] / np.sqrt((kernels[j] @ kernels[j]) * (kernels[k] @ kernels[k]))
            expected = expected + rho * w[j] * w[k] * shared[j] * shared[k]
    np.testing.assert_allclose(weighted(wave), np.sqrt(expected), rtol=1e-9)


def test_combination_leans_on_the_standards_with_the_smaller_misfit():
    """Given each star's misfit σ, the weighted mean weighs 1/(noise² + σ²) and leaves the weights for the budget."""
    from kspec_fluxcal.combine import WEIGHT_KEY

    wave = np.linspace(4000.0, 7000.0, 40)
    blue = wave < 4500.0
    truth = 1.0 + 1e-5 * (wave - 5000.0)
    # two stars whose model is 0.5 % off in the blue (σ 0.6 %; within the plain per-pixel clip), three modelled
    # well there (σ 0.2 %); noise 0.2 %
    offsets = [np.where(blue, 0.005, 0.0)] * 2 + [np.zeros(wave.size)] * 3
    vectors = [CalibrationVector(wave * u.AA, truth * (1 + o) * u.one, np.full(wave.size, (0.002 * truth) ** 2) * u.one,
                                 meta={"star_name": f"s{i}", "teff": 6000.0, "feh": 0.0})
               for i, o in enumerate(offsets)]
    misfit = np.array([np.where(blue, 0.006, 0.002)] * 2 + [np.where(blue, 0.002, 0.002)] * 3)
    plain = combine_calibration_vectors(vectors, representation="pixel")
    weighted = combine_calibration_vectors(vectors, representation="pixel", star_misfit=misfit)
    assert all(v.meta["used"] for v in weighted.per_star_vectors)
    err_plain = plain.combined_vector.cal_factor.value / truth - 1
    err_weighted = weighted.combined_vector.cal_factor.value / truth - 1
    # the plain mean carries 2/5 of the 0.5 %; the weighted one 2·w_bad/(2·w_bad + 3·w_good) ≈ 1/8 of it
    assert np.all(np.abs(err_plain[blue] - np.median(err_plain[~blue])) > 0.0015)
    assert np.all(np.abs(err_weighted[blue] - np.median(err_weighted[~blue])) < 0.001)
    w = np.array([v.meta[WEIGHT_KEY] for v in weighted.per_star_vectors])
    np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=1e-12)
    expected = 1 / (0.002**2 + misfit**2)
    # (the noise of ln Cal is 0.2 % / (1 + offset): 1e-2)
    np.testing.assert_allclose(w[:, blue], (expected / expected.sum(axis=0))[:, blue], rtol=1e-2)
    assert all(WEIGHT_KEY not in v.meta for v in plain.per_star_vectors)


def _extrapolating_toy(growth=(0.01, 0.004, 0.001, 0.0005)):
    """`_four_star_toy` with an extrapolation term: training span Teff 5900–6200 K, [M/H] −1…0; unit 250 K, 0.25 dex."""
    toy = _four_star_toy()
    model = {**toy.model, "span": {"teff": [5900.0, 6200.0], "feh": [-1.0, 0.0]},
             "distance_unit": {"teff_K": 250.0, "feh_dex": 0.25}}
    return TemplateCorrection(toy.wavelength, toy.factor, toy.sigma, {**toy.meta, "model": model}, toy.curves,
                              toy.residuals, extrapolation=np.array(growth))


def test_misfit_grows_beyond_the_training_span():
    """Inside the span nothing changes; d margins beyond it σ² gains d² growth², shared by the stars out there.

    Stars beyond the span are held at its end for the kernel; outside the
    domain the same rule replaces the library floor (the growth was learned
    from stars held out that far). The expected values are computed here from
    the toy's numbers (`_parts_here`), not by the class.
    """
    corr = _extrapolating_toy()
    plain = _four_star_toy()
    wave = corr.wavelength.value
    growth = corr.extrapolation

    def floor(w):
        return np.full(np.shape(w), 0.015)

    for teff, feh in ((6000.0, 0.0), (6100.0, -0.5), (5900.0, -1.0)):
        assert corr.distance(teff, feh) == 0.0
        np.testing.assert_allclose(corr.sigma_for(wave, teff, feh), plain.sigma_for(wave, teff, feh), rtol=1e-12)
    shared2, own2, _ = _parts_here(corr, 0.0)
    # [M/H] +0.5: two margins beyond the span, inside the domain's Teff
    assert corr.distance(6000.0, 0.5) == pytest.approx(2.0)
    np.testing.assert_allclose(corr.sigma_for(wave, 6000.0, 0.5) ** 2, shared2 + own2 + 4 * growth**2, rtol=1e-9)
    alike, n_in = corr.misfit_for_standards([(6000.0, 0.5)] * 4, floor)
    assert n_in == 0
    np.testing.assert_allclose(alike(wave) ** 2, shared2 + 4 * growth**2 + own2 / 4, rtol=1e-9)
    # 5200 K and [M/H] +0.5: √(2.8² + 2²) margins; no floor, whatever the floor
    d = np.hypot(700.0 / 250.0, 2.0)
    assert corr.distance(5200.0, 0.5) == pytest.approx(d)
    far, n_in = corr.misfit_for_standards([(5200.0, 0.5)], floor)
    np.testing.assert_allclose(far(wave) ** 2, shared2 + own2 + d**2 * growth**2, rtol=1e-9)
    # without the term the old rule holds: the floor for a standard outside the domain
    old, _ = plain.misfit_for_standards([(5200.0, 0.5)], floor)
    np.testing.assert_allclose(old(wave), 0.015)


def test_extrapolation_term_round_trips_and_is_checked(tmp_path):
    corr = _extrapolating_toy()
    corr.write(tmp_path / "x.ecsv")
    back = TemplateCorrection.read(tmp_path / "x.ecsv")
    np.testing.assert_array_equal(back.extrapolation, corr.extrapolation)
    assert back.fingerprint == corr.fingerprint != _four_star_toy().fingerprint
    with pytest.raises(InputDataError, match="extrapolation must be finite"):
        _extrapolating_toy(growth=(0.01, -0.1, 0.0, 0.0))
    toy = _four_star_toy()
    with pytest.raises(InputDataError, match="needs model\\['span'\\]"):
        TemplateCorrection(toy.wavelength, toy.factor, toy.sigma, toy.meta, toy.curves, toy.residuals,
                           extrapolation=np.zeros(4))


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
    assert sorted(s["file"] for s in corr.meta["stars"]) == sorted(CK04_TRAINING_FILES)  # exactly these files
    assert all(s["used"] for s in corr.meta["stars"])  # ck04 reaches [M/H] = -2.5: every star is inside
    assert corr.meta["command"].startswith("kspec-fluxcal derive-correction --calspec ")
    assert all(name in corr.meta["command"] for name in CK04_TRAINING_FILES)
    assert corr.meta["fit"]["fwhm_A"] == 30.0 and corr.meta["date"]
    assert 0.9 < corr.factor.min() and corr.factor.max() < 1.1
    assert np.all(corr.sigma >= 0.002)
    # the model: a kernel in [M/H] over the used stars, inside their span widened by the recorded margin
    model, fit = corr.model, corr.meta["fit"]
    assert model["kind"] == "feh-kernel" and model["training"] == corr.meta["used_stars"]
    assert model["bandwidth_dex"] in fit["bandwidths_dex"]
    stars = {s["name"]: s for s in corr.meta["stars"]}
    fehs = [stars[n]["feh"] for n in model["training"]]
    teffs = [stars[n]["teff"] for n in model["training"]]
    margin = fit["domain_margin"]
    np.testing.assert_allclose(model["domain"]["feh"], [min(fehs) - margin["feh_dex"], max(fehs) + margin["feh_dex"]])
    np.testing.assert_allclose(model["domain"]["teff"], [min(teffs) - margin["teff_K"], max(teffs) + margin["teff_K"]])


def _node_prediction(curves, fehs, teffs, h, margin, nodes, teff, feh, shrink):
    """What the library gives a star: each bracketing [M/H] node corrected by the kernel (1 outside), interpolated."""
    lo, hi = min(fehs) - margin["feh_dex"], max(fehs) + margin["feh_dex"]
    t_ok = min(teffs) - margin["teff_K"] <= teff <= max(teffs) + margin["teff_K"]
    f = min(max(feh, nodes[0]), nodes[-1])
    j = min(max(int(np.searchsorted(nodes, f, side="right")) - 1, 0), len(nodes) - 2)
    a = (f - nodes[j]) / (nodes[j + 1] - nodes[j])
    out = 0.0
    for node, weight in ((nodes[j], 1 - a), (nodes[j + 1], a)):
        if t_ok and lo <= node <= hi:
            k = np.exp(-0.5 * ((np.array(fehs) - node) / h) ** 2)
            out = out + weight * _shrunk_mean(curves, k, shrink)
        else:
            out = out + weight
    return out


def test_shipped_sigma_is_the_leave_one_star_out_scatter(ck04_dir):
    """σ for a new star: the rms over the used stars of their curve over the correction derived without them."""
    corr = TemplateCorrection.read(shipped_correction_path("ck04models"))
    wave = corr.wavelength.value
    fit, model = corr.meta["fit"], corr.model
    stars = {s["name"]: s for s in corr.meta["stars"]}
    names = model["training"]
    nodes = np.unique(np.asarray(TemplateLibrary(ck04_dir, correction=None).entries["feh"], float))
    norm = (wave >= fit["normalise_range_A"][0]) & (wave <= fit["normalise_range_A"][1])
    resid = []
    for name in names:
        rest = [n for n in names if n != name]
        pred = _node_prediction([corr.curves[n] for n in rest], [stars[n]["feh"] for n in rest],
                                [stars[n]["teff"] for n in rest], model["bandwidth_dex"], fit["domain_margin"],
                                nodes, stars[name]["teff"], stars[name]["feh"], model.get("shrinkage", False))
        ratio = corr.curves[name] / pred
        resid.append(ratio / np.median(ratio[norm]) - 1)
    expected = np.maximum(np.sqrt(np.mean(np.square(resid), axis=0)), 0.002)
    np.testing.assert_allclose(corr.sigma, expected, atol=2e-6)
    # metal-poor and solar-metallicity stars need corrections of opposite sign below 4100 Å (≈ +2 % and −3 %):
    # a held-out star between them (HD 111980, [M/H] ≈ −0.7) is predicted poorly there, and σ says so
    blue = (wave > 3800) & (wave < 4100)
    assert np.median(corr.sigma[blue]) > 0.01

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
    entries = raw.entries
    inside = int(np.flatnonzero((entries["teff"] == 6000) & (entries["feh"] == 0.0))[0])
    outside = int(np.flatnonzero((entries["teff"] == 5000) & (entries["feh"] == 0.0))[0])
    t_raw, t_cor = raw.load_template(inside), default.load_template(inside)
    expected = np.interp(t_raw.wavelength.value, shipped.wavelength.value, _kernel_mean(shipped, 0.0))
    assert np.ptp(expected) > 0.03
    np.testing.assert_allclose(t_cor.flux.value, t_raw.flux.value * expected, rtol=1e-6)
    np.testing.assert_allclose(t_cor.continuum.value, t_raw.continuum.value * expected, rtol=1e-6)
    # a template outside the correction's domain (Teff 5000 K) is as the file gives it
    np.testing.assert_array_equal(default.load_template(outside).flux, raw.load_template(outside).flux)
    # the raw grid is still raw after the corrected one was cached (no shared cache entry)
    np.testing.assert_array_equal(TemplateLibrary(ck04_dir, correction=None).load_template(inside).flux, t_raw.flux)
    target = np.linspace(4000, 9000, 300)
    solar = dict(teff_range=(6000, 6250), logg_range=(4.5, 4.5), feh_range=(0.0, 0.0))
    g_raw = PreparedGrid.build(raw, target, 30.0, entries=raw.query(**solar), bands=("ps1_g",))
    g_cor = PreparedGrid.build(default, target, 30.0, entries=default.query(**solar), bands=("ps1_g",))
    assert g_raw.key != g_cor.key
    factor = np.interp(target, shipped.wavelength.value, _kernel_mean(shipped, 0.0))
    np.testing.assert_allclose(g_cor.flux / g_raw.flux, np.broadcast_to(factor, g_raw.flux.shape), rtol=1e-3)
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
    files = [str(p) for p in _named(calspec_dir, CK04_TRAINING_FILES)]
    assert main(["derive-correction", "--calspec", *files, "--templates", str(ck04_dir), "-o", str(out),
                 "--quiet"]) == 0
    made = TemplateCorrection.read(out)
    shipped = TemplateCorrection.read(shipped_correction_path("ck04models"))
    np.testing.assert_allclose(made.wavelength.value, shipped.wavelength.value, rtol=1e-9)
    np.testing.assert_allclose(made.factor, shipped.factor, atol=2e-6)
    np.testing.assert_allclose(made.sigma, shipped.sigma, atol=2e-6)
    np.testing.assert_allclose(made.extrapolation, shipped.extrapolation, atol=2e-6)
    assert made.meta["used_stars"] == shipped.meta["used_stars"]
    assert made.meta["fit"] == shipped.meta["fit"]
    assert made.model == shipped.model and made.fingerprint == shipped.fingerprint


def test_derivation_needs_two_stars_inside_the_grid(calspec_dir, ck04_dir):
    files = _named(calspec_dir, FRAME_STARS[1:3])
    with pytest.raises(InputDataError, match="only 1 usable CALSPEC star"):
        derive_template_correction(files, ck04_dir, exclude=["hd38949"])


def test_derivation_on_a_grid_of_one_metallicity(calspec_dir, bosz_dir):
    """The one BOSZ model of the shared data: every star fitted at its single node, the correction their mean there."""
    corr = derive_template_correction(_named(calspec_dir, FRAME_STARS[1:3]), bosz_dir)
    assert sorted(corr.model["training"]) == ["hd209458", "hd38949"]
    assert np.all(np.isfinite(corr.sigma)) and corr.covers(6000.0, 0.0)
    wave = corr.wavelength.value
    np.testing.assert_allclose(corr.factor_for(wave, 6000.0, 0.0), _kernel_mean(corr, 0.0), rtol=1e-9)


def test_command_line_refuses_an_empty_calspec_folder(ck04_dir, tmp_path, capsys):
    assert main(["derive-correction", "--calspec", str(tmp_path), "--templates", str(ck04_dir), "-o",
                 str(tmp_path / "c.ecsv")]) == 2  # bad input
    assert "neither a CALSPEC FITS file nor a folder holding one" in capsys.readouterr().err
    assert not (tmp_path / "c.ecsv").exists()


@pytest.mark.parametrize("option", ["auto", "none", "file"])
def test_calibrate_records_the_correction(calspec_dir, ck04_dir, tmp_path, option):
    files = _named(calspec_dir, FRAME_STARS)
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
        summary = result.summary["template_correction"]
        assert summary["model"] == "feh-kernel" and summary["domain"]["feh"][0] < -0.7
        # the four stars lie inside the domain: the misfit term is the correction's own σ
        assert summary["standards_outside_domain"] == []
        assert result.summary["error_budget"]["misfit_source"] == label


# ---------------------------------------------------------------------------
# guarding against overfitting


HELD_OUT = ("hd209458", "hd38949", "p177d", "hd111980", "bd_17d4708", "hd200654")
"""Stars held out in turn by the leave-one-star-out test: three solar G dwarfs, the F7 dwarf between them and the
metal-poor stars ([M/H] ≈ −0.7), a metal-poor sdF8 and the coolest, most metal-poor star (outside the others' Teff
span when held out, so uncorrected)."""


@pytest.mark.slow
def test_leave_one_star_out(calspec_dir, ck04_dir):
    """No held-out star is made worse than without a correction, and the held-out pulls are honest.

    The correction is learned from the 16 other training stars and applied to
    one-standard frames of the held-out star (two noise realisations).
    "Worse" allows for the noise of two realisations: 0.2 % on the mean 95th
    percentile, 0.15 % on the mean median.
    """
    table, corrections = leave_one_star_out(_named(calspec_dir, CK04_TRAINING_FILES), ck04_dir, seeds=(1, 2),
                                            held_out=HELD_OUT)
    assert set(corrections) == set(HELD_OUT)
    assert all(name not in c.model["training"] for name, c in corrections.items())
    improved = 0
    for star in HELD_OUT:
        rows = table[table["star"] == star]
        before, after = rows[rows["case"] == "none"], rows[rows["case"] == "leave-one-out"]
        assert np.mean(after["p95_abs_error"]) <= np.mean(before["p95_abs_error"]) + 0.002, star
        assert np.mean(after["median_abs_error"]) <= np.mean(before["median_abs_error"]) + 0.0015, star
        assert np.max(after["p95_abs_error"]) <= 0.025, star
        improved += np.mean(after["p95_abs_error"]) < np.mean(before["p95_abs_error"]) - 0.002
    assert improved >= 3  # the correction does something: most held-out stars gain clearly
    loo = table[table["case"] == "leave-one-out"]
    pooled = np.sqrt(np.mean(np.square(loo["pull_rms"])))
    assert 0.65 <= pooled <= 1.3  # looser than the benchmark's target 0.8–1.25 (measured: 0.76 over all 17 stars)


def test_correction_improves_an_in_sample_star_frame(calspec_dir, ck04_dir):
    """One-standard frames of HD 209458: the shipped correction lowers the p95 error and the pulls.

    `calspec_frame_accuracy` silences only the one-standard warning: any
    other package warning would fail here.
    """
    from kspec_fluxcal.calspec_correction import calspec_frame_accuracy

    files = _named(calspec_dir, ["hd209458_stisnic_008.fits.gz"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", KspecFluxcalWarning)
        before = calspec_frame_accuracy(files, ck04_dir, "none", seed=5)
        after = calspec_frame_accuracy(files, ck04_dir, "auto", seed=5)
    assert after["n_stars_used"] == 1 and after["n_pixels"] == before["n_pixels"] > 300
    assert after["p95_abs_error"] < before["p95_abs_error"]
    assert after["pull_rms"] < before["pull_rms"]
