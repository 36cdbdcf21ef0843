"""Fuzz the default ``calibrate`` path for N minutes; save every failing frame for a regression test.

Draws SYNTHETIC frames with the strategy of tests/fuzz_frames.py (coverage
anywhere in 3500–10 000 Å, pixels 0.25–10 Å, FWHM 1–30 Å, 1–30 standards,
per-fiber shifts, damaged pixels and fibers, one- and multi-model BOSZ and
ck04 libraries) and checks each with `fuzz_frames.calibrate_draw`: success
with finite calibrated fibers, or a package error that says what is wrong —
never another exception, the inputs untouched, nothing partial. A draw that
breaks the contract is saved as ``<failures>/<id>/`` (draw.json, the RED file,
the catalogue, error.txt); tests/test_fuzz.py replays the draws listed in
its ``REGRESSIONS``.

Run from the repository root, niced (the machine is shared)::

    nice -n 10 python benchmarks/fuzz_calibrate.py --minutes 10 --failures fuzz_failures

It prints one line per draw and a summary: draws, successes, package errors
by type, contract failures.
"""

import argparse
import collections
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz_frames import Draw, calibrate_draw, frames, save_failure, write_libraries  # noqa: E402


def _draws():
    """An endless stream of `Draw` from the hypothesis strategy."""
    strategy = frames()
    while True:
        yield strategy.example()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="fuzz this long (default 5)")
    parser.add_argument("--failures", type=Path, default=Path("fuzz_failures"),
                        help="folder for failing draws (default ./fuzz_failures)")
    parser.add_argument("--replay", type=Path, nargs="*", default=[],
                        help="instead of fuzzing, run these draw.json files again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="kspec_fuzz_"))
    os.environ.setdefault("KSPEC_FLUXCAL_CACHE", str(work / "cache"))
    libraries = write_libraries(work / "libraries")
    source = (Draw.from_json(p.read_text()) for p in args.replay) if args.replay else _draws()
    end = time.monotonic() + 60.0 * args.minutes
    counts = collections.Counter()
    failures = []
    for k, draw in enumerate(source):
        if not args.replay and time.monotonic() > end:
            break
        folder = work / f"draw{k:05d}"
        folder.mkdir()
        start = time.monotonic()
        try:
            outcome, message = calibrate_draw(draw, folder, libraries)
        except Exception as exc:  # the contract is broken: keep the frame
            error = "".join(traceback.format_exception(exc))
            saved = save_failure(draw, folder, args.failures, error)
            failures.append(saved)
            outcome, message = "FAILED", f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]} -> {saved}"
        counts[outcome if outcome != "error" else message.split(":")[0]] += 1
        print(f"[{k}] {time.monotonic() - start:5.1f} s {draw.to_json()}\n    {outcome} {message or ''}",
              flush=True)
    print(f"\n{sum(counts.values())} draws: " + ", ".join(f"{n} {name}" for name, n in counts.most_common()))
    print(f"{len(failures)} contract failures" + "".join(f"\n  {p}" for p in failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
