"""Benchmark of the template library cache and of PreparedGrid.build (a script, not a test).

Writes (once) the 520-model BOSZ subgrid as a SYNTHETIC BOSZ-format grid at
R = 10 000 over 500–320 000 Å with `kspec_fluxcal.simulate.write_bosz_grid`,
then times, each phase in a fresh Python process with its own peak memory:

* ``ingest``      first ingestion of the library into the binary cache;
* ``cold-load``   opening the library and memory-mapping the cached grid;
* ``cold-verify`` the same after deleting the "verified" stamp, i.e. with a
  full checksum pass over the 624 MB (what happens after the cache files
  changed);
* ``build-cold``  PreparedGrid.build, band sums not cached yet;
* ``build-bands`` PreparedGrid.build, band sums cached (instrument part only);
* ``build-hit``   PreparedGrid.build when the prepared grid itself is cached.

The frame is 12 000 pixels, 3600–9800 Å, FWHM 2.0 Å, all registered bands,
41 E(B−V) values. Targets: cache load ≤ 1 s, whole-grid preparation ≤ 2 s,
memory ≤ 2 GB.

Usage::

    python benchmarks/bench_templates.py [--grid DIR] [--cache DIR]

``--grid`` defaults to ``$TMPDIR/kspec_bench_bosz_r10000`` (written when
missing, ~30 s, 450 MB); ``--cache`` defaults to a fresh temporary folder
(removed at the end).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_GRID, synthetic_subgrid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout too

TARGET = (3600.0, 9800.0, 12000)
FWHM = 2.0


def _phase(name, grid):
    """Run one phase in this process; return its timings."""
    import numpy as np

    t0 = time.perf_counter()
    from kspec_fluxcal.photometry import REGISTERED_BANDS, band_flux_weights
    from kspec_fluxcal.templates import PreparedGrid, TemplateLibrary

    out = {"import_s": time.perf_counter() - t0}
    if name.startswith("build"):
        # load the filter curves first: a once-per-process cost, reported apart
        t0 = time.perf_counter()
        for band in REGISTERED_BANDS:
            band_flux_weights(np.linspace(500.0, 320000.0, 1000), band)
        out["filters_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    lib = TemplateLibrary(grid)
    out["open_s"] = time.perf_counter() - t0
    if name in ("ingest", "cold-load", "cold-verify"):
        t0 = time.perf_counter()
        wave, flux, cont, entries = lib.load_grid()
        out["grid_s"] = time.perf_counter() - t0
        out["shape"] = list(flux.shape)
        out["total_s"] = out["open_s"] + out["grid_s"]
    else:
        lib.load_grid()  # memory-map (the cold-load phase times this)
        target = np.linspace(*TARGET)
        t0 = time.perf_counter()
        prepared = PreparedGrid.build(lib, target, FWHM)
        out["total_s"] = time.perf_counter() - t0
        out["shape"] = list(prepared.flux.shape)
        out["key"] = prepared.key
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def _run(name, grid, cache):
    env = dict(os.environ, KSPEC_FLUXCAL_CACHE=str(cache))
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--grid", str(grid)],
        env=env, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"phase {name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, default=DEFAULT_GRID)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.phase:
        print(json.dumps(_phase(args.phase, args.grid)))
        return 0

    synthetic_subgrid(args.grid)

    cache = args.cache or Path(tempfile.mkdtemp(prefix="kspec_bench_cache_"))
    try:
        results = {}
        for name in ("ingest", "cold-load"):
            results[name] = _run(name, args.grid, cache)
        for stamp in cache.glob("templates/*/grid/verified.json"):
            stamp.unlink()  # forces the full checksum verification
        results["cold-verify"] = _run("cold-verify", args.grid, cache)
        results["build-cold"] = _run("build-cold", args.grid, cache)
        key = results["build-cold"]["key"]
        shutil.rmtree(cache / "prepared" / key)  # keep the band sums, drop the prepared grid
        results["build-bands"] = _run("build-bands", args.grid, cache)
        results["build-hit"] = _run("build-hit", args.grid, cache)
    finally:
        if args.cache is None:
            shutil.rmtree(cache, ignore_errors=True)

    shape = results["ingest"]["shape"]
    print(f"\ngrid: {shape[0]} models x {shape[1]} wavelengths (R = 10 000, 500-320 000 A), float32")
    print(f"frame: {TARGET[2]} pixels {TARGET[0]:.0f}-{TARGET[1]:.0f} A, FWHM {FWHM} A, all registered bands, "
          "41 E(B-V)\n")
    labels = {
        "ingest": "(a) first ingestion into the binary cache",
        "cold-load": "(b) cold load from the binary cache",
        "cold-verify": "(b) the same, re-verifying all checksums",
        "build-cold": "(c) PreparedGrid.build, band sums computed",
        "build-bands": "(c) PreparedGrid.build, band sums cached",
        "build-hit": "    PreparedGrid.build, prepared grid cached",
    }
    print(f"{'phase':46s} {'time [s]':>9s} {'peak RSS [MB]':>14s}")
    for name, label in labels.items():
        r = results[name]
        print(f"{label:46s} {r['total_s']:9.2f} {r['maxrss_mb']:14.0f}")
    print(f"\n(module import {results['cold-load']['import_s']:.2f} s and first filter-curve load "
          f"{results['build-cold']['filters_s']:.2f} s per process are not included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
