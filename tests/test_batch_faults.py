"""Batch faults in the write: a full disk, a read-only folder; the persistent run log.

The batch runs on an in-process Dask cluster (worker threads of this process),
so that a patched write (``monkeypatch``) is what the tasks call.
"""

import errno
import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from kspec_fluxcal.batch import BatchRecord, calibrate_batch
from kspec_fluxcal.exceptions import OutputWriteError
from kspec_fluxcal.runlog import RUN_LOG_COLUMNS, RUN_LOG_NAME, append_run_log, read_run_log, run_log_table

from .conftest import require_module

distributed = require_module("distributed")

STEMS = ("f_0001", "f_0002", "f_0003")


@pytest.fixture(scope="module")
def frames(tmp_path_factory, write_small_frames):
    """Three small SYNTHETIC frames with their catalogues (<base>_refcat.csv)."""
    return write_small_frames(tmp_path_factory.mktemp("faults"), STEMS, seed=70)


@pytest.fixture
def inproc_scheduler():
    """Address of an in-process cluster: one worker thread in this process, so patches reach the tasks."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0",
                                  scheduler_kwargs={"dashboard": False}) as cluster:
        yield cluster.scheduler_address


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _copy_frames(src, dest, stems=STEMS):
    dest.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        for name in (f"{stem}_red.fits", f"{stem}_refcat.csv"):
            (dest / name).write_bytes((src / name).read_bytes())
    return [dest / f"{stem}_red.fits" for stem in stems]


def test_disk_full_fails_that_file_only(frames, synthetic_grid_dir, inproc_scheduler, tmp_path, monkeypatch):
    reds = _copy_frames(frames, tmp_path / "in")
    before = _digests(tmp_path / "in")
    out = tmp_path / "out"
    real_writeto = fits.HDUList.writeto

    def writeto(self, name, *args, **kwargs):
        if Path(name).name.startswith(".f_0002_red.fits."):  # the calibrated f_0002: half written, then ENOSPC
            Path(name).write_bytes(b"SIMPLE  =                    T" + b" " * 20_000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_writeto(self, name, *args, **kwargs)

    monkeypatch.setattr(fits.HDUList, "writeto", writeto)
    records = calibrate_batch(reds, tmp_path / "in", {"templates": synthetic_grid_dir}, scheduler=inproc_scheduler,
                              output_dir=out, products=True)
    state = {Path(r.file).stem: r for r in records}
    assert [state[f"{s}_red"].status for s in STEMS] == ["ok", "failed", "ok"]
    reason = state["f_0002_red"].reason
    assert reason.startswith(f"cannot write {out / 'f_0002_red.fits'}: No space left on device"), reason
    assert "the input is unchanged" in reason
    assert _digests(tmp_path / "in") == before
    assert sorted(p.name for p in out.iterdir()) == sorted([RUN_LOG_NAME, "f_0001_red.fits", "f_0001_red_fluxcal.fits",
                                                            "f_0003_red.fits", "f_0003_red_fluxcal.fits"])
    for stem in ("f_0001", "f_0003"):
        with fits.open(out / f"{stem}_red.fits", checksum=True) as hdul:
            assert hdul[0].header["FLUXCAL"] is True and np.isfinite(hdul[0].data).any()
    log = read_run_log(out / RUN_LOG_NAME)
    assert list(log["state"]) == ["ok", "failed", "ok"] and log["reason"][1] == reason
    assert all(w.startswith(("inproc://", "tcp://")) for w in log["worker"][[0, 2]])

    # the disk has room again: the re-run does the failed file only and appends to the run log
    monkeypatch.setattr(fits.HDUList, "writeto", real_writeto)
    records = calibrate_batch(reds, tmp_path / "in", {"templates": synthetic_grid_dir}, scheduler=inproc_scheduler,
                              output_dir=out, products=True)
    assert [r.status for r in records] == ["skipped", "ok", "skipped"]
    log = read_run_log(out / RUN_LOG_NAME)
    assert list(log["state"]) == ["ok", "failed", "ok", "skipped", "ok", "skipped"]
    assert len(set(log["run"])) == 2
    assert _digests(tmp_path / "in") == before
    assert not list(tmp_path.rglob("*.part"))


def test_read_only_folder_fails_its_files_only(frames, synthetic_grid_dir, inproc_scheduler, tmp_path, monkeypatch,
                                               caplog):
    # files rewritten in place in two folders: one read-only (as on a full or read-only mount), one writable
    locked = _copy_frames(frames, tmp_path / "locked", STEMS[:2])
    free = _copy_frames(frames, tmp_path / "free", STEMS[2:])
    before = _digests(tmp_path / "locked")
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).parent == tmp_path / "locked":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with caplog.at_level(logging.ERROR, logger="kspec_fluxcal.batch"):
        records = calibrate_batch(locked + free, {r.name: r.with_name(r.name.replace("_red.fits", "_refcat.csv"))
                                                  for r in locked + free},
                                  {"templates": synthetic_grid_dir}, scheduler=inproc_scheduler)
    assert [r.status for r in records] == ["failed", "failed", "ok"]
    for record, red in zip(records[:2], locked):
        assert record.reason.startswith(f"cannot write {red}: Read-only file system"), record.reason
    assert _digests(tmp_path / "locked") == before
    assert not list(tmp_path.rglob("*.part"))
    with fits.open(free[0]) as hdul:
        assert hdul[0].header["FLUXCAL"] is True
    # the run log of the writable folder is written; that of the read-only one cannot be, and the log says so
    assert list(read_run_log(tmp_path / "free" / RUN_LOG_NAME)["state"]) == ["ok"]
    assert not (tmp_path / "locked" / RUN_LOG_NAME).exists()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    expected = f"cannot write the run log {tmp_path / 'locked' / RUN_LOG_NAME}: Read-only file system"
    assert any(m.startswith(expected) for m in errors), errors


def _records(n, status="ok"):
    return [BatchRecord(f"/night/x_{i:04d}_red.fits", status, output=f"/night/out/x_{i:04d}_red.fits",
                        n_standards=5, rms=0.012, seconds=3.5, worker="tcp://127.0.0.1:4000") for i in range(n)]


def test_run_log_appends_and_round_trips(tmp_path):
    path = tmp_path / RUN_LOG_NAME
    append_run_log(path, run_log_table(_records(2), "run-a"))
    append_run_log(path, run_log_table([BatchRecord("/night/x_0009_red.fits", "failed", reason="bad")], "run-b"))
    table = read_run_log(path)
    assert table.colnames == list(RUN_LOG_COLUMNS)
    assert list(table["run"]) == ["run-a", "run-a", "run-b"]
    assert list(table["state"]) == ["ok", "ok", "failed"] and list(table["n_standards"]) == [5, 5, -1]
    assert table["rms"][0] == pytest.approx(0.012) and np.isnan(table["rms"][2])
    assert table["worker"][0] == "tcp://127.0.0.1:4000" and table["worker"][2] == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUN_LOG_NAME]


def test_unreadable_run_log_is_kept_aside(tmp_path, caplog):
    path = tmp_path / RUN_LOG_NAME
    path.write_text("# %ECSV 1.0\n# ---\n# garbage: [\n")
    with caplog.at_level(logging.ERROR, logger="kspec_fluxcal.runlog"):
        append_run_log(path, run_log_table(_records(1), "run-c"))
    assert list(read_run_log(path)["run"]) == ["run-c"]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(f"{RUN_LOG_NAME}.unreadable-")]
    assert len(aside) == 1 and aside[0].read_text().endswith("garbage: [\n")
    assert "is unreadable" in caplog.text


def test_run_log_write_failure_leaves_it_unchanged(tmp_path, monkeypatch):
    path = tmp_path / RUN_LOG_NAME
    append_run_log(path, run_log_table(_records(1), "run-d"))
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputWriteError, match="cannot write the run log .*: No space left on device"):
        append_run_log(path, run_log_table(_records(3), "run-e"))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUN_LOG_NAME]
