"""The CALSPEC template correction on real stars (a script, not a test).

Three tables, all with the real Castelli–Kurucz subset and the real CALSPEC
spectra of ``../shared/data`` (FWHM 30 Å, 621 pixels over 3600–9800 Å,
compared with the injected throughput over 3800–9200 Å outside the telluric
bands; pulls include the correction's misfit term in CAL_VARIANCE):

1. **leave one star out** — for each usable star, the correction derived
   from the other three, applied to one-standard frames of that star, against
   no correction (`kspec_fluxcal.calspec_correction.leave_one_star_out`);
2. **shipped correction, all four usable stars in one frame** — in-sample,
   for reference (the stars were used to derive it);
3. the correction curve itself at a few wavelengths.

Usage::

    python benchmarks/bench_template_correction.py [--shared ../shared/data] [--seeds 1 2 3 4]

About 2 minutes on 2 cores with 4 seeds.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from kspec_fluxcal.calspec_correction import calspec_frame_accuracy, leave_one_star_out
from kspec_fluxcal.templates.correction import TemplateCorrection, shipped_correction_path

FIGURES = ("median_abs_error", "p95_abs_error", "pull_rms")


def _line(label, rows):
    med = " ".join(f"{100 * v:5.2f}" for v in rows["median_abs_error"])
    p95 = " ".join(f"{100 * v:5.2f}" for v in rows["p95_abs_error"])
    pull = " ".join(f"{v:5.2f}" for v in rows["pull_rms"])
    return f"{label:28s} median% [{med}]  p95% [{p95}]  pull rms [{pull}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    args = parser.parse_args()
    calspec = sorted((args.shared / "calspec").glob("*.fits*"))
    ck04 = args.shared / "ck04models"
    start = time.perf_counter()

    print("1. leave one star out (correction derived without the star) vs none; one standard per frame")
    table, corrections = leave_one_star_out(calspec, ck04, seeds=args.seeds)
    for star in corrections:
        for case in ("none", "leave-one-out"):
            print(_line(f"  {star} {case}", table[(table["star"] == star) & (table["case"] == case)]))
    for case in ("none", "leave-one-out"):
        rows = table[table["case"] == case]
        print(f"  pooled {case:14s}: median {100 * np.median(rows['median_abs_error']):.2f}%, worst p95 "
              f"{100 * np.max(rows['p95_abs_error']):.2f}%, pooled pull rms "
              f"{np.sqrt(np.mean(np.square(rows['pull_rms']))):.2f}")

    print("2. shipped correction, the four usable stars in one frame (in-sample)")
    shipped = TemplateCorrection.read(shipped_correction_path("ck04models"))
    usable = [f for f in calspec if f.name.split("_stis")[0] in shipped.meta["used_stars"]]
    for case in ("none", "auto"):
        rows = [calspec_frame_accuracy(usable, ck04, case, seed) for seed in args.seeds]
        print(_line(f"  4 stars {case}", {k: [r[k] for r in rows] for k in FIGURES}))

    print("3. the shipped correction (factor, 1σ) at a few wavelengths")
    for w in (3700, 3900, 4100, 4300, 4500, 5000, 6000, 7000, 8000, 8900, 9500):
        print(f"  {w:5d} Å  factor {shipped.factor_at([w])[0]:.4f}  1σ {100 * shipped.fractional_sigma([w])[0]:.2f}%")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
