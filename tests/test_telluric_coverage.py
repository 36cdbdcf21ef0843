"""Telluric windows the standards sample in part, only through their margin, not at all, or with one star.

Every case calibrates: T is fitted where the standards have usable samples and
is exactly 1 (the bridged smooth calibration) elsewhere in the window, and one
log line per window says which. The frames are SYNTHETIC (`make_exposure`,
telluric bands imprinted), at the geometry that once crashed the fit: FWHM
10 Å, 2.5 Å pixels, six standards.
"""

import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal
from kspec_fluxcal.simulate import make_exposure
from kspec_fluxcal.telluric import fit_transmission

WINDOWS = [(6860.0, 6960.0), (7150.0, 7340.0), (7590.0, 7700.0), (8100.0, 8360.0), (8920.0, 9200.0),
           (9300.0, 9650.0)]


def test_fit_with_samples_only_in_the_margin_gives_nothing_to_apply():
    """Samples in the 3σ margin below a window span no point inside it: NaN everywhere, no error."""
    rng = np.random.default_rng(1)
    sigma = 4.3
    waves = [np.sort(rng.uniform(9300 - 3 * sigma, 9299.0, 12)) for _ in range(3)]
    values = [1 - 0.01 * rng.standard_normal(w.size) for w in waves]
    out = np.linspace(9300, 9650, 300)
    t, v, n = fit_transmission(waves, values, [np.full(w.size, 1e-4) for w in waves], (9300, 9650), sigma, out)
    assert np.isnan(t).all() and np.isnan(v).all() and not n.any()


def test_fit_of_a_window_sampled_in_part_covers_that_part_only():
    rng = np.random.default_rng(2)
    sigma = 1.0
    waves = [np.sort(rng.uniform(9290.0, 9450.0, 400)) for _ in range(4)]
    truth = lambda w: 1 - 0.3 * np.exp(-0.5 * ((w - 9400) / 2.0) ** 2)  # noqa: E731
    values = [truth(w) + 0.002 * rng.standard_normal(w.size) for w in waves]
    out = np.linspace(9300, 9650, 1401)
    t, v, n = fit_transmission(waves, values, [np.full(w.size, 0.002**2) for w in waves], (9300, 9650), sigma, out)
    spanned = out <= min(w[-1] for w in waves)
    assert (n[spanned] == 4).all() and not n[out > max(w[-1] for w in waves)].any()
    assert np.abs(t[spanned] - truth(out[spanned])).max() < 0.02
    assert np.isnan(t[out > 9451]).all()


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """{name: (red, catalogue)}: a frame ending at 9500 Å, inside the 9300–9650 Å window."""
    made = {}
    for name, wave_range in (("short", (3700.0, 9500.0)),):
        n_pix = int((wave_range[1] - wave_range[0]) / 2.5)
        exp = make_exposure(n_standards=6, n_science=2, n_sky=1, n_pix=n_pix, wave_range=wave_range, fwhm=10.0,
                            logg_range=(4.05, 4.45), snr_range=(60.0, 150.0), seed=23)
        made[name] = exp.write(tmp_path_factory.mktemp(name), stem="frame")
    return made


def _masked_copy(red, folder, windows, keep_star=None):
    """``red`` with the standards' pixels in ``windows`` set to NaN (except for fiber ``keep_star``)."""
    out = folder / f"masked_{len(windows)}_{keep_star}.fits"
    with fits.open(red) as hdul:
        types = np.char.strip(Table.read(hdul["FIBRES"])["TYPE"].astype(str))
        wave = np.broadcast_to(hdul["WAVELA"].data, hdul[0].data.shape)
        inside = np.zeros(wave.shape, dtype=bool)
        for a, b in windows:
            inside |= (wave >= a) & (wave <= b)
        standards = np.flatnonzero(types == "C")
        for fiber in standards:
            if fiber != keep_star:
                hdul[0].data[fiber, inside[fiber]] = np.nan
        hdul.writeto(out)
    return out, standards


