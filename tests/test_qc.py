"""Tests of the QC figures and text summary: the figures must hold the data they claim to show."""

import numpy as np
import pytest
from astropy import units as u
from matplotlib.figure import Figure

from kspec_fluxcal import qc
from kspec_fluxcal.containers import FLAM, CalibrationVector, FluxCalibrationResult, make_spectrum
from kspec_fluxcal.exceptions import InputDataError

CAL_UNIT = u.erg / (u.AA * u.s * u.cm**2 * u.ct)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["HD 1001", "BD+20 2002", "SDSS J3003", "Gaia 4004"]
REASON = "photometric residual 0.15 mag > 0.05"


def _star_mask(wave, i):
    """A different run of bad pixels for each star."""
    mask = np.zeros(wave.size, dtype=bool)
    mask[40 + 30 * i : 50 + 30 * i] = True
    return mask


def _make_result(n_stars=4, rejected=(3,), smooth=True):
    """A combined vector and ``n_stars`` star vectors with known shapes, gray terms and masks."""
    rng = np.random.default_rng(42)
    wave = np.linspace(4000.0, 9000.0, 400)
    shape = 2e-17 * (1.0 + 0.5 * np.sin((wave - 4000.0) / 1500.0))
    comb_mask = np.zeros(wave.size, dtype=bool)
    comb_mask[:5] = True
    comb_mask[200:210] = True  # e.g. the A band
    combined = CalibrationVector(
        wavelength=wave * u.AA,
        cal_factor=(shape * (1 + 0.01 * rng.standard_normal(wave.size))) * CAL_UNIT,
        cal_variance=(0.01 * shape) ** 2 * CAL_UNIT**2,
        mask=comb_mask,
        smooth_factor=shape * CAL_UNIT if smooth else None,
        smooth_variance=(0.005 * shape) ** 2 * CAL_UNIT**2 if smooth else None,
        meta={"star_name": "combined"},
    )
    vectors, residuals, metrics = [], [], []
    for i in range(n_stars):
        used = i not in rejected
        gray = 1.0 + 0.3 * i
        tilt = 1.0 + (0.02 if used else 0.2) * (i + 1) * (wave - 6500.0) / 2500.0
        factor = gray * shape * tilt * (1 + 0.01 * rng.standard_normal(wave.size))
        mask = _star_mask(wave, i)
        meta = {
            "star_name": NAMES[i % len(NAMES)] + ("" if i < len(NAMES) else f"-{i}"),
            "fiber_id": 10 + 7 * i,
            "teff": 5750.0 + 250 * i,
            "logg": 4.5,
            "feh": -0.25 * i,
            "alpha_m": 0.0,
            "scale_factor": 1.2e-3 * gray,
            "band_residuals": {"ps1_z": 0.01 * i, "gaia_g": -0.005 * i, "ps1_g": 0.02 - 0.01 * i},
            "chi2": 1200.0 + 10 * i,
            "ndof": 1000,
            "rv_kms": -12.5 + 5 * i,
            "ebv": 0.02 * i,
            "used": used,
            "reject_reason": None if used else REASON,
        }
        if i == 1:
            del meta["band_residuals"]["ps1_z"]  # a missing band
        vectors.append(
            CalibrationVector(wave * u.AA, factor * CAL_UNIT, (0.01 * factor) ** 2 * CAL_UNIT**2, mask, meta=meta)
        )
        star_norm = factor / np.median(factor[~mask])
        comb_norm = shape / np.median(shape[~comb_mask])
        residuals.append((star_norm / comb_norm - 1.0) * u.one)
        metrics.append(dict(meta))
    summary = {
        "n_stars_used": n_stars - len(rejected),
        "n_stars_rejected": len(rejected),
        "rms_scatter": 0.0123,
        "wavelength_range": (wave[5] * u.AA, wave[-1] * u.AA),
        "per_star_metrics": metrics,
    }
    return FluxCalibrationResult(combined, vectors, residuals, summary)


@pytest.fixture
def result():
    return _make_result()


def _star_lines(ax):
    """The star lines of a panel (gid 'star:<index>'), in star order."""
    lines = [line for line in ax.get_lines() if (line.get_gid() or "").startswith("star:")]
    return sorted(lines, key=lambda line: int(line.get_gid().split(":")[1]))


def _render(fig):
    """Draw with Agg (catches mathtext and layout errors) and return the figure."""
    assert isinstance(fig, Figure)
    fig.canvas.draw()
    return fig


def _expected_residual_pixels(res, star):
    """Residual of one star in percent, NaN where the star or the combined vector is masked."""
    expected = res.per_star_residuals[star].to_value(u.percent)
    return np.where(res.per_star_vectors[star].mask | res.combined_vector.mask, np.nan, expected)


