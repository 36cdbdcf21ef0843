"""Benchmark of the whole per-exposure calibration (a script, not a test).

20 standards × 520 templates × 12 000 pixels: matching, photometric scaling,
per-star vectors, combination and application to every fiber, with the
prepared grid warm (loaded from the cache, as for the second exposure of a
night) and cold (first exposure: grid prepared from the binary library cache).

The templates are the 520-model BOSZ subgrid written as a SYNTHETIC
BOSZ-format grid at R = 10 000 (`kspec_fluxcal.simulate.write_bosz_grid`);
the exposure is SYNTHETIC too (`kspec_fluxcal.simulate.make_exposure`).

Usage::

    python benchmarks/bench_engine.py [--grid DIR] [--fibers N] [--repeat N]

``--grid`` defaults to ``$TMPDIR/kspec_bench_bosz_r10000`` (written when
missing, about 30 s, 450 MB). Targets on 2 cores: ≤ 0.5 s warm, peak memory
≤ 2 GB.
"""

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy import units as u
from common import DEFAULT_GRID, synthetic_subgrid

from kspec_fluxcal.apply import apply_flux_calibration
from kspec_fluxcal.catalog import load_standard_star_catalog, match_catalog_to_fibers, photometry_from_catalog_row
from kspec_fluxcal.containers import make_spectrum
from kspec_fluxcal.engine import StandardStar, derive_flux_calibration
from kspec_fluxcal.pipeline import read_red_frame
from kspec_fluxcal.simulate import make_exposure
from kspec_fluxcal.templates import PreparedGrid, TemplateLibrary
from kspec_fluxcal.wavelength import common_log_grid


def _standards(frame, catalog):
    matches = match_catalog_to_fibers(frame.fibres, catalog)
    stars = []
    for m in matches[matches["MATCHED"]]:
        f = int(m["FIBER"])
        spec = make_spectrum(frame.wavelength[f], frame.counts[f], frame.variance[f], flux_unit=frame.counts_unit)
        stars.append(StandardStar(spec, photometry_from_catalog_row(catalog[int(m["CATALOG_ROW"])]),
                                  name=str(m["NAME"]), fiber_id=f))
    return stars


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=DEFAULT_GRID)
    parser.add_argument("--fibers", type=int, default=300, help="fibers the calibration is applied to")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("KSPEC_FLUXCAL_CACHE", str(Path(tempfile.gettempdir()) / "kspec_bench_cache"))

    library = TemplateLibrary(synthetic_subgrid(args.grid))
    library.load_grid()
    folder = Path(tempfile.mkdtemp())
    exposure = make_exposure(n_standards=20, n_science=0, n_sky=0, n_pix=12000, fwhm=2.0, seed=3,
                             teff_range=(5200, 7800), logg_range=(3.6, 4.9), feh_range=(-0.95, 0.45))
    red, cat = exposure.write(folder, stem="bench")
    frame = read_red_frame(red)
    catalog = load_standard_star_catalog(cat)
    stars = _standards(frame, catalog)
    common = common_log_grid(frame.wavelength) * u.AA
    rng = np.random.default_rng(0)
    rows = rng.integers(0, frame.counts.shape[0], args.fibers)
    counts = frame.counts[rows] * u.ct
    variance = frame.variance[rows] * u.ct**2
    wave = frame.wavelength[rows] * u.AA

    stages = {"derive": [], "apply": []}

    def calibrate(grid):
        t = time.perf_counter()
        result = derive_flux_calibration(stars, grid, output_wavelength=grid.wavelength)
        stages["derive"].append(time.perf_counter() - t)
        t = time.perf_counter()
        apply_flux_calibration(counts, variance, result, wavelength=wave)
        stages["apply"].append(time.perf_counter() - t)
        return result

    t0 = time.perf_counter()
    grid = PreparedGrid.build(library, common, 2.0)
    t_prepare = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = calibrate(grid)
    t_cold = time.perf_counter() - t0 + t_prepare
    warm = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        grid = PreparedGrid.build(library, common, 2.0)
        result = calibrate(grid)
        warm.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(stars)} standards x {grid.n_templates} templates x {grid.wavelength.size} px, "
          f"applied to {args.fibers} fibers of {frame.counts.shape[1]} px")
    print(f"  cold (grid prepared + calibration)      : {t_cold:6.2f} s  (preparation {t_prepare:.2f} s)")
    print(f"  warm (grid from cache + calibration)    : {min(warm):6.2f} s  best of {args.repeat}, "
          f"median {np.median(warm):.2f} s")
    print(f"    of which matching+scaling+vectors+combination {min(stages['derive'][1:]):.2f} s, "
          f"application to {args.fibers} fibers {min(stages['apply'][1:]):.2f} s")
    print(f"  peak memory (max RSS)                   : {peak:6.0f} MB")
    print(f"  standards used {result.summary['n_stars_used']}, rms scatter {result.summary['rms_scatter']:.4f}")


if __name__ == "__main__":
    main()
