"""Batch reduction: many RED files calibrated in parallel on Dask.

`calibrate_batch` (and ``kspec-fluxcal batch``) runs `~kspec_fluxcal.pipeline.apply_fluxcal`
on every RED file of a night, one task per file, on a
``distributed.LocalCluster`` of worker *processes* or on an existing
``dask.distributed`` scheduler (e.g. ``tcp://host:8786``, a multi-node
cluster whose nodes share the filesystem).

* **One template preparation.** Frames taken with one set-up (instrument
  FWHM) are calibrated against one prepared template grid, on a wavelength
  grid uniform in ln λ that spans all of them. The driver prepares the grid of
  the most common set-up once with `~kspec_fluxcal.templates.PreparedGrid.build`
  before any task starts; it lands in the on-disk cache, and every worker's
  own ``build`` of the same grid is a cache hit that memory-maps the cached
  arrays, so the page cache holds one copy shared by all worker processes.
  Frames with another set-up prepare theirs in their first task (cached for
  the others). The cache folder is the driver's (``$KSPEC_FLUXCAL_CACHE`` or
  the user cache): the tasks use it, so on a multi-node cluster it must be a
  folder of the shared filesystem, at the same path on every node — as must
  the template library and the RED files.
* **Failures stay alone.** Every exception of a task becomes a failed record
  with its reason; the other files complete.
* **Re-runs skip finished files**: a file whose target (the file itself, or
  its namesake in ``output_dir``) has ``FLUXCAL = T`` (and, with
  ``products``, whose product exists) is skipped unless ``force``.
* **Workers may die, the scheduler may go.** A task on a worker that dies is
  run again on another worker by the scheduler (up to
  ``distributed.scheduler.allowed-failures`` times); the temporary file a
  killed task leaves beside its target is removed when the batch ends. When
  the scheduler goes away, the files whose results did not come back are
  recorded as ``unfinished`` and `calibrate_batch` raises
  `~kspec_fluxcal.exceptions.BatchIncompleteError` naming them; a re-run
  finishes them.
* **A run log**: every batch appends its records to the ECSV run log
  (`kspec_fluxcal.runlog`) beside its outputs.
* **Catalogues** come from one file for all frames, a list or dict, or a
  folder searched with `CATALOG_PATTERNS`.

dask and distributed are an optional dependency (``pip install
kspec_fluxcal[batch]``); they are imported when a batch runs.
"""

import glob
import logging
import os
import time
import warnings
from collections import Counter
from concurrent.futures import CancelledError
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning

from .cache import cache_dir
from .exceptions import BatchIncompleteError, InputDataError, KspecFluxcalError, OutputWriteError
from .pipeline import FluxcalConfig, instrument_fwhm, read_red_frame, resolve_template_library
from .runlog import RUN_LOG_NAME, append_run_log, new_run_id, run_log_table
from .wavelength import log_uniform_grid

__all__ = ["BatchRecord", "find_catalog", "dask_client", "calibrate_batch", "summary_table"]

log = logging.getLogger(__name__)

CATALOG_PATTERNS = ("{stem}.csv", "{stem}_refcat.csv", "{base}_refcat.csv", "{base}.csv")
"""Names tried, in order, for the catalogue of ``<stem>.fits`` in a catalogue folder.

``{base}`` is the stem without a trailing ``_red`` (``night1_0042_red.fits`` →
``night1_0042_refcat.csv``, the layout `kspec_fluxcal.simulate` writes).
"""

WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""Environment of LocalCluster worker processes: one BLAS/OpenMP thread each.