def test_unit_label_renders_powers_in_order():
    assert qc._unit_label(CAL_UNIT) == "erg s$^{-1}$ cm$^{-2}$ Å$^{-1}$ ct$^{-1}$"
    assert qc._unit_label(FLAM) == "erg s$^{-1}$ cm$^{-2}$ Å$^{-1}$"
    assert qc._unit_label(u.Unit(1e-17 * FLAM)) == "10$^{-17}$ erg s$^{-1}$ cm$^{-2}$ Å$^{-1}$"
    assert qc._unit_label(u.one) == ""
    assert qc._axis_label("Flux", u.ct / u.s) == "Flux (ct s$^{-1}$)"


def test_summary_figure_holds_the_data(result):
    fig = _render(qc.plot_calibration_summary(result))
    ax_comb, ax_star, ax_res, ax_hist = fig.axes[:4]
    assert "3 standard stars used, 1 rejected" in fig.get_suptitle()
    assert "1.23 %" in fig.get_suptitle()

    # combined: smooth line with masked pixels NaN, scaled by the power of ten in the label
    comb = result.combined_vector
    line = next(ln for ln in ax_comb.get_lines() if ln.get_gid() == "combined")
    assert "10$^{-17}$" in ax_comb.get_ylabel() and "ct$^{-1}$" in ax_comb.get_ylabel()
    expected = np.where(comb.mask, np.nan, comb.smooth_factor.value * 1e17)
    np.testing.assert_allclose(line.get_ydata(), expected, equal_nan=True)
    assert np.all(np.isnan(line.get_ydata()[comb.mask]))
    assert any(ln.get_gid() == "combined-pixel" for ln in ax_comb.get_lines())
    assert "Å" in ax_comb.get_xlabel()

    # per-star: one line per star, each its vector over its median, masked pixels NaN
    lines = _star_lines(ax_star)
    assert len(lines) == len(ax_star.get_lines()) == len(result.per_star_vectors)
    for vec, ln in zip(result.per_star_vectors, lines, strict=True):
        values = vec.cal_factor.value
        expected = np.where(vec.mask, np.nan, values / np.median(values[~vec.mask]))
        np.testing.assert_allclose(ln.get_ydata(), expected, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(ln.get_xdata(), vec.wavelength.value)
    rejected = lines[3]
    assert rejected.get_linestyle() == "--"
    assert "rejected" in rejected.get_label() and REASON in rejected.get_label()

    # residuals in percent
    for i, ln in enumerate(_star_lines(ax_res)):
        np.testing.assert_allclose(ln.get_ydata(), _expected_residual_pixels(result, i), equal_nan=True)
    assert "%" in ax_res.get_ylabel()

    # histogram: used stars' finite residual pixels, all counted
    n_finite = sum(np.isfinite(_expected_residual_pixels(result, i)).sum() for i in range(3))
    assert sum(p.get_height() for p in ax_hist.patches) == n_finite
    assert any("rms scatter (summary) = 1.23 %" in t.get_text() for t in ax_hist.texts)

    # the figure legend names the rejected star and its reason
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(legend_texts) == 4
    assert any(REASON in t for t in legend_texts)


def test_summary_without_smooth_form_and_into_given_figure():
    res = _make_result(smooth=False)
    fig = Figure()
    assert qc.plot_calibration_summary(res, fig=fig) is fig
    _render(fig)
    line = next(ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "combined")
    comb = res.combined_vector
    np.testing.assert_allclose(
        line.get_ydata(), np.where(comb.mask, np.nan, comb.cal_factor.value * 1e17), equal_nan=True
    )
    with pytest.raises(InputDataError, match="empty"):
        qc.plot_calibration_summary(res, fig=fig)


def test_per_star_vectors_unnormalised_in_units(result):
    fig = _render(qc.plot_per_star_vectors(result, normalize=False))
    ax = fig.axes[0]
    assert "10$^{-17}$ erg s$^{-1}$ cm$^{-2}$ Å$^{-1}$ ct$^{-1}$" in ax.get_ylabel()
    for vec, ln in zip(result.per_star_vectors, _star_lines(ax), strict=True):
        expected = np.where(vec.mask, np.nan, vec.cal_factor.value)
        np.testing.assert_allclose(ln.get_ydata() * 1e-17, expected, equal_nan=True)
    assert len(ax.get_legend().get_texts()) == 4


def test_per_star_vectors_into_given_axes(result):
    fig = Figure()
    ax = fig.add_subplot()
    assert qc.plot_per_star_vectors(result, ax=ax) is fig
    assert len(_star_lines(ax)) == 4


def test_residual_figure(result):
    fig = _render(qc.plot_calibration_residuals(result))
    ax = fig.axes[0]
    lines = _star_lines(ax)
    assert len(lines) == 4
    for i, ln in enumerate(lines):
        np.testing.assert_allclose(ln.get_ydata(), _expected_residual_pixels(result, i), equal_nan=True)
    assert lines[3].get_linestyle() == "--"
    assert "%" in ax.get_ylabel() and "Å" in ax.get_xlabel()
    assert any(REASON in t.get_text() for t in ax.get_legend().get_texts())


def test_many_stars_collapse_the_legend():
    res = _make_result(n_stars=15, rejected=(3, 9))
    fig = _render(qc.plot_calibration_residuals(res))
    ax = fig.axes[0]
    assert len(_star_lines(ax)) == 15
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[0] == "13 used stars"
    assert len(texts) == 3 and all("rejected" in t for t in texts[1:])


def test_photometric_residuals(result):
    fig = _render(qc.plot_photometric_residuals(result))
    ax = fig.axes[0]
    bands = [t.get_text() for t in ax.get_xticklabels()]
    assert bands == ["ps1_g", "gaia_g", "ps1_z"]  # by wavelength, not by dict order
    lines = _star_lines(ax)
    assert len(lines) == 4
    for vec, ln in zip(result.per_star_vectors, lines, strict=True):
        expected = [vec.meta["band_residuals"].get(b, np.nan) for b in bands]
        np.testing.assert_allclose(ln.get_ydata(), expected, equal_nan=True)
    assert np.isnan(lines[1].get_ydata()[2])  # star 1 has no ps1_z
    assert lines[3].get_linestyle() == "--"
    assert "mag" in ax.get_ylabel()
    (band,) = ax.patches
    assert np.isclose(band.get_y(), -0.02) and np.isclose(band.get_y() + band.get_height(), 0.02)


def test_template_match_from_arrays_and_spectra():
    wave = np.linspace(5000.0, 5200.0, 300)
    model = 1.0 - 0.5 * np.exp(-0.5 * ((wave - 5100.0) / 1.5) ** 2)
    observed = model + 0.01 * np.random.default_rng(1).standard_normal(wave.size)
    mask = np.zeros(wave.size, dtype=bool)
    mask[10:20] = True
    params = {"teff": 6250.0, "logg": 4.0, "feh": -0.5, "rv_kms": 12.3}
    fig = _render(
        qc.plot_template_match(
            wave * u.AA, observed, model, variance=np.full(wave.size, 1e-4), mask=mask,
            title="HD 1001", params=params,
        )
    )  # fmt: skip
    ax_top, ax_res = fig.axes
    assert ax_top.get_shared_x_axes().joined(ax_top, ax_res)
    obs_line = next(ln for ln in ax_top.get_lines() if ln.get_gid() == "observed")
    assert np.all(np.isnan(obs_line.get_ydata()[mask]))
    np.testing.assert_allclose(obs_line.get_ydata()[~mask], observed[~mask])
    res_line = next(ln for ln in ax_res.get_lines() if ln.get_gid() == "residual")
    np.testing.assert_allclose(res_line.get_ydata()[~mask], 100 * (observed / model - 1)[~mask])
    assert "%" in ax_res.get_ylabel()
    title = ax_top.get_title()
    assert "HD 1001" in title and "6250 K" in title and "log g = 4.00" in title
    assert "[M/H] = -0.50" in title and "RV = +12.3 km/s" in title
    assert ax_top.get_ylabel() == "Continuum-normalised flux"
    assert any("χ²/N" in t.get_text() for t in ax_res.texts)

    # Spectrum inputs: variance and mask come from the observed spectrum, model on another grid
    obs_spec = make_spectrum(wave, observed * 2e-15, np.full(wave.size, 4e-34), mask, flux_unit=FLAM)
    fine = np.linspace(4990.0, 5210.0, 2000)
    model_fine = 1.0 - 0.5 * np.exp(-0.5 * ((fine - 5100.0) / 1.5) ** 2)
    model_spec = make_spectrum(fine, model_fine * 2e-15, flux_unit=FLAM)
    fig = _render(qc.plot_template_match(None, obs_spec, model_spec))
    ax_top = fig.axes[0]
    assert "10$^{-15}$ erg s$^{-1}$ cm$^{-2}$ Å$^{-1}$" in ax_top.get_ylabel()
    mod_line = next(ln for ln in ax_top.get_lines() if ln.get_gid() == "model")
    np.testing.assert_allclose(mod_line.get_ydata(), 2 * np.interp(wave, fine, model_fine), rtol=1e-9)
    obs_line = next(ln for ln in ax_top.get_lines() if ln.get_gid() == "observed")
    assert np.all(np.isnan(obs_line.get_ydata()[mask]))

    with pytest.raises(InputDataError, match="does not convert"):
        qc.plot_template_match(wave, observed * u.ct, model * u.m)


def test_calibrated_spectrum_gaps_and_truth():
    wave = np.linspace(3600.0, 9800.0, 500)
    truth = 3e-16 * (wave / 5000.0) ** -2
    flux = truth * (1 + 0.02 * np.random.default_rng(3).standard_normal(wave.size))
    flux[100:120] = np.nan  # undefined calibration
    mask = np.zeros(wave.size, dtype=bool)
    mask[300:310] = True
    spec = make_spectrum(wave, flux, (0.02 * truth) ** 2, mask, flux_unit=FLAM)
    fig = _render(qc.plot_calibrated_spectrum(spec, truth=truth * FLAM, title="fiber 42"))
    ax = fig.axes[0]
    assert ax.get_title() == "fiber 42"
    assert ax.get_ylabel() == "Flux density (10$^{-16}$ erg s$^{-1}$ cm$^{-2}$ Å$^{-1}$)"
    line = next(ln for ln in ax.get_lines() if ln.get_gid() == "calibrated")
    y = line.get_ydata()
    assert np.all(np.isnan(y[100:120])) and np.all(np.isnan(y[300:310]))
    good = np.isfinite(flux) & ~mask
    np.testing.assert_allclose(y[good] * 1e-16, flux[good])
    truth_line = next(ln for ln in ax.get_lines() if ln.get_gid() == "truth")
    np.testing.assert_allclose(truth_line.get_ydata() * 1e-16, truth)

    with pytest.raises(InputDataError, match="not a flux density"):
        qc.plot_calibrated_spectrum(make_spectrum(wave, np.ones(wave.size), flux_unit="ct"))


def test_summarize_calibration_mentions_every_star(result):
    text = qc.summarize_calibration(result)
    assert "standard stars used       : 3" in text
    assert "standard stars rejected   : 1" in text
    assert "rms scatter between stars : 1.23 %" in text
    low = result.combined_vector.wavelength[5].value
    assert f"wavelength range          : {low:.1f}–9000.0 Å" in text
    for vec in result.per_star_vectors:
        assert vec.meta["star_name"] in text
        assert str(vec.meta["fiber_id"]) in text
    assert f"rejected: {REASON}" in text
    assert text.count("  used") == 3
    assert "6500" in text and "-0.75" in text and "+2.5" in text  # Teff, [M/H], RV of star 3


def test_summary_survives_a_fits_round_trip(result, tmp_path):
    path = tmp_path / "cal.fits"
    result.write(path)
    back = FluxCalibrationResult.read(path)
    assert qc.summarize_calibration(back) == qc.summarize_calibration(result)
    _render(qc.plot_calibration_summary(back))


def test_save_figures_writes_pngs(result, tmp_path):
    from matplotlib import pyplot as plt

    extra_fig = qc.plot_calibrated_spectrum(
        make_spectrum(np.linspace(4000, 9000, 50), np.full(50, 1e-16), flux_unit=FLAM)
    )
    pyplot_fig, pyplot_ax = plt.subplots()  # a caller's pyplot figure is released after saving
    qc.plot_calibrated_spectrum(
        make_spectrum(np.linspace(4000, 9000, 50), np.full(50, 1e-16), flux_unit=FLAM), ax=pyplot_ax
    )
    extra = {"fiber42": extra_fig, "fiber43": pyplot_fig}
    paths = qc.save_figures(result, tmp_path / "plots", prefix="run1", extra=extra)
    assert not plt.fignum_exists(pyplot_fig.number)
    names = [p.name for p in paths]
    assert names == [
        "run1_summary.png", "run1_per_star.png", "run1_residuals.png", "run1_photometry.png",
        "run1_fiber42.png", "run1_fiber43.png",
    ]  # fmt: skip
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE
        assert len(data) > 10_000
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 500 and height > 300
    with pytest.raises(InputDataError, match="clashes"):
        qc.save_figures(result, tmp_path, extra={"summary": Figure()})


def test_result_without_stars_still_plots():
    res = _make_result()
    empty = FluxCalibrationResult(res.combined_vector, [], [], {})
    fig = _render(qc.plot_calibration_summary(empty))
    assert "0 standard stars used, 0 rejected" in fig.get_suptitle()
    assert "no per-star records" in qc.summarize_calibration(empty)
    _render(qc.plot_photometric_residuals(empty))
