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
    "knot-step-zero": (
        '{"lo": 6876.195, "hi": 7340.709, "step": 2.1541371693328375, "fwhm": 19.57770772910359, "n_standards": 3, '
        '"n_science": 0, "n_sky": 0, "jitter": 0.22146338036570562, "library": "ck04_4", '
        '"damage": [["dead", 0, 0.9063122325187141, 1.175494351e-38]], "seed": 633}',
        "OverflowError in knot_selection: the median sample step of a grid whose clipped ends repeat was 0",
    ),
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


def test_a_standard_seen_only_in_a_telluric_window_is_rejected_not_fatal(scratch, libraries):
    """Found by the fuzzer: one standard with fewer than 10 pixels outside the masked regions aborted the frame
    with "spectra[0] has only 1 usable pixels"; now that star is rejected, named, and the others calibrate the frame."""
    import numpy as np
    from astropy.io import fits
    from astropy.table import Table

    from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal
    from kspec_fluxcal.simulate import make_exposure

    exp = make_exposure(n_standards=3, n_science=1, n_sky=0, n_pix=300, wave_range=(7450.0, 7750.0), fwhm=3.0,
                        wavelength_jitter=0.3, seed=5)
    types = np.char.strip(np.asarray(exp.hdulist["FIBRES"].data["TYPE"]).astype(str))
    victim = int(np.flatnonzero(types == "C")[0])
    wave = np.broadcast_to(exp.hdulist["WAVELA"].data, exp.hdulist[0].data.shape)[victim]
    exp.hdulist[0].data[victim, (wave < 7592) | (wave > 7698)] = np.nan  # only the O2 A band's pixels are left
    folder = tempfile.mkdtemp(dir=scratch)
    red, cat = exp.write(folder, stem="one")
    out = red.with_name("out.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=libraries["bosz4"], output=out))
    with fits.open(out) as hdul:
        stars = Table.read(hdul["FCALSTAR"])
        assert hdul[0].header["FCALNSTR"] >= 1
    reasons = {int(f): str(r) for f, r in zip(stars["FIBER"], stars["REASON"])}
    assert "usable pixels outside the masked regions" in reasons[victim], reasons