def _calibrate(red, cat, templates, out, caplog):
    before = red.read_bytes()
    with caplog.at_level(logging.INFO, logger="kspec_fluxcal.telluric"):
        run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=templates, output=out, telluric=True))
    assert red.read_bytes() == before
    with fits.open(out) as hdul:
        flux = hdul[0].data.astype(float)
        types = np.char.strip(Table.read(hdul["FIBRES"])["TYPE"].astype(str))
        tel = Table.read(hdul["TELLURIC"]) if "TELLURIC" in hdul else None
    lit = types == "P"
    assert np.isfinite(flux[lit]).mean() > 0.9  # science fibers are finite except at the trimmed edges
    lines = [r.getMessage() for r in caplog.records if r.name == "kspec_fluxcal.telluric"]
    return run, tel, lines


def _line(lines, window):
    found = [m for m in lines if m.startswith(f"telluric window {window[0]:.0f}–{window[1]:.0f} Å")]
    assert len(found) == 1, lines
    return found[0]


def _window_t(tel, window):
    w = np.asarray(tel["WAVELENGTH"], float)
    sel = (w >= window[0]) & (w <= window[1])
    return w[sel], np.asarray(tel["TRANSMISSION"], float)[sel], np.asarray(tel["VARIANCE"], float)[sel]


def test_window_only_in_the_margin_is_bridged(frames, synthetic_grid_dir, tmp_path, caplog):
    """The frame's usable pixels stop before 9300 Å: the last window is bridged, the others corrected."""
    red, cat = frames["short"]
    run, tel, lines = _calibrate(red, cat, synthetic_grid_dir, tmp_path / "out.fits", caplog)
    assert "no standard's usable samples reach inside it" in _line(lines, WINDOWS[-1])
    for window in WINDOWS[:-1]:
        assert "fitted on up to 6 standard(s) across the whole window" in _line(lines, window)
    _, t, v = _window_t(tel, WINDOWS[-1])
    assert (t == 1).all() and (v == 0).all()
    _, t, _ = _window_t(tel, WINDOWS[2])  # the O2 A band is deep
    assert np.nanmin(t) < 0.8


def test_window_covered_in_part_is_fitted_there_and_bridged_beyond(frames, synthetic_grid_dir, tmp_path, caplog):
    """The standards' pixels in the red part of the 8100–8360 Å window are masked: T fitted blueward only."""
    red, cat = frames["short"]
    masked, _ = _masked_copy(red, tmp_path, [(8230.0, 8400.0)])
    run, tel, lines = _calibrate(masked, cat, synthetic_grid_dir, tmp_path / "out.fits", caplog)
    assert "where they have samples; the smooth calibration bridges the rest" in _line(lines, WINDOWS[3])
    w, t, v = _window_t(tel, WINDOWS[3])
    fitted = t != 1
    assert fitted.any() and not fitted.all()
    assert w[fitted].max() < 8235 and w[~fitted].min() > 8220  # fitted where samples are, T = 1 beyond
    assert np.nanmin(t[fitted]) < 0.95 and (v[~fitted] == 0).all()


def test_window_one_star_covers(frames, synthetic_grid_dir, tmp_path, caplog):
    red, cat = frames["short"]
    with fits.open(red) as hdul:
        first = int(np.flatnonzero(np.char.strip(Table.read(hdul["FIBRES"])["TYPE"].astype(str)) == "C")[0])
    masked, _ = _masked_copy(red, tmp_path, [(7560.0, 7730.0)], keep_star=first)  # window and margins
    run, tel, lines = _calibrate(masked, cat, synthetic_grid_dir, tmp_path / "out.fits", caplog)
    assert "fitted on up to 1 standard(s)" in _line(lines, WINDOWS[2])
    assert "fitted on up to 6 standard(s)" in _line(lines, WINDOWS[3])
    _, t, _ = _window_t(tel, WINDOWS[2])
    assert np.nanmin(t) < 0.8


def test_every_window_masked_is_bridged(frames, synthetic_grid_dir, tmp_path, caplog):
    red, cat = frames["short"]
    masked, _ = _masked_copy(red, tmp_path, [(a - 30, b + 30) for a, b in WINDOWS])
    run, tel, lines = _calibrate(masked, cat, synthetic_grid_dir, tmp_path / "out.fits", caplog)
    for window in WINDOWS:
        assert "not corrected" in _line(lines, window)
    assert tel is None or (np.asarray(tel["TRANSMISSION"], float) == 1).all()
    assert run.result.telluric is None or len(run.result.telluric.windows) == 0
