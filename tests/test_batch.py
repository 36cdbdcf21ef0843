"""Batch reduction on a Dask LocalCluster: a corrupt frame fails alone, re-runs skip finished files."""

import os
import shutil

import pytest
from astropy.io import fits

from kspec_fluxcal.batch import BatchRecord, calibrate_batch, find_catalog, summary_table
from kspec_fluxcal.cli import main
from kspec_fluxcal.exceptions import InputDataError
from kspec_fluxcal.pipeline import FluxcalConfig
from kspec_fluxcal.products import load_calibration

from .conftest import require_module

require_module("distributed")

GOOD = ("n1_0001", "n1_0002", "n1_0003")


@pytest.fixture(scope="module")
def night_folder(tmp_path_factory, write_small_frames):
    """Three small SYNTHETIC frames with their catalogues (<base>_refcat.csv) and one truncated frame."""
    folder = write_small_frames(tmp_path_factory.mktemp("batch"), GOOD, seed=40)
    data = (folder / "n1_0001_red.fits").read_bytes()
    (folder / "n1_0004_red.fits").write_bytes(data[: len(data) // 2])  # cut short, as by a full disk
    shutil.copy(folder / "n1_0001_refcat.csv", folder / "n1_0004_refcat.csv")
    return folder


def _prepared_entries():
    folder = os.path.join(os.environ["KSPEC_FLUXCAL_CACHE"], "prepared")
    return set(os.listdir(folder)) if os.path.isdir(folder) else set()


def test_batch_finishes_the_good_frames_and_reports_the_bad_one(night_folder, synthetic_grid_dir, tmp_path, capsys):
    reds = sorted(str(p) for p in night_folder.glob("*_red.fits"))
    out = tmp_path / "out"
    before = _prepared_entries()
    args = ["batch", *reds, "--catalog-dir", str(night_folder), "--templates", str(synthetic_grid_dir),
            "--output-dir", str(out), "--workers", "2", "--products"]
    status = main(args)
    captured = capsys.readouterr()
    table = captured.out
    assert status == 1 and table, captured.err
    lines = {line.split()[0]: line for line in table.splitlines() if line.strip().startswith("n1_")}
    assert len(lines) == 4, table
    for stem in GOOD:
        assert " ok " in lines[f"{stem}_red.fits"]
        with fits.open(out / f"{stem}_red.fits") as hdul:
            assert hdul[0].header["FLUXCAL"] is True and hdul[0].header["FCALNSTR"] >= 3
        product = load_calibration(out / f"{stem}_red_fluxcal.fits")
        assert product.summary["provenance"]["red_file"] == f"{stem}_red.fits"
    assert " failed " in lines["n1_0004_red.fits"] and "truncated" in lines["n1_0004_red.fits"]
    assert "3 calibrated, 1 failed, 0 skipped" in table
    assert not (out / "n1_0004_red.fits").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no partial files
    # the three frames share one set-up: one prepared grid, made by the driver, memory-mapped by the workers
    assert len(_prepared_entries() - before) == 1

    # a re-run skips what is done and tries the bad frame again
    status = main(args)
    table = capsys.readouterr().out
    assert status == 1
    assert "0 calibrated, 1 failed, 3 skipped" in table


def test_batch_inputs_are_checked(night_folder, tmp_path):
    assert find_catalog(night_folder / "n1_0002_red.fits", night_folder).name == "n1_0002_refcat.csv"
    with pytest.raises(InputDataError, match="tried n1_0009_red.csv, n1_0009_red_refcat.csv, n1_0009_refcat.csv"):
        find_catalog(night_folder / "n1_0009_red.fits", night_folder)
    red = night_folder / "n1_0001_red.fits"
    with pytest.raises(InputDataError, match="output_dir"):
        calibrate_batch([red], night_folder, FluxcalConfig(output=tmp_path / "x.fits"))
    with pytest.raises(InputDataError, match="overwrite each other"):
        calibrate_batch([red, tmp_path / "n1_0001_red.fits"], night_folder, output_dir=tmp_path)
    with pytest.raises(InputDataError, match="2 catalogues for 1"):
        calibrate_batch([red], [red, red])


def test_summary_table_holds_every_record():
    records = [BatchRecord("a/x_red.fits", "ok", n_standards=4, rms=0.0123, seconds=3.2),
               BatchRecord("a/y_red.fits", "failed", seconds=0.1, reason="truncated")]
    table = summary_table(records)
    assert list(table["file"]) == ["x_red.fits", "y_red.fits"]
    assert list(table["status"]) == ["ok", "failed"] and list(table["n_std"]) == [4, -1]
    assert table["rms_pct"][0] == pytest.approx(1.23)
