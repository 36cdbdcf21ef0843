"""Benchmark of batch reduction on Dask (a script, not a test): exposures per minute and memory per worker.

8 SYNTHETIC exposures (`kspec_fluxcal.simulate.make_exposure`: 20 standards,
10 science and 2 sky fibers, 12 000 pixels, 3600–9800 Å, FWHM 2 Å) are
calibrated with `kspec_fluxcal.batch.calibrate_batch` against the 520-model
BOSZ subgrid written as a SYNTHETIC BOSZ-format grid at R = 10 000, on a
LocalCluster of 1 and then 2 worker processes (one thread, one BLAS thread
each).

Phases:

* ``first batch`` (2 workers): the driver prepares the template grid unless
  the cache holds it from an earlier run (the library's binary cache is built
  before), the workers start, import the package and load the filter curves;
* ``1 worker`` / ``2 workers``: the same 8 exposures again (``force``), best of
  ``--repeat`` batches on a fresh cluster whose workers were warmed up
  (imports and filter curves, a once-per-process cost); the prepared grid is
  a cache hit in the driver and in every task (memory-mapped).

Reported: wall time of each batch, exposures per minute, the speed-up from 1
to 2 workers, and the peak RSS of every worker process. Targets on 2 cores:
≥ 1.7× from 1 to 2 workers, ≤ 1.5 GB per worker.

``--night`` instead reduces a night as the pipeline would: 20 exposures
(``--exposures`` to change it) in one batch on a fresh LocalCluster of 2
workers (worker start-up included; the prepared grid from the cache when an
earlier run put it there), reporting exposures per minute and the peak RSS of
each worker.

Usage::

    python benchmarks/bench_batch.py [--grid DIR] [--exposures N] [--repeat N] [--keep DIR] [--night]

``--grid`` defaults to ``$TMPDIR/kspec_bench_bosz_r10000`` (written when
missing, about 30 s, 450 MB); the cache is ``$KSPEC_FLUXCAL_CACHE`` or
``$TMPDIR/kspec_bench_cache``.
"""

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_GRID, synthetic_subgrid


def _warm_worker():
    """Once-per-process costs of a worker: imports and the filter curves."""
    import numpy as np

    from kspec_fluxcal import pipeline  # noqa: F401
    from kspec_fluxcal.photometry import REGISTERED_BANDS, band_flux_weights

    for band in REGISTERED_BANDS:
        band_flux_weights(np.linspace(500.0, 320000.0, 1000), band)
    return os.getpid()


def _peak_rss_mb():
    """Peak RSS (MB) of this process: VmHWM, which, unlike getrusage's ru_maxrss, restarts at exec.

    ru_maxrss survives fork + exec, so a worker would report the driver's peak when that is larger.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024.0)
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20)


def _batch(reds, folder, config, workers, out, warm, repeat=1):
    """Best wall time of ``repeat`` batches on one cluster, the peak RSS of its workers, the last records."""
    from kspec_fluxcal.batch import calibrate_batch, dask_client

    times = []
    with dask_client(workers) as client:
        if warm:
            client.run(_warm_worker)
        for _ in range(repeat):
            t0 = time.perf_counter()
            records = calibrate_batch(reds, folder, config, scheduler=client.scheduler.address, output_dir=out,
                                      force=True)
            times.append(time.perf_counter() - t0)
        rss = sorted(client.run(_peak_rss_mb).values())
    elapsed = min(times)
    failed = [r for r in records if r.status != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} exposures failed: {failed[0].reason}")
    return elapsed, rss, records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=DEFAULT_GRID)
    parser.add_argument("--exposures", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="warm batches per worker count (best is kept)")
    parser.add_argument("--keep", type=Path, help="write the exposures here and keep them (default: a temp folder)")
    parser.add_argument("--night", action="store_true",
                        help="one batch of a 20-exposure night on 2 workers (exposures/min, peak RSS per worker)")
    args = parser.parse_args()
    if args.night and "--exposures" not in sys.argv:
        args.exposures = 20
    os.environ.setdefault("KSPEC_FLUXCAL_CACHE", str(Path(tempfile.gettempdir()) / "kspec_bench_cache"))
    logging.basicConfig(level=logging.WARNING)
    import distributed  # noqa: F401 — it sets its loggers' levels when imported

    logging.getLogger("distributed").setLevel(logging.WARNING)

    from kspec_fluxcal.pipeline import FluxcalConfig
    from kspec_fluxcal.simulate import make_exposure
    from kspec_fluxcal.templates import TemplateLibrary

    grid = synthetic_subgrid(args.grid)
    TemplateLibrary(grid).load_grid()  # the library's binary cache (benchmarked in bench_templates.py)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="kspec_bench_batch_"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    reds = []
    for i in range(args.exposures):
        stem = f"bench_{i:04d}"
        if not (folder / f"{stem}_red.fits").is_file():
            make_exposure(n_standards=20, n_science=10, n_sky=2, n_pix=12000, fwhm=2.0, seed=100 + i,
                          teff_range=(5200, 7800), logg_range=(3.6, 4.9), feh_range=(-0.95, 0.45)).write(folder, stem)
        reds.append(folder / f"{stem}_red.fits")
    print(f"{len(reds)} exposures ready in {folder} ({time.perf_counter() - t0:.0f} s)")
    config = FluxcalConfig(templates=grid)
    if args.night:
        try:
            night, rss_night, records = _batch(reds, folder, config, 2, folder / "out_night", warm=False)
        finally:
            if args.keep is None:
                shutil.rmtree(folder, ignore_errors=True)
        n = len(reds)
        per_task = sorted(r.seconds for r in records)
        print(f"night: {n} exposures x 20 standards x 520 templates x 12000 px (32 fibers each), 2 workers")
        print(f"  one batch (workers start, grid from the cache)  : {night:6.1f} s  {60 * n / night:6.1f} "
              f"exposures/min  (task median {per_task[len(per_task) // 2]:.2f} s)")
        print(f"  peak RSS per worker, MB                         : {rss_night}  (target <= 1536 MB)")
        print(f"  peak RSS of the driver, MB                      : {_peak_rss_mb()}")
        return
    try:
        cold, rss_cold, _ = _batch(reds, folder, config, 2, folder / "out_cold", warm=False)
        one, rss_one, records = _batch(reds, folder, config, 1, folder / "out_1", warm=True, repeat=args.repeat)
        two, rss_two, _ = _batch(reds, folder, config, 2, folder / "out_2", warm=True, repeat=args.repeat)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    n = len(reds)
    per_task = sorted(r.seconds for r in records)
    print(f"{n} exposures x 20 standards x 520 templates x 12000 px (32 fibers each)")
    print(f"  first batch, 2 workers (workers start; grid    : {cold:6.1f} s  {60 * n / cold:6.1f} exposures/min")
    print("   prepared unless the cache holds it already)")
    print(f"  warm, 1 worker  (best of {args.repeat})                     : {one:6.1f} s  {60 * n / one:6.1f} "
          f"exposures/min  (task median {per_task[len(per_task) // 2]:.2f} s)")
    print(f"  warm, 2 workers (best of {args.repeat})                     : {two:6.1f} s  {60 * n / two:6.1f} "
          "exposures/min")
    print(f"  speed-up 1 -> 2 workers                        : {one / two:6.2f}x  (target >= 1.7x)")
    print(f"  peak RSS per worker, MB (cold | 1 | 2 workers) : {rss_cold} | {rss_one} | {rss_two}  "
          "(target <= 1536 MB)")
    print(f"  peak RSS of the driver, MB                     : {_peak_rss_mb()}")


if __name__ == "__main__":
    main()