Each worker is a process running one task at a time; with N workers on N
cores, BLAS threads in every worker would oversubscribe the cores (N × N
threads) and run slower than one thread per process.
"""


@dataclass
class BatchRecord:
    """What happened to one RED file of a batch.

    Attributes
    ----------
    file : str
        The RED file.
    status : {'ok', 'failed', 'skipped', 'unfinished'}
        ``unfinished``: the scheduler was lost before the file's result came
        back (the file may or may not have been written; a re-run sees).
    output : str
        The calibrated file ('' when none was written).
    n_standards : int or None
        Standards used.
    rms : float or None
        Fractional rms scatter between the standards.
    seconds : float
        Wall time of the task (s).
    reason : str
        Why it failed or was skipped; for a fallback, that the nightly
        calibration was applied.
    fallback : bool
        The nightly fallback calibration was applied.
    worker : str
        Address of the Dask worker that ran the task ('' when none did).
    """

    file: str
    status: str
    output: str = ""
    n_standards: int = None
    rms: float = None
    seconds: float = 0.0
    reason: str = ""
    fallback: bool = False
    worker: str = ""


def _import_distributed():
    try:
        import dask
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise KspecFluxcalError(
            "batch reduction needs dask and distributed; install them with "
            "'pip install kspec_fluxcal[batch]' (or 'pip install \"dask[distributed]\"')."
        ) from exc
    return dask, Client, LocalCluster, as_completed


def find_catalog(red_file, catalog_dir):
    """The catalogue of ``red_file`` in ``catalog_dir``, by `CATALOG_PATTERNS`.

    Raises
    ------
    InputDataError
        None of the names exists (they are listed).
    """
    stem = Path(red_file).name.split(".")[0]
    base = stem[:-4] if stem.endswith("_red") else stem
    tried = []
    for pattern in CATALOG_PATTERNS:
        candidate = Path(catalog_dir) / pattern.format(stem=stem, base=base)
        if candidate.is_file():
            return candidate
        if candidate.name not in tried:
            tried.append(candidate.name)
    raise InputDataError(f"no catalogue for {Path(red_file).name} in {catalog_dir} (tried {', '.join(tried)}).")


def _catalogs_for(red_files, catalogs):
    """One catalogue path (or an exception to report) per RED file."""
    if catalogs is None:
        return [None] * len(red_files)
    if isinstance(catalogs, dict):
        by_name = {Path(k).name: v for k, v in catalogs.items()}
        return [Path(by_name[r.name]) if r.name in by_name else
                InputDataError(f"no catalogue given for {r.name}.") for r in red_files]
    if isinstance(catalogs, (list, tuple)):
        if len(catalogs) != len(red_files):
            raise InputDataError(f"{len(catalogs)} catalogues for {len(red_files)} RED files; give one per file.")
        return [Path(c) for c in catalogs]
    catalogs = Path(catalogs)
    if catalogs.is_dir():
        out = []
        for red in red_files:
            try:
                out.append(find_catalog(red, catalogs))
            except InputDataError as exc:
                out.append(exc)
        return out
    return [catalogs] * len(red_files)


def _setup(red_file, config):
    """(FWHM key, ln λ start, ln λ end, ln λ step) of a frame, or None when it cannot be read here.

    The frame is read and validated as the pipeline reads it. One that cannot be
    read is left to its task, which fails with the reason.
    """
    try:
        with warnings.catch_warnings():
            # the task reads the file again and reports what is wrong with it
            warnings.simplefilter("ignore", AstropyUserWarning)
            frame = read_red_frame(red_file)
        fwhm, poly = instrument_fwhm(config, frame.header)
    except (OSError, ValueError, KspecFluxcalError):
        return None
    wave = frame.wavelength
    step = float(np.median(np.diff(np.log(wave), axis=1)))
    return (fwhm, tuple(poly) if poly else None), float(np.log(wave[:, 0].min())), float(
        np.log(wave[:, -1].max())), step


def _grid_specs(setups):
    """Per set-up key, the shared target grid (Å) spanning all its frames with their median step."""
    specs = {}
    for key in {s[0] for s in setups if s is not None}:
        group = [s for s in setups if s is not None and s[0] == key]
        lo, hi = min(s[1] for s in group), max(s[2] for s in group)
        step = float(np.median([s[3] for s in group]))
        specs[key] = log_uniform_grid(np.exp(lo), np.exp(hi), step, include_stop=True)
    return specs


def _calibrate_one(red_file, catalog, config, grid_wave, setup_key, cache_root):
    """Task body: calibrate one file and return its record as a dict (never raises)."""
    from .pipeline import apply_fluxcal
    from .templates import PreparedGrid, TemplateLibrary

    start = time.perf_counter()
    worker = _worker_address()
    try:
        # the driver's cache, so that the grid it prepared is a hit here (memory-mapped, not rebuilt)
        os.environ["KSPEC_FLUXCAL_CACHE"] = str(cache_root)
        grid = None
        if grid_wave is not None:
            fwhm, poly = setup_key
            grid = PreparedGrid.build(TemplateLibrary(config.templates, correction=config.template_correction),
                                      grid_wave, fwhm, fwhm_poly_coeffs=poly)
        run = apply_fluxcal(red_file, replace(config, catalog=catalog), grid=grid)
        summary = run.result.summary
        with fits.open(run.output, memmap=True) as hdul:
            fallback = bool(hdul[0].header.get("FCALFALL", False))
        rms = summary.get("rms_scatter")
        return asdict(BatchRecord(
            file=str(red_file), status="ok", output=str(run.output), n_standards=int(summary["n_stars_used"]),
            rms=float(rms) if rms is not None and np.isfinite(rms) else None,
            seconds=time.perf_counter() - start, fallback=fallback, worker=worker,
            reason="nightly fallback calibration applied" if fallback else ""))
    except Exception as exc:  # noqa: BLE001 — every failure of one file becomes its record
        reason = " ".join(str(exc).split())
        if not isinstance(exc, KspecFluxcalError):
            reason = f"{type(exc).__name__}: {reason}"
        return asdict(BatchRecord(file=str(red_file), status="failed", seconds=time.perf_counter() - start,
                                  reason=reason, worker=worker))


def _worker_address():
    """Address of the Dask worker running this task ('' outside a worker)."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return ""


