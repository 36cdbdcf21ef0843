"""The RED-file stage and the ``kspec-fluxcal`` command, end to end on SYNTHETIC frames."""

import shutil

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from kspec_fluxcal.accuracy import true_level
from kspec_fluxcal.cli import main
from kspec_fluxcal.containers import FLAM, FluxCalibrationResult
from kspec_fluxcal.exceptions import AlreadyCalibratedError, InputDataError
from kspec_fluxcal.masks import load_mask_array, load_mask_regions
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal
from kspec_fluxcal.simulate import make_exposure, write_refcat_csv


@pytest.fixture(scope="module")
def exposure(tmp_path_factory):
    exp = make_exposure(n_standards=5, n_science=3, n_sky=1, n_pix=4000, fwhm=2.5, teff_range=(5300, 7700),
                        logg_range=(4.05, 4.45), feh_range=(-0.9, 0.4), seed=5)
    folder = tmp_path_factory.mktemp("frame")
    red, cat = exp.write(folder, stem="frame")
    return exp, red, cat


@pytest.fixture(scope="module")
def calibrated(exposure, synthetic_grid_dir, tmp_path_factory):
    exp, red, cat = exposure
    out = tmp_path_factory.mktemp("out") / "calibrated.fits"
    status = main(["calibrate", str(red), "--catalog", str(cat), "--templates", str(synthetic_grid_dir),
                   "--output", str(out), "--quiet"])
    return status, out


def test_cli_writes_a_calibrated_frame(exposure, calibrated):
    exp, red, _ = exposure
    status, out = calibrated
    assert status == 0
    with fits.open(out) as hdul, fits.open(red) as raw:
        header = hdul[0].header
        assert header["FLUXCAL"] is True
        assert u.Unit(header["BUNIT"]) == FLAM
        assert header["FCALNSTR"] >= 4
        assert 0 < header["FCALRMS"] < 0.05
        assert len([h for h in header["HISTORY"] if str(h).startswith("FCAL fiber")]) == 5
        assert [h.name for h in hdul[:5]] == ["PRIMARY", "VARIANCE", "WAVELA", "FIBRES", "FLUXCAL"]
        table = Table.read(hdul["FLUXCAL"])
        assert {"WAVELENGTH", "CAL_FACTOR", "CAL_VARIANCE", "MASK"} <= set(table.colnames)
        assert table["MASK"].dtype == bool
        assert u.Unit(table["CAL_FACTOR"].unit) == FLAM / u.ct
        stars = Table.read(hdul["FCALSTAR"])
        assert len(stars) == 5 and stars["USED"].sum() == header["FCALNSTR"]
        np.testing.assert_array_equal(hdul["WAVELA"].data, raw["WAVELA"].data)
        flux, var = hdul[0].data.astype(float), hdul["VARIANCE"].data.astype(float)
        counts, raw_var = raw[0].data.astype(float), raw["VARIANCE"].data.astype(float)
    assert np.all(np.isnan(flux) == np.isnan(var))
    assert np.all(var[np.isfinite(var)] >= 0)
    # variance propagation: var_F = var_C K² + C² var_K, with K = F / C
    ok = np.isfinite(flux) & (np.abs(counts) > 0)
    factor = flux[ok] / counts[ok]
    assert np.all(var[ok] >= 0.999 * raw_var[ok] * factor**2)


def test_science_fibers_match_their_true_flux(exposure, calibrated):
    exp, _, _ = exposure
    _, out = calibrated
    result = FluxCalibrationResult.read(out)
    truth = exp.truth["true_flux"] * exp.truth["reference_gray"] / true_level(result.summary, exp.truth["gray"])
    with fits.open(out) as hdul:
        flux = hdul[0].data.astype(float)
        wave = hdul["WAVELA"].data
        types = np.char.strip(Table.read(hdul["FIBRES"])["TYPE"].astype(str))
    for f in np.flatnonzero(types == "P"):
        sel = (wave[f] > 3700) & (wave[f] < 9500) & ~load_mask_array(wave[f], load_mask_regions())
        sel &= np.isfinite(flux[f])
        ratio = np.median(flux[f][sel] / truth[f][sel])
        assert ratio == pytest.approx(1.0, abs=0.01)
        smooth_ratio = np.convolve(flux[f][sel], np.ones(101) / 101, "valid") / np.convolve(
            truth[f][sel], np.ones(101) / 101, "valid")
        assert np.percentile(np.abs(smooth_ratio - 1), 95) < 0.02


def test_already_calibrated_is_refused_without_force(calibrated, exposure, synthetic_grid_dir, capsys, tmp_path):
    _, cat = exposure[1], exposure[2]
    _, out = calibrated
    copy = tmp_path / "again.fits"
    shutil.copy(out, copy)
    before = copy.read_bytes()
    status = main(["calibrate", str(copy), "--catalog", str(cat), "--templates", str(synthetic_grid_dir)])
    err = capsys.readouterr().err.strip()
    assert status != 0
    assert len(err.splitlines()) == 1 and "--force" in err
    assert copy.read_bytes() == before
    with pytest.raises(AlreadyCalibratedError):
        apply_fluxcal(copy, FluxcalConfig(catalog=cat, templates=synthetic_grid_dir))


