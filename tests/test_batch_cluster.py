"""A night on a real cluster: ``dask scheduler`` and ``dask worker`` processes, workers that die, a lost scheduler.

The scheduler and the workers are the ``distributed`` command-line programs
on 127.0.0.1 (free ports; the scheduler writes its address to a scheduler
file), each worker in its own working folder, all sharing one cache folder as
on a shared filesystem. ``kspec-fluxcal batch --scheduler`` runs as a
subprocess against them. Faults are injected at known points through the
write gate of ``tests/cluster_gate.py`` (a worker preload), never by a sleep
racing the work. Every process is killed (its process group) when the test
ends, passed or not, and every wait is bounded.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import kspec_fluxcal
from kspec_fluxcal.batch import calibrate_batch
from kspec_fluxcal.runlog import RUN_LOG_NAME, read_run_log

from .conftest import require_module

require_module("distributed")

pytestmark = pytest.mark.slow

STEMS = tuple(f"c_{i:04d}" for i in range(1, 6))
GATE_MODULE = Path(__file__).with_name("cluster_gate.py")
# the folder kspec_fluxcal was imported from: the worktree in development, site-packages when installed
PACKAGE_ROOT = str(Path(kspec_fluxcal.__file__).resolve().parents[1])
WAIT = 180.0


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (PACKAGE_ROOT, env.get("PYTHONPATH"))))
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, **extra)
    return env


def _wait_for(condition, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Cluster:
    """A scheduler and workers as separate process groups; `close` kills them all."""

    def __init__(self, root):
        self.root = root
        self.gate = root / "gate"
        self.gate.mkdir(parents=True)
        self.procs = []
        self.scheduler = None
        self.address = None
        self.workers = {}

    def _spawn(self, args, log_name, **env):
        with open(self.root / log_name, "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT,
                                    env=_env(**env), cwd=self.root, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_scheduler(self, **env):
        sched_file = self.root / f"scheduler-{len(self.procs)}.json"
        self.scheduler = self._spawn(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                      "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--scheduler-file",
                                      str(sched_file)],
                                     f"scheduler-{len(self.procs)}.log", **env)
        self.address = _wait_for(lambda: sched_file.is_file() and json.loads(sched_file.read_text() or "{}").get(
            "address"), "the scheduler file")
        return self.address

    def add_worker(self, name):
        """A worker process (no nanny: SIGKILL ends it for good) in its own working folder."""
        local = self.root / f"worker-{name}"
        local.mkdir()
        proc = self._spawn(["distributed.cli.dask_worker", self.address, "--name", name, "--nthreads", "1",
                            "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(local),
                            "--death-timeout", "60", "--preload", str(GATE_MODULE)],
                           f"worker-{name}.log", KSPEC_TEST_GATE=str(self.gate))
        self.workers[name] = proc
        return proc

    def wait_for_workers(self, n):
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(n, timeout=WAIT)
            return {w["name"]: addr for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()}

    def started(self, pid=None):
        """Names of the RED files whose write began (in worker process ``pid``, or in any)."""
        out = set()
        for marker in self.gate.glob("started-*"):
            red, _, owner = marker.name[len("started-"):].rpartition("-")
            if pid is None or int(owner) == pid:
                out.add(red)
        return out

    def hold(self, *names):
        for name in names:
            (self.gate / f"hold-{name}").touch()

    def release(self):
        for hold in self.gate.glob("hold-*"):
            hold.unlink()

    @staticmethod
    def kill(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def close(self):
        self.release()
        for proc in self.procs:
            self.kill(proc)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "cluster")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def night(tmp_path_factory, write_small_frames):
    """Five small SYNTHETIC frames with their catalogues (<base>_refcat.csv)."""
    return write_small_frames(tmp_path_factory.mktemp("cluster_night"), STEMS, seed=90)


def _reds(folder):
    return [folder / f"{stem}_red.fits" for stem in STEMS]


@pytest.fixture(scope="module")
def reference(night, synthetic_grid_dir, tmp_path_factory):
    """The night calibrated on a LocalCluster of two worker processes."""
    out = tmp_path_factory.mktemp("cluster_reference")
    records = calibrate_batch(_reds(night), night, {"templates": synthetic_grid_dir}, workers=2, output_dir=out,
                              run_log=False)
    assert [r.status for r in records] == ["ok"] * len(STEMS), [r.reason for r in records]
    return out


def _run_cli(night, grid, out, address, timeout=WAIT):
    """``kspec-fluxcal batch`` as a subprocess: (exit status, stdout, stderr)."""
    args = [sys.executable, "-m", "kspec_fluxcal.cli", "batch", *map(str, _reds(night)), "--catalog-dir", str(night),
            "--templates", str(grid), "--output-dir", str(out), "--scheduler", address]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True,
                            start_new_session=True)
    return proc, lambda timeout=timeout: _finish(proc, timeout)


def _finish(proc, timeout):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        Cluster.kill(proc)
        raise AssertionError(f"kspec-fluxcal batch did not end within {timeout:.0f} s") from None
    return proc.returncode, out, err


def _assert_same_data(out, reference):
    """The calibrated data arrays equal the LocalCluster result byte for byte."""
    for stem in STEMS:
        with (fits.open(out / f"{stem}_red.fits", checksum=True) as got,
              fits.open(reference / f"{stem}_red.fits") as ref):
            assert got[0].header["FLUXCAL"] is True
            for ext in ("PRIMARY", "VARIANCE", "FLUXCAL", "FCALSTAR"):
                a, b = got[ext].data, ref[ext].data
                assert a.tobytes() == b.tobytes(), f"{stem} {ext} differs from the LocalCluster result"
            assert np.isfinite(got[0].data).any()


def _no_partials(*folders):
    return [p for folder in folders for p in Path(folder).rglob("*.part")]


def test_batch_on_a_running_cluster_equals_local_cluster(cluster, night, synthetic_grid_dir, reference, tmp_path):
    address = cluster.start_scheduler()
    cluster.add_worker("w1")
    cluster.add_worker("w2")
    workers = cluster.wait_for_workers(2)
    out = tmp_path / "out"
    _, finish = _run_cli(night, synthetic_grid_dir, out, address)
    status, stdout, stderr = finish()
    assert status == 0, stderr
    assert f"{len(STEMS)} calibrated, 0 failed, 0 skipped" in stdout
    _assert_same_data(out, reference)
    log = read_run_log(out / RUN_LOG_NAME)
    assert list(log["state"]) == ["ok"] * len(STEMS)
    assert set(log["worker"]) <= set(workers.values())
    assert not _no_partials(out, night)


def test_worker_killed_mid_batch_and_worker_joining(cluster, night, synthetic_grid_dir, reference, tmp_path):
    address = cluster.start_scheduler()
    first = cluster.add_worker("first")
    cluster.wait_for_workers(1)
    out = tmp_path / "out"
    cluster.hold(*(f"{s}_red.fits" for s in STEMS))  # nothing finishes until the joiner has shown up
    driver, finish = _run_cli(night, synthetic_grid_dir, out, address)
    try:
        # the only worker is writing a file and stays there; the others wait in the scheduler's queue
        _wait_for(lambda: cluster.started(first.pid), "the first worker to begin writing")
        (victim,) = cluster.started(first.pid)
        # a worker joins mid-batch and takes work
        joiner = cluster.add_worker("joiner")
        _wait_for(lambda: cluster.started(joiner.pid), "the joining worker to take a file")
        # the first worker is killed with its temporary file on disk
        assert any(p.name.startswith(f".{victim}.") for p in out.glob(".*.part"))
        Cluster.kill(first)
        cluster.release()
    except BaseException:
        Cluster.kill(driver)
        raise
    status, stdout, stderr = finish()
    assert status == 0, stdout + stderr
    assert f"{len(STEMS)} calibrated, 0 failed, 0 skipped" in stdout
    _assert_same_data(out, reference)
    log = read_run_log(out / RUN_LOG_NAME)
    workers = dict(zip((Path(f).name for f in log["file"]), log["worker"]))
    joiner_address = workers[victim]  # the killed worker's file was finished by the survivor
    assert joiner_address and all(w == joiner_address for w in workers.values()), workers
    assert cluster.started(joiner.pid) == {f"{s}_red.fits" for s in STEMS}
    assert not _no_partials(out, night)  # the dead worker's temporary file is gone


def test_lost_scheduler_names_the_unfinished_files_and_a_rerun_finishes_them(cluster, night, synthetic_grid_dir,
                                                                              reference, tmp_path):
    address = cluster.start_scheduler()
    worker = cluster.add_worker("w1")
    cluster.wait_for_workers(1)
    out = tmp_path / "out"
    cluster.hold(*(f"{s}_red.fits" for s in STEMS))
    driver, finish = _run_cli(night, synthetic_grid_dir, out, address)
    try:
        _wait_for(lambda: cluster.started(worker.pid), "the worker to begin writing")
        Cluster.kill(cluster.scheduler)
    except BaseException:
        Cluster.kill(driver)
        raise
    status, stdout, stderr = finish(timeout=120)
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("INFO ")]  # progress lines
    assert status == 1 and len(lines) == 1, stderr
    names = [f"{s}_red.fits" for s in STEMS]
    assert lines[0].startswith(f"kspec-fluxcal: error: the Dask scheduler was lost; {len(STEMS)} of {len(STEMS)} "
                               "files are unfinished: " + ", ".join(names)), lines[0]
    assert lines[0].endswith("Run the batch again: finished files are skipped.")
    assert sum(" unfinished " in line for line in stdout.splitlines()) == len(STEMS)
    assert list(read_run_log(out / RUN_LOG_NAME)["state"]) == ["unfinished"] * len(STEMS)
    # the worker is gone with the scheduler, its temporary file left on disk; nothing was written
    Cluster.kill(worker)
    assert not list(out.glob("c_*"))
    assert _no_partials(out)

    cluster.release()
    address = cluster.start_scheduler()
    cluster.add_worker("w2")
    cluster.wait_for_workers(1)
    _, finish = _run_cli(night, synthetic_grid_dir, out, address)
    status, stdout, stderr = finish()
    assert status == 0, stdout + stderr
    assert f"{len(STEMS)} calibrated, 0 failed, 0 skipped" in stdout
    _assert_same_data(out, reference)
    log = read_run_log(out / RUN_LOG_NAME)
    assert list(log["state"]) == ["unfinished"] * len(STEMS) + ["ok"] * len(STEMS)
    assert len(set(log["run"])) == 2
    assert not _no_partials(out, night)


@pytest.mark.parametrize("allowed_failures", [3, 2])
def test_three_workers_killed_in_a_row(cluster, night, synthetic_grid_dir, reference, tmp_path, allowed_failures):
    """Three workers die in a row, each while writing: the fourth finishes the night when the scheduler allows
    three failures per task (Dask's default); when it allows two, the files end as failed in the table (exit 1)."""
    address = cluster.start_scheduler(DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=str(allowed_failures))
    worker = cluster.add_worker("w0")
    cluster.wait_for_workers(1)
    out = tmp_path / "out"
    cluster.hold(*(f"{s}_red.fits" for s in STEMS))  # every worker stops inside its first write
    driver, finish = _run_cli(night, synthetic_grid_dir, out, address)
    try:
        for k in range(1, 4):  # one worker alive at a time: the same tasks are on every worker that dies
            _wait_for(lambda w=worker: cluster.started(w.pid), f"worker {k - 1} to begin writing")
            Cluster.kill(worker)
            worker = cluster.add_worker(f"w{k}")
        if allowed_failures >= 3:
            _wait_for(lambda w=worker: cluster.started(w.pid), "the fourth worker to begin writing")
        cluster.release()
    except BaseException:
        Cluster.kill(driver)
        raise
    status, stdout, stderr = finish()
    lines = {line.split()[0]: line for line in stdout.splitlines() if line.strip().startswith("c_")}
    assert len(lines) == len(STEMS), stdout + stderr
    if allowed_failures >= 3:
        assert status == 0, stdout + stderr
        assert f"{len(STEMS)} calibrated, 0 failed, 0 skipped" in stdout
        _assert_same_data(out, reference)
    else:
        assert status == 1, stdout + stderr  # a batch with failed files: the table says which
        failed = [name for name, line in lines.items() if " failed " in line]
        assert failed and all("KilledWorker" in lines[name] for name in failed), stdout
        assert all(" ok " in line for name, line in lines.items() if name not in failed), stdout
    assert not _no_partials(out, night)
