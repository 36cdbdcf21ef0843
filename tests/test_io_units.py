"""FITS units as written in the wild: the one parser, RED frames in every counts spelling, combine-night."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

import kspec_fluxcal
from kspec_fluxcal import MissingUnitWarning, RedFileError
from kspec_fluxcal.cli import main
from kspec_fluxcal.containers import FLAM, CalibrationVector, FluxCalibrationResult
from kspec_fluxcal.exceptions import InputDataError
from kspec_fluxcal.io.units import counting_unit, header_unit, parse_unit, read_fits_table
from kspec_fluxcal.night import combine_night
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal, read_red_frame
from kspec_fluxcal.products import save_calibration

COUNT_SPELLINGS = [
    ("counts", u.ct), ("Counts", u.ct), ("COUNTS", u.ct), ("count", u.ct), ("cts", u.ct), ("ct", u.ct),
    ("counts/s", u.ct / u.s), ("Counts / s", u.ct / u.s), ("counts s-1", u.ct / u.s), ("ct / s", u.ct / u.s),
    ("electrons", u.electron), ("e-", u.electron), ("e", u.electron), ("e-/s", u.electron / u.s),
    ("electrons/s", u.electron / u.s), ("ADU", u.adu), ("adu", u.adu), ("ADU/s", u.adu / u.s),
    ("DN", u.DN), ("DN/s", u.DN / u.s),
]
WAVE_SPELLINGS = [
    ("Angstrom", u.AA), ("Angstroms", u.AA), ("ANGSTROM", u.AA), ("A", u.AA), ("AA", u.AA), ("nm", u.nm),
    ("um", u.um), ("micron", u.um), ("microns", u.um),
]


@pytest.mark.parametrize(("text", "unit"), COUNT_SPELLINGS)
def test_counts_spellings(text, unit):
    got = parse_unit(text, kind="counts")
    assert got == unit
    base, rate = counting_unit(got)
    assert rate == ("/" in text or "s-1" in text)
    assert (base / u.s if rate else base) == got


@pytest.mark.parametrize(("text", "unit"), WAVE_SPELLINGS)
def test_wavelength_spellings(text, unit):
    assert parse_unit(text, kind="wavelength") == unit


def test_a_is_angstrom_only_for_wavelengths():
    assert parse_unit("A") == u.A
    assert parse_unit("A", kind="wavelength") == u.AA


@pytest.mark.parametrize("text", ["furlongs", "ct ** /", ""])
def test_unreadable_units_are_refused_with_advice(text):
    with pytest.raises(InputDataError, match="unit|empty"):
        parse_unit(text, name="PRIMARY BUNIT")


def test_kind_checks():
    with pytest.raises(InputDataError, match="not a wavelength"):
        parse_unit("ct", kind="wavelength")
    with pytest.raises(InputDataError, match="not a number of counts"):
        parse_unit("erg / (Angstrom s cm2)", kind="counts")


def test_missing_unit_warns_once_and_is_reported():
    with pytest.warns(MissingUnitWarning, match="BUNIT is missing") as record:
        unit, assumed = header_unit(fits.Header(), "BUNIT", default="ct", kind="counts")
    assert (unit, assumed, len(record)) == (u.ct, True, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert header_unit({"BUNIT": "Counts"}, default="ct") == (u.ct, False)
    with pytest.raises(InputDataError, match="missing"):
        header_unit({}, "BUNIT")


def test_fits_table_units_in_the_wild_read_without_warnings():
    cols = [fits.Column(name="X", format="D", unit="micron", array=np.ones(2)),
            fits.Column(name="F", format="D", unit="Counts", array=np.ones(2)),
            fits.Column(name="Q", format="D", unit="furlongs", array=np.ones(2))]
    hdu = fits.BinTableHDU.from_columns(cols)
    with pytest.warns(MissingUnitWarning, match="furlongs") as record:
        table = read_fits_table(hdu)
    assert len(record) == 1  # nothing from astropy for 'micron' or 'Counts'
    assert table["X"].unit == u.um and table["F"].unit == u.ct and table["Q"].unit is None


def write_red(path, bunit="ct", wave_unit="Angstrom", n_fib=3, n_pix=200, shared=True, scale=1.0, exptime=None):
    """A small RED frame: flat counts, variance = counts, FIBRES with X/Y in 'micron'."""
    wave = np.linspace(4000.0, 8000.0, n_pix)
    wave2d = np.tile(wave, (n_fib, 1)) if shared else wave + np.arange(n_fib)[:, None] * 0.5
    counts = np.full((n_fib, n_pix), 100.0) * (1 + np.arange(n_fib)[:, None])
    primary = fits.PrimaryHDU(counts)
    if bunit is not None:
        primary.header["BUNIT"] = bunit
    primary.header["SPECFWHM"] = 3.0
    if exptime is not None:
        primary.header["EXPTIME"] = exptime
    wavela = fits.ImageHDU(wave2d * scale, name="WAVELA")
    if wave_unit is not None:
        wavela.header["BUNIT"] = wave_unit
    fibres = Table({"TYPE": ["C", "P", "S"][:n_fib] + ["P"] * max(0, n_fib - 3),
                    "NAME": [f"f{i}" for i in range(n_fib)], "X": np.arange(n_fib) * 100.0,
                    "Y": np.zeros(n_fib)})
    fib = fits.table_to_hdu(fibres)
    fib.header["TUNIT3"] = fib.header["TUNIT4"] = "micron"  # as 2dF-heritage reductions write it
    fib.name = "FIBRES"
    fits.HDUList([primary, fits.ImageHDU(counts.copy(), name="VARIANCE"), wavela, fib]).writeto(path)
    return path


@pytest.mark.parametrize(("text", "unit"), COUNT_SPELLINGS)
def test_red_frame_reads_every_counts_spelling(tmp_path, text, unit):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UnitsWarning for FIBRES' 'micron', nothing else
        frame = read_red_frame(write_red(tmp_path / "red.fits", bunit=text))
    assert frame.counts_unit == unit and not frame.unit_assumed
    assert frame.fibres["X"].unit == u.um


@pytest.mark.parametrize(("text", "scale"), [("Angstroms", 1.0), ("ANGSTROM", 1.0), ("A", 1.0), ("nm", 0.1),
                                             ("um", 1e-4), ("micron", 1e-4)])
def test_red_frame_reads_wavelength_spellings(tmp_path, text, scale):
    frame = read_red_frame(write_red(tmp_path / "red.fits", wave_unit=text, scale=scale))
    np.testing.assert_allclose(frame.wavelength[0, [0, -1]], [4000.0, 8000.0], rtol=1e-12)


def test_red_frame_refuses_unknown_and_non_count_units(tmp_path):
    with pytest.raises(RedFileError, match="furlongs.*not a unit"):
        read_red_frame(write_red(tmp_path / "a.fits", bunit="furlongs"))
    with pytest.raises(RedFileError, match="not a number of counts"):
        read_red_frame(write_red(tmp_path / "b.fits", bunit="erg / (Angstrom s cm2)"))
    with pytest.raises(RedFileError, match="not a wavelength"):
        read_red_frame(write_red(tmp_path / "c.fits", wave_unit="ct"))


def _flat_result(unit, exptime=None, level=1e-17):
    wave = np.linspace(3900.0, 8100.0, 300) * u.AA
    vec = CalibrationVector(wave, np.full(300, level) * unit, np.full(300, (0.01 * level) ** 2) * unit**2)
    return FluxCalibrationResult(vec, summary={"n_stars_used": 3, "provenance": {"exptime": exptime}})


@pytest.mark.parametrize(("bunit", "cal_unit"), [("electrons", FLAM / u.electron), ("e-/s", FLAM / (u.electron / u.s)),
                                                 ("ADU", FLAM / u.adu), ("Counts", FLAM / u.ct)])
def test_calibrate_follows_the_frame_unit(tmp_path, bunit, cal_unit):
    product = save_calibration(_flat_result(cal_unit), tmp_path / "cal.fits")
    red = write_red(tmp_path / "red.fits", bunit=bunit)
    run = apply_fluxcal(red, FluxcalConfig(calibration=product, output=tmp_path / "out.fits"))
    with fits.open(run.output) as hdul:
        assert hdul[0].header["FCALBUNI"] == parse_unit(bunit).to_string()
        np.testing.assert_allclose(hdul[0].data[1, 10:-10], 200 * 1e-17, rtol=1e-6)
        assert not any("no BUNIT" in str(h) for h in hdul[0].header["HISTORY"])


def test_missing_bunit_is_assumed_counts_and_recorded(tmp_path):
    product = save_calibration(_flat_result(FLAM / u.ct), tmp_path / "cal.fits")
    red = write_red(tmp_path / "red.fits", bunit=None)
    with pytest.warns(MissingUnitWarning, match="PRIMARY BUNIT is missing; 'ct' is assumed") as record:
        run = apply_fluxcal(red, FluxcalConfig(calibration=product, output=tmp_path / "out.fits"))
    assert len(record) == 1
    header = fits.getheader(run.output)
    assert header["FCALBUNI"] == "ct"
    assert any("no BUNIT; counts in ct assumed" in str(h) for h in header["HISTORY"])


def test_a_per_second_calibration_applies_to_electrons_with_the_exposure_time(tmp_path):
    product = save_calibration(_flat_result(FLAM / (u.electron / u.s)), tmp_path / "cal.fits")
    red = write_red(tmp_path / "red.fits", bunit="electrons", exptime=100.0)
    run = apply_fluxcal(red, FluxcalConfig(calibration=product, output=tmp_path / "out.fits"))
    np.testing.assert_allclose(fits.getdata(run.output)[0, 10:-10], 100 * 1e-17 / 100.0, rtol=1e-6)


@pytest.mark.parametrize("base", [u.electron, u.adu])
def test_combine_night_handles_any_counting_unit_and_rates(base):
    per_count = _flat_result(FLAM / base, exptime=50.0, level=2e-17)
    per_rate = _flat_result(FLAM / (base / u.s), exptime=20.0, level=1e-15)
    night = combine_night([per_count, per_rate])
    assert night.combined_vector.unit == FLAM / (base / u.s)
    good = ~night.combined_vector.mask
    np.testing.assert_allclose(night.combined_vector.cal_factor.value[good], 1e-15, rtol=1e-6)


def test_cli_calibrate_with_wild_units_prints_no_warning(tmp_path, capsys):
    product = save_calibration(_flat_result(FLAM / u.ct), tmp_path / "cal.fits")
    red = write_red(tmp_path / "red.fits", bunit="COUNTS", wave_unit="Angstroms")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FIBRES X/Y in 'micron' used to raise astropy's UnitsWarning twice
        status = main(["calibrate", str(red), "--calibration", str(product), "--output", str(tmp_path / "o.fits")])
    err = capsys.readouterr().err
    assert status == 0 and "Warning" not in err


def test_cli_prints_each_warning_once(tmp_path):
    product = save_calibration(_flat_result(FLAM / u.ct), tmp_path / "cal.fits")
    red = write_red(tmp_path / "red.fits", bunit=None)
    env = {**os.environ, "PYTHONPATH": str(Path(kspec_fluxcal.__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "kspec_fluxcal.cli", "calibrate", str(red), "--calibration",
                           str(product), "--output", str(tmp_path / "o.fits")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("PRIMARY BUNIT is missing; 'ct' is assumed") == 1
    assert "UnitsWarning" not in proc.stderr


@pytest.mark.slow
def test_frame_in_electrons_derives_a_calibration_per_electron(synthetic_grid_dir, tmp_path):
    from kspec_fluxcal.accuracy import calibration_accuracy, true_level
    from kspec_fluxcal.simulate import make_exposure

    exposure = make_exposure(n_standards=4, n_science=1, n_sky=1, n_pix=6000, fwhm=2.5, teff_range=(5300, 7700),
                             logg_range=(4.05, 4.45), feh_range=(-0.9, 0.4), counts_unit="electron", seed=5)
    red, cat = exposure.write(tmp_path, stem="elec")
    with fits.open(red, mode="update") as hdul:
        hdul[0].header["BUNIT"] = "e-"
    run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=synthetic_grid_dir, output=tmp_path / "out.fits"))
    assert run.result.combined_vector.unit == FLAM / u.electron
    with fits.open(run.output) as hdul:
        assert hdul[0].header["FCALBUNI"] == "electron"
        assert parse_unit(hdul["FLUXCAL"].header["TUNIT2"]) == FLAM / u.electron
    truth = exposure.truth
    accuracy = calibration_accuracy(run.result, truth["wavelength"],
                                    truth["system_calibration"] / true_level(run.result.summary, truth["gray"]))
    assert accuracy["median_abs_error"] < 0.01
