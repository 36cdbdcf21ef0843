"""What the benchmarks share: the SYNTHETIC 520-model BOSZ-format grid they time against."""

import tempfile
import time
from pathlib import Path

DEFAULT_GRID = Path(tempfile.gettempdir()) / "kspec_bench_bosz_r10000"
"""Where the benchmark grid is written when no ``--grid`` is given."""


def synthetic_subgrid(path=DEFAULT_GRID):
    """The 520-model subgrid at R = 10 000 over 500–320 000 Å in ``path``, written once (~30 s, 450 MB)."""
    from kspec_fluxcal.simulate import write_bosz_grid

    path = Path(path)
    if not (path / "README.txt").is_file():
        print(f"writing the SYNTHETIC 520-model R = 10 000 grid into {path} (once) ...", flush=True)
        t0 = time.perf_counter()
        write_bosz_grid(path, resolution=10000, subgrid=True)
        print(f"  written in {time.perf_counter() - t0:.1f} s", flush=True)
    return path
