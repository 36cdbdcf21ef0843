"""The exit statuses of ``kspec-fluxcal`` (`kspec_fluxcal.cli.EXIT_STATUSES`): a bug never reads like bad input.

0 ok; 1 a batch with some files failed or unfinished; 2 bad input or usage (the
package's own errors, OS errors, argparse); 70 internal error (one line, the
hint to rerun with ``--debug``, which shows the traceback); 130 interrupted.
The command functions are replaced by ones that raise, so each status is
reached without a calibration.
"""

import pytest

from kspec_fluxcal import cli
from kspec_fluxcal.batch import BatchRecord
from kspec_fluxcal.cli import main
from kspec_fluxcal.exceptions import (
    BatchIncompleteError,
    CalibrationError,
    CatalogError,
    InputDataError,
    KspecFluxcalError,
    OutputWriteError,
    UnknownBandError,
)


def _raising(exc):
    def command(args):
        raise exc
    return command


def _run(monkeypatch, capsys, exc, *extra):
    monkeypatch.setitem(cli.COMMANDS, "info", _raising(exc))
    status = main(["info", "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    return status, err


@pytest.mark.parametrize("exc", [
    CatalogError("catalogue x.csv has no 'RA' column; add it."),
    CalibrationError("every standard star was rejected."),
    InputDataError("bad spectrum"),
    OutputWriteError("cannot write out.fits: Permission denied"),
    UnknownBandError("unknown band 'ps9_q'"),
    PermissionError(13, "Permission denied", "cat.csv"),
    FileNotFoundError(2, "No such file or directory", "RED.fits"),
], ids=lambda e: type(e).__name__)
def test_input_errors_exit_2_with_one_line(exc, monkeypatch, capsys):
    status, err = _run(monkeypatch, capsys, exc)
    assert status == cli.EXIT_INPUT == 2
    assert len(err) == 1 and err[0].startswith("kspec-fluxcal: error: "), err
    assert "internal" not in err[0]


@pytest.mark.parametrize("exc", [ValueError("min() arg is an empty sequence"), IndexError("index 3 is out of bounds"),
                                 KeyError("FLUXCAL"), TypeError("unsupported operand"), ZeroDivisionError("x"),
                                 RuntimeError("disk controller on fire")], ids=lambda e: type(e).__name__)
def test_anything_else_is_an_internal_error_exit_70(exc, monkeypatch, capsys):
    status, err = _run(monkeypatch, capsys, exc)
    assert status == cli.EXIT_INTERNAL == 70
    assert len(err) == 1 and err[0].startswith("kspec-fluxcal: internal error, a bug"), err
    assert type(exc).__name__ in err[0] and "rerun with --debug" in err[0]


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "info", _raising(ValueError("deep in scipy")))
    with pytest.raises(ValueError, match="deep in scipy"):
        main(["info", "--debug"])
    monkeypatch.setitem(cli.COMMANDS, "info", _raising(CatalogError("no RA")))
    with pytest.raises(CatalogError):
        main(["info", "--debug"])


def test_interrupted_exits_130(monkeypatch, capsys):
    status, err = _run(monkeypatch, capsys, KeyboardInterrupt())
    assert status == cli.EXIT_INTERRUPTED == 130
    assert len(err) == 1 and "interrupted" in err[0]


@pytest.mark.parametrize("argv", [["calibrate"], ["calibrate", "x.fits"], ["no-such-command"],
                                  ["calibrate", "x.fits", "--catalog", "c.csv", "--metric", "l1"],
                                  ["calibrate", "x.fits", "--catalog", "c.csv", "--fwhm", "wide"]])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_help_and_version_exit_0_and_help_lists_the_statuses(capsys):
    assert main(["--version"]) == 0
    capsys.readouterr()
    for argv in (["--help"], ["calibrate", "--help"], ["batch", "--help"]):
        assert main(argv) == 0
        text = capsys.readouterr().out
        assert "exit status:" in text
        for code in (0, 1, 2, 70, 130):
            assert f"\n  {code:<4d}" in text, (argv, text)


def _records(*states):
    return [BatchRecord(file=f"f{i}_red.fits", status=s, output="", n_standards=None, rms=None, seconds=0.0,
                        reason="" if s == "ok" else "broken") for i, s in enumerate(states)]


def test_batch_with_a_failed_file_exits_1(monkeypatch, capsys, tmp_path):
    import kspec_fluxcal.batch as batch

    monkeypatch.setattr(batch, "calibrate_batch", lambda *a, **k: _records("ok", "failed", "skipped"))
    assert main(["batch", str(tmp_path / "a.fits"), "--catalog", str(tmp_path / "c.csv"), "--quiet"]) == 1
    assert "1 calibrated, 1 failed, 1 skipped" in capsys.readouterr().out
    monkeypatch.setattr(batch, "calibrate_batch", lambda *a, **k: _records("ok", "skipped"))
    assert main(["batch", str(tmp_path / "a.fits"), "--catalog", str(tmp_path / "c.csv"), "--quiet"]) == 0


def test_batch_left_unfinished_exits_1_with_its_table(monkeypatch, capsys, tmp_path):
    import kspec_fluxcal.batch as batch

    def lost(*args, **kwargs):
        raise BatchIncompleteError("the Dask scheduler was lost; 1 of 2 files are unfinished: f1_red.fits",
                                   _records("ok", "unfinished"))

    monkeypatch.setattr(batch, "calibrate_batch", lost)
    assert main(["batch", str(tmp_path / "a.fits"), "--catalog", str(tmp_path / "c.csv"), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "unfinished" in captured.out
    assert captured.err.strip().splitlines() == [
        "kspec-fluxcal: error: the Dask scheduler was lost; 1 of 2 files are unfinished: f1_red.fits"]


def test_every_package_error_is_one_base_class():
    for exc in (CatalogError, CalibrationError, OutputWriteError, UnknownBandError, BatchIncompleteError):
        assert issubclass(exc, KspecFluxcalError)
    assert issubclass(UnknownBandError, KeyError) and issubclass(UnknownBandError, ValueError)
    assert str(UnknownBandError("unknown band 'x'")) == "unknown band 'x'"


def test_a_damaged_calspec_file_is_an_input_error(tmp_path):
    """It was a KeyError (an internal error) for a table without WAVELENGTH, a bare OSError for garbage."""
    import numpy as np
    from astropy.io import fits

    from kspec_fluxcal.calspec import read_calspec

    table = tmp_path / "star_stis_001.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="FLUX", format="D", array=np.ones(3))])]).writeto(table)
    garbage = tmp_path / "junk_stis_001.fits"
    garbage.write_bytes(b"not a FITS file")
    for path in (table, garbage):
        with pytest.raises(InputDataError, match=f"{path.name} is not a readable CALSPEC spectrum"):
            read_calspec(path)


@pytest.mark.parametrize(("value", "parsed"), [("auto", "auto"), ("none", "none"), ("corr.ecsv", "corr.ecsv")])
def test_template_correction_choice_is_exactly_auto_none_or_a_file(value, parsed):
    args = cli.build_parser().parse_args(["calibrate", "x.fits", "--catalog", "c.csv",
                                          "--template-correction", value])
    assert str(args.template_correction) == parsed
    assert isinstance(args.template_correction, str) == (value in ("auto", "none"))


@pytest.mark.parametrize("value", ["None", "NONE", "Auto", ""])
def test_a_template_correction_that_is_neither_a_choice_nor_a_file_exits_2(value, write_small_frames,
                                                                           synthetic_grid_dir, tmp_path, capsys):
    """'None' is not read as 'none' silently: it names a file that is not there, so the run stops and says so."""
    folder = write_small_frames(tmp_path, ["f"], seed=3)
    red, cat = folder / "f_red.fits", folder / "f_refcat.csv"
    before = red.read_bytes()
    status = main(["calibrate", str(red), "--catalog", str(cat), "--templates", str(synthetic_grid_dir),
                   "--template-correction", value, "--output", str(tmp_path / "out.fits")])
    err = capsys.readouterr().err
    assert status == 2
    assert "template correction file" in err and "does not exist" in err and "'auto' or 'none'" in err
    assert not (tmp_path / "out.fits").exists()
    assert red.read_bytes() == before
