"""The default ``calibrate`` path fuzzed end to end on SYNTHETIC frames (tests/fuzz_frames.py).

Every draw — coverage anywhere in 3500–10 000 Å (often starting or ending in
a telluric window), pixels 0.25–10 Å, FWHM 1–30 Å, 1–30 standards, per-fiber
wavelength shifts, NaN and masked blocks, dead fibers, negative and saturated
counts, one- or multi-model BOSZ or ck04 libraries — either calibrates with
finite calibrated fibers, or raises the package's own error saying what is
wrong; never another exception, the inputs are untouched and nothing partial
is left. Draws per run: the hypothesis profile of tests/conftest.py (30 by
default, 200 with ``CI`` set). ``REGRESSIONS`` replays the failures that
benchmarks/fuzz_calibrate.py found, each fixed.
"""

import tempfile
import warnings

import pytest
from hypothesis import given

from .fuzz_frames import Draw, calibrate_draw, frames, write_libraries

REGRESSIONS = {
}
"""Draws that once broke the contract (found by benchmarks/fuzz_calibrate.py): id → (draw JSON, what broke)."""


@pytest.fixture(scope="module")
def libraries(tmp_path_factory):
    return write_libraries(tmp_path_factory.mktemp("fuzz_libraries"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_draws")


def _check(draw, scratch, libraries):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warnings are allowed (partial bandpasses, resolution, units)
        folder = tempfile.mkdtemp(dir=scratch)
        return calibrate_draw(draw, folder, libraries)


@given(draw=frames())
def test_calibrate_never_fails_but_with_a_package_error(draw, scratch, libraries):
    _check(draw, scratch, libraries)


def test_a_clean_frame_calibrates(scratch, libraries):
    """The contract's success branch is reached: a frame of usable standards calibrates."""
    draw = Draw(lo=3700.0, hi=9500.0, step=2.5, fwhm=10.0, n_standards=6, library="bosz4", seed=3)
    assert _check(draw, scratch, libraries) == ("ok", None)


@pytest.mark.parametrize("key", sorted(REGRESSIONS))
def test_fuzz_regression(key, scratch, libraries):
    text, _ = REGRESSIONS[key]
    _check(Draw.from_json(text), scratch, libraries)