def _is_calibrated(path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a damaged file is not a finished one
            return bool(fits.getheader(path).get("FLUXCAL", False))
    except (OSError, ValueError, IndexError, Warning):
        return False


CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a scheduler given by address to answer (``--connect-timeout``; distributed's own is 30 s)."""

WORKER_WAIT = 120.0
"""Seconds to wait for the first worker of a scheduler given by address."""


def _connect(Client, scheduler, connect_timeout):
    """A ``distributed.Client`` of the scheduler at ``scheduler``, or `InputDataError` within ``connect_timeout``."""
    try:
        timeout = float(connect_timeout)
    except (TypeError, ValueError):
        timeout = float("nan")
    if not timeout > 0:
        raise InputDataError(f"connect timeout must be a positive number of seconds; got {connect_timeout!r}.")
    try:
        client = Client(scheduler, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 — whatever answers (or not) at the address, it is no usable scheduler
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise InputDataError(
            f"cannot reach a Dask scheduler at {scheduler} within {timeout:g} s ({detail}); check the address and "
            "that the scheduler runs and its port is open, or allow longer with --connect-timeout."
        ) from None
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT)
    except (TimeoutError, OSError) as exc:
        client.close()
        raise InputDataError(
            f"the Dask scheduler at {scheduler} has no worker after {WORKER_WAIT:g} s; start workers with "
            f"'dask worker {scheduler}'."
        ) from exc
    return client


@contextmanager
def dask_client(workers=2, scheduler=None, connect_timeout=CONNECT_TIMEOUT):
    """A ``distributed.Client`` for batch work, closed (with its cluster) on exit.

    Parameters
    ----------
    workers : int
        Worker processes of a new ``LocalCluster`` (one thread each, one
        BLAS thread each: `WORKER_ENV`; no dashboard).
    scheduler : str, optional
        Address of a running scheduler to connect to instead (waits up to
        `WORKER_WAIT` for a worker).
    connect_timeout : float
        Seconds the scheduler at ``scheduler`` has to answer.

    Yields
    ------
    distributed.Client

    Raises
    ------
    InputDataError
        The scheduler cannot be reached within ``connect_timeout`` (or does
        not speak Dask), or has no worker within `WORKER_WAIT`.
    """
    dask, Client, LocalCluster, _ = _import_distributed()
    if scheduler:
        with _connect(Client, scheduler, connect_timeout) as client:
            yield client
        return
    workers = int(workers)
    if workers < 1:
        raise InputDataError(f"workers must be at least 1; got {workers}.")
    # BLAS/OpenMP read their thread counts when numpy is imported, which can happen before the Nanny's `env`
    # is applied in the new process; "pre-spawn-environ" is set before the process starts, `env` after.
    pre_spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_ENV}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}):
        # the scheduler's HTTP server always starts; on a free local port, not the default 8787, which a second
        # cluster would find taken (and warn); no dashboard on it
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address="127.0.0.1:0",
                               scheduler_kwargs={"dashboard": False}, env=dict(WORKER_ENV))
    with cluster, Client(cluster) as client:
        yield client