def test_failing_run_leaves_the_input_byte_identical(exposure, synthetic_grid_dir, tmp_path, capsys):
    exp, red, _ = exposure
    frame = tmp_path / "frame.fits"
    shutil.copy(red, frame)
    before = frame.read_bytes()
    field_only = exp.catalog[exp.catalog["objid"] >= 5000]  # no row is on a standard fiber
    cat = tmp_path / "field.csv"
    write_refcat_csv(field_only, cat)
    status = main(["calibrate", str(frame), "--catalog", str(cat), "--templates", str(synthetic_grid_dir)])
    err = capsys.readouterr().err.strip()
    assert status != 0
    assert len(err.splitlines()) == 1 and "rejected" in err
    assert frame.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["field.csv", "frame.fits"]


def test_unmatched_standard_is_reported_and_skipped(exposure, synthetic_grid_dir, tmp_path):
    exp, red, _ = exposure
    fibres = Table.read(red, hdu="FIBRES")
    standards = np.flatnonzero(np.char.strip(fibres["TYPE"].astype(str)) == "C")
    dropped = int(standards[0])
    keep = exp.catalog["objid"] != 1000 + dropped
    cat = tmp_path / "partial.csv"
    write_refcat_csv(exp.catalog[keep], cat)
    run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=synthetic_grid_dir, output=tmp_path / "o.fits"))
    metrics = {m["fiber_id"]: m for m in run.result.summary["per_star_metrics"]}
    assert metrics[dropped]["used"] is False
    assert "arcsec away" in metrics[dropped]["reject_reason"]
    assert run.result.summary["n_stars_used"] >= 3
    stars = Table.read(tmp_path / "o.fits", hdu="FCALSTAR")
    assert stars["REASON"][stars["FIBER"] == dropped][0] != ""


def test_matching_by_row_order(exposure, synthetic_grid_dir, tmp_path):
    exp, red, _ = exposure
    fibres = Table.read(red, hdu="FIBRES")
    standards = np.flatnonzero(np.char.strip(fibres["TYPE"].astype(str)) == "C")
    rows = [np.flatnonzero(exp.catalog["objid"] == 1000 + f)[0] for f in standards]
    cat = tmp_path / "ordered.csv"
    write_refcat_csv(exp.catalog[rows], cat)
    run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=synthetic_grid_dir, match="order",
                                           output=tmp_path / "o.fits"))
    assert run.result.summary["n_stars_used"] >= 4


def test_config_accepts_kspecdr_names():
    config = FluxcalConfig.from_args({"CALIBFLUX": "T", "CALIBFLUX_CATALOG": "cat.csv", "CALIBFLUX_FWHM": "2.2",
                                      "CALIBFLUX_METRIC": "huber", "CALIBFLUX_SMOOTH": "true", "unrelated": 1})
    assert config.enabled and config.smooth and config.metric == "huber"
    assert config.fwhm == 2.2 and config.catalog == "cat.csv"
    with pytest.raises(InputDataError, match="metric"):
        FluxcalConfig.from_args({"CALIBFLUX_METRIC": "l1"})


def test_missing_fwhm_is_a_clear_error(exposure, synthetic_grid_dir, tmp_path):
    _, red, cat = exposure
    frame = tmp_path / "nofwhm.fits"
    with fits.open(red) as hdul:
        del hdul[0].header["SPECFWHM"]
        hdul.writeto(frame)
    with pytest.raises(InputDataError, match="--fwhm"):
        apply_fluxcal(frame, FluxcalConfig(catalog=cat, templates=synthetic_grid_dir))


def test_plots_hold_the_calibration(exposure, synthetic_grid_dir, tmp_path):
    _, red, cat = exposure
    run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=synthetic_grid_dir, output=tmp_path / "o.fits",
                                           plots=tmp_path / "qc"))
    assert len(run.figures) >= 4
    for path in run.figures:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_reports_accuracy(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "median |error|" in out
    assert (tmp_path / "demo" / "demo_red.fits").is_file()
    assert len(list((tmp_path / "demo" / "figures").glob("*.png"))) >= 4


def test_download_templates_dry_run_lists_the_subgrid(tmp_path, capsys):
    assert main(["download-templates", "--dest", str(tmp_path / "bosz"), "--dry-run", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    urls = [line for line in lines if line.startswith("https://")]
    assert len(urls) == 521 and len(set(urls)) == 521
    assert sum("wave_r10000" in url for url in urls) == 1
    assert not (tmp_path / "bosz").exists()
