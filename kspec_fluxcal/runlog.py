"""The persistent run log of batch reductions: one ECSV table per output folder.

Every ``kspec-fluxcal batch`` appends one row per RED file to
``kspec_fluxcal_runlog.ecsv`` (`RUN_LOG_NAME`) beside the calibrated files,
so the reduction of a night keeps one record of what happened across re-runs:
when, which run, the file, its state (``ok``, ``failed``, ``skipped``,
``unfinished``), why, the standards used, the rms scatter, the wall time and
the Dask worker that ran the task.

The table is rewritten atomically (a temporary file beside it, then a rename),
under an exclusive ``flock`` of the folder so that two batches finishing at
once both keep their rows. A run log that cannot be read
is kept aside as ``kspec_fluxcal_runlog.ecsv.unreadable-<time>`` and a new one
is started: the record of the night is never silently lost.
"""

import contextlib
import logging
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from .exceptions import InputDataError, OutputWriteError
from .io.atomic import atomic_output

__all__ = ["RUN_LOG_NAME", "RUN_LOG_COLUMNS", "new_run_id", "run_log_table", "append_run_log", "read_run_log"]

log = logging.getLogger(__name__)

RUN_LOG_NAME = "kspec_fluxcal_runlog.ecsv"
"""File name of the run log in an output folder."""

RUN_LOG_COLUMNS = ("time", "run", "file", "state", "reason", "n_standards", "rms", "seconds", "worker", "output")
"""Columns of the run log, in order.

``time`` is the UTC time (ISO 8601) the row was written, ``run`` the id of the
batch (one per call), ``file`` the RED file (absolute path), ``state`` one of
``ok``, ``failed``, ``skipped``, ``unfinished``, ``n_standards`` the standards
used (−1: none), ``rms`` the fractional rms scatter between them (NaN:
undefined), ``seconds`` the task's wall time (s), ``worker`` the address of
the Dask worker that ran it ('' when none did) and ``output`` the calibrated
file ('' when none was written).
"""


def new_run_id():
    """A short unique id of one batch run: UTC time and 6 random hex digits."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def run_log_table(records, run_id, time=None):
    """The run-log rows of ``records`` (`~kspec_fluxcal.batch.BatchRecord`) as a table.

    Parameters
    ----------
    records : list of BatchRecord
        The records of one batch (or of its files in one folder).
    run_id : str
        The batch's id (`new_run_id`).
    time : str, optional
        ISO 8601 UTC time of the rows; default: now.

    Returns
    -------
    `~astropy.table.Table`
        Columns `RUN_LOG_COLUMNS`.
    """
    time = time or datetime.now(UTC).isoformat(timespec="seconds")
    rows = [(time, run_id, str(r.file), r.status, r.reason, -1 if r.n_standards is None else int(r.n_standards),
             np.nan if r.rms is None else float(r.rms), float(r.seconds), r.worker or "", r.output or "")
            for r in records]
    dtypes = (str, str, str, str, str, np.int64, np.float64, np.float64, str, str)
    table = Table(rows=rows or None, names=RUN_LOG_COLUMNS, dtype=dtypes)
    table["rms"].format = ".5f"
    table["seconds"].format = ".2f"
    table["seconds"].unit = "s"
    return table


def read_run_log(path):
    """The run log at ``path`` as a table (`RUN_LOG_COLUMNS`).

    Raises
    ------
    OSError
        The file is missing or unreadable.
    InputDataError
        The file is not a run log (a `ValueError` too).
    """
    try:
        table = Table.read(path, format="ascii.ecsv")
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise InputDataError(f"{path} is not a readable ECSV run log ({' '.join(str(exc).split())}).") from exc
    missing = [c for c in RUN_LOG_COLUMNS if c not in table.colnames]
    if missing:
        raise InputDataError(f"{path} is not a kspec_fluxcal run log (no column {', '.join(missing)}); give the "
                             "ECSV run log a batch wrote (kspec_fluxcal_runlog.ecsv).")
    for name in ("reason", "worker", "output"):  # ECSV reads an empty string back as masked
        if hasattr(table[name], "mask"):
            table[name] = table[name].filled("")
    return table


@contextlib.contextmanager
def _locked(folder):
    """An exclusive advisory lock (``flock``) of ``folder`` itself: no lock file is left behind.

    A no-op where ``fcntl`` is absent (atomic replacement only).
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def append_run_log(path, rows):
    """Append ``rows`` (a `run_log_table`) to the run log at ``path``, atomically.

    Parameters
    ----------
    path : str or Path
        The run log (``<folder>/kspec_fluxcal_runlog.ecsv``); created when
        missing.
    rows : `~astropy.table.Table`
        The rows to append.

    Returns
    -------
    Path
        The run log.

    Raises
    ------
    OutputWriteError
        The folder is not writable (read-only, full, missing): the run log is
        unchanged and nothing partial is left.
    """
    path = Path(path)
    try:
        with _locked(path.parent):
            table = rows
            if path.exists():
                try:
                    table = vstack([read_run_log(path), rows], join_type="outer", metadata_conflicts="silent")
                except (OSError, ValueError) as exc:
                    aside = path.with_name(f"{path.name}.unreadable-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")
                    os.replace(path, aside)
                    log.error("the run log %s is unreadable (%s); kept as %s, starting a new one", path, exc,
                              aside.name)
            table.meta["comments"] = ["kspec_fluxcal batch run log: one row per RED file and run"]
            with atomic_output(path) as tmp:
                table.write(tmp, format="ascii.ecsv", overwrite=True)
    except OSError as exc:
        raise OutputWriteError(
            f"cannot write the run log {path}: {exc.strerror or exc}; check that its folder is writable and has "
            "free space (the run log is unchanged)."
        ) from exc
    return path