def calibrate_batch(red_files, catalogs, config=None, workers=2, scheduler=None, output_dir=None, force=False,
                    products=False, run_log=True, connect_timeout=CONNECT_TIMEOUT):
    """Calibrate many RED files in parallel on Dask.

    Parameters
    ----------
    red_files : list of str or Path
        The RED files.
    catalogs : str, Path, list, dict or None
        One Refcat2 CSV for every file; a folder, searched per file with
        `CATALOG_PATTERNS`; a list (one per file) or a dict (file name →
        catalogue). None only with ``config.calibration``.
    config : `~kspec_fluxcal.pipeline.FluxcalConfig`, optional
        Options of every file (``catalog``, ``output`` and ``force`` are set
        per file).
    workers : int
        Worker processes of the LocalCluster (one thread each); ignored with
        ``scheduler``.
    scheduler : str, optional
        Address of a running ``dask.distributed`` scheduler
        (``tcp://host:8786``); its workers must see the files, the template
        library and the cache folder at the same paths.
    connect_timeout : float
        Seconds the scheduler at ``scheduler`` has to answer (default
        `CONNECT_TIMEOUT`); it is reached before any work starts.
    output_dir : str or Path, optional
        Write calibrated files here under their own names; default: rewrite
        each file in place (atomically).
    force : bool
        Calibrate again files whose target has ``FLUXCAL = T``.
    products : bool
        Also write each calibration as a product ``<stem>_fluxcal.fits``
        beside the calibrated file (for ``combine-night``).
    run_log : bool, str or Path
        True: append the records to the run log ``kspec_fluxcal_runlog.ecsv``
        (`kspec_fluxcal.runlog`) of each output folder (``output_dir``, or
        the folder of each file rewritten in place); a path: append them all
        to that file; False: no run log. A run log that cannot be written is
        an error in the log, not of the batch (the files are done).

    Returns
    -------
    list of `BatchRecord`
        One per RED file, in the order given.

    Raises
    ------
    InputDataError
        Bad batch options (no files, ``config.output`` or
        ``config.save_calibration`` set, two files of one name with
        ``output_dir``, a missing template library), or a scheduler that
        cannot be reached within ``connect_timeout``.
    BatchIncompleteError
        The scheduler was lost: the unfinished files are named (its
        ``records`` hold every file's record; the run log is written first).
    KspecFluxcalError
        dask/distributed are not installed.
    """
    config = config if isinstance(config, FluxcalConfig) else FluxcalConfig.from_args(config)
    if config.output is not None:
        raise InputDataError("config.output names one file; a batch writes to output_dir (or in place).")
    if config.save_calibration is not None:
        raise InputDataError("config.save_calibration names one file; a batch writes one product per file with "
                             "products=True.")
    red_files = [Path(p).resolve() for p in red_files]
    if not red_files:
        raise InputDataError("no RED files given.")
    names = Counter(r.name for r in red_files)
    if output_dir is not None and max(names.values()) > 1:
        dup = [n for n, c in names.items() if c > 1]
        raise InputDataError(f"several RED files are named {', '.join(dup)}; they would overwrite each other in "
                             "the output folder.")
    if catalogs is None and config.calibration is None:
        raise InputDataError("no catalogue given: pass a catalogue file, a folder of catalogues or a calibration.")
    _import_distributed()
    cats = _catalogs_for(red_files, catalogs)
    if output_dir is not None:
        output_dir = Path(output_dir).resolve()
        output_dir.mkdir(parents=True, exist_ok=True)
    # absolute paths: worker processes (on other nodes, too) need not share the driver's working folder
    config = replace(config, **{name: Path(getattr(config, name)).resolve() for name in ("calibration", "fallback",
                                                                                          "plots")
                                if getattr(config, name) is not None})
    if config.calibration is None:
        library = resolve_template_library(config)
        # the resolved template correction (or 'none') travels with the tasks: workers need not read its file
        config = replace(config, templates=library.path, template_correction=library.correction or "none")

    records, tasks = {}, []
    for i, (red, cat) in enumerate(zip(red_files, cats)):
        target = output_dir / red.name if output_dir is not None else red
        if isinstance(cat, Exception):
            records[i] = BatchRecord(file=str(red), status="failed", reason=str(cat))
        elif not force and target.exists() and _is_calibrated(target) and (not products or _product(target).exists()):
            records[i] = BatchRecord(file=str(red), status="skipped", output=str(target),
                                     reason="calibrated already (FLUXCAL = T); --force calibrates it again")
        else:
            product = _product(target) if products else None
            file_config = replace(config, output=None if output_dir is None else target, force=force,
                                  save_calibration=product)
            tasks.append((i, red, None if cat is None else cat.resolve(), file_config))
    for i in sorted(records):
        log.info("%s: %s (%s)", Path(records[i].file).name, records[i].status, records[i].reason)
    if tasks:
        _run(tasks, records, config, workers, scheduler, connect_timeout)
        ended = [t for t in tasks if records[t[0]].status != "unfinished"]  # an unfinished task may still write
        _remove_partials([t[3].output or t[1] for t in ended] + [t[3].save_calibration for t in ended
                                                                  if t[3].save_calibration is not None])
    result = [records[i] for i in range(len(red_files))]
    if run_log:
        _write_run_logs(result, output_dir, None if run_log is True else Path(run_log))
    unfinished = [Path(r.file).name for r in result if r.status == "unfinished"]
    if unfinished:
        raise BatchIncompleteError(
            f"the Dask scheduler was lost; {len(unfinished)} of {len(result)} files are unfinished: "
            f"{', '.join(unfinished)}. Run the batch again: finished files are skipped.", records=result)
    return result


def _product(target):
    return target.with_name(target.name.split(".")[0] + "_fluxcal.fits")


def _remove_partials(targets):
    """Remove the temporary files (``.<name>.*.part``) that killed tasks left beside ``targets``.

    Called with the targets of tasks that have ended (their record came
    back): no live writer owns these files.
    """
    for target in targets:
        target = Path(target)
        for part in target.parent.glob(f".{glob.escape(target.name)}.*.part"):
            part.unlink(missing_ok=True)
            log.info("removed %s, left by a task that did not finish", part)


def _write_run_logs(records, output_dir, path):
    """Append the records to the run log of each output folder (or to ``path``); errors are logged."""
    if path is not None:
        groups = {path: records}
    elif output_dir is not None:
        groups = {output_dir / RUN_LOG_NAME: records}
    else:
        groups = {}
        for record in records:
            groups.setdefault(Path(record.file).parent / RUN_LOG_NAME, []).append(record)
    run_id = new_run_id()
    for log_path, group in groups.items():
        try:
            append_run_log(log_path, run_log_table(group, run_id))
        except OutputWriteError as exc:
            log.error("%s", exc)


def _run(tasks, records, config, workers, scheduler, connect_timeout=CONNECT_TIMEOUT):
    """Reach the cluster, prepare the common grid, submit the tasks and collect their records as they complete."""
    from .templates import PreparedGrid, TemplateLibrary

    _, _, _, as_completed = _import_distributed()
    specs, setups = {}, [None] * len(tasks)
    with dask_client(workers, scheduler, connect_timeout) as client:  # an unreachable scheduler fails first
        if config.calibration is None:
            setups = [_setup(red, config) for _, red, _, _ in tasks]
            specs = _grid_specs(setups)
            counts = Counter(s[0] for s in setups if s is not None)
            if counts:
                key = counts.most_common(1)[0][0]
                log.info("preparing the template grid for the common set-up of %d of %d frames (FWHM %s Å) once",
                         counts[key], len(tasks), key[0] if key[0] is not None else key[1])
                PreparedGrid.build(TemplateLibrary(config.templates, correction=config.template_correction),
                                   specs[key], key[0], fwhm_poly_coeffs=key[1])
        cache_root = cache_dir()
        start = time.perf_counter()
        futures = {}
        for (i, red, cat, file_config), setup in zip(tasks, setups):
            key = setup[0] if setup is not None else None
            future = client.submit(_calibrate_one, red, cat, file_config, specs.get(key), key, cache_root,
                                   key=f"kspec-fluxcal-{i}-{red.name}", pure=False)
            futures[future] = (i, red)
        for done, future in enumerate(as_completed(futures), 1):
            i, red = futures[future]
            try:
                record = BatchRecord(**future.result())
            except Exception as exc:  # noqa: BLE001 — a worker lost (killed, out of memory) fails its file only
                if client.status != "running" or isinstance(exc, (CancelledError, OSError)):
                    # the scheduler went away (the futures are cancelled, the comm closed): the task's fate is unknown
                    record = BatchRecord(file=str(red), status="unfinished",
                                         reason="the Dask scheduler was lost before the result came back")
                else:
                    record = BatchRecord(file=str(red), status="failed", reason=f"{type(exc).__name__}: {exc}")
            records[i] = record
            detail = (f"{record.n_standards} standards, rms {_pct(record.rms)}" if record.status == "ok"
                      else record.reason)
            log.info("[%d/%d] %s: %s in %.1f s (%s)", done, len(tasks), red.name, record.status, record.seconds,
                     detail)
    log.info("%d files in %.1f s", len(tasks), time.perf_counter() - start)


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f}%"


def summary_table(records):
    """The batch summary: one row per file (name, status, standards, rms, seconds, worker, reason).

    Returns
    -------
    `~astropy.table.Table`
    """
    table = Table()
    table["file"] = [Path(r.file).name for r in records]
    table["status"] = [r.status for r in records]
    table["n_std"] = [-1 if r.n_standards is None else int(r.n_standards) for r in records]
    table["rms_pct"] = [np.nan if r.rms is None else 100 * r.rms for r in records]
    table["rms_pct"].format = ".2f"
    table["seconds"] = [float(r.seconds) for r in records]
    table["seconds"].format = ".1f"
    table["worker"] = [r.worker or "-" for r in records]
    table["reason"] = [r.reason for r in records]
    return table
