"""SYNTHETIC frames drawn at random for fuzzing the default ``calibrate`` path, and the contract every draw keeps.

A `Draw` fixes everything about one frame: its coverage (anywhere in
3500–10 000 Å, its edges often inside a telluric window), pixel size, FWHM,
the number of standards, per-fiber wavelength shifts, damage (NaN and masked
blocks, dead fibers, negative and saturated counts) and the template library
(one or several models, BOSZ 2024 or ck04 format, all SYNTHETIC). `frames`
is the hypothesis strategy of draws (tests/test_fuzz.py); `check_draw` builds
the frame, calibrates it through `kspec_fluxcal.pipeline.apply_fluxcal` with
default options and asserts the contract:

* success, with finite calibrated pixels in every live fiber, or a
  `~kspec_fluxcal.exceptions.KspecFluxcalError` whose message says what is
  wrong — never any other exception;
* the RED file and catalogue byte-identical afterwards;
* nothing partial: the folder holds the inputs plus, on success, the output.

benchmarks/fuzz_calibrate.py fuzzes with the same draws for minutes and saves
every failing draw (JSON, RED file, catalogue) for a regression test.
"""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
from astropy.io import fits

from kspec_fluxcal.exceptions import KspecFluxcalError

WINDOW_EDGES = (6860.0, 6960.0, 7150.0, 7340.0, 7590.0, 7700.0, 8100.0, 8360.0, 8920.0, 9200.0, 9300.0, 9650.0)
"""The default telluric windows' edges (Å): coverage often starts or ends at, inside or beside one."""

MAX_PIXELS = 2500
"""Largest frame (pixels per fiber): coverage is shortened to keep a draw cheap."""

LIBRARIES = ("bosz1", "bosz4", "ck04_1", "ck04_4")
"""One-model and multi-model SYNTHETIC libraries in both formats (`write_libraries`)."""

DAMAGE_KINDS = ("nan", "masked", "negative", "saturated", "dead")


@dataclasses.dataclass
class Draw:
    """One fuzzed frame. ``damage``: (kind, fiber, start, length) with start/length fractions of the fiber."""

    lo: float
    hi: float
    step: float
    fwhm: float
    n_standards: int
    n_science: int = 1
    n_sky: int = 1
    jitter: float = 0.3
    library: str = "bosz4"
    damage: tuple = ()
    seed: int = 1

    @property
    def n_pix(self):
        return max(int(round((self.hi - self.lo) / self.step)), 16)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text):
        values = json.loads(text)
        values["damage"] = tuple(tuple(d) for d in values["damage"])
        return cls(**values)


def frames():
    """The hypothesis strategy of `Draw`."""
    from hypothesis import strategies as st

    edge = st.one_of(st.floats(3500.0, 10000.0), st.sampled_from(WINDOW_EDGES),
                     st.builds(lambda e, d: e + d, st.sampled_from(WINDOW_EDGES), st.floats(-40.0, 40.0)))
    damage = st.tuples(st.sampled_from(DAMAGE_KINDS), st.integers(0, 40), st.floats(0.0, 1.0), st.floats(0.0, 1.0))

    @st.composite
    def draw(data):
        a, b = sorted((data(edge), data(edge)))
        step = data(st.floats(0.25, 10.0))
        if b - a < 16 * step:  # at least 16 pixels
            b = min(a + 16 * step, 10000.0)
            a = b - 16 * step
        if (b - a) / step > MAX_PIXELS:  # keep the frame small: keep one end, as drawn
            if data(st.booleans()):
                b = a + MAX_PIXELS * step
            else:
                a = b - MAX_PIXELS * step
        return Draw(lo=round(a, 3), hi=round(b, 3), step=step, fwhm=data(st.floats(1.0, 30.0)),
                    n_standards=data(st.one_of(st.integers(1, 4), st.integers(1, 30))),
                    n_science=data(st.integers(0, 2)), n_sky=data(st.integers(0, 1)),
                    jitter=data(st.floats(0.0, 2.0)), library=data(st.sampled_from(LIBRARIES)),
                    damage=tuple(data(st.lists(damage, max_size=4))), seed=data(st.integers(0, 2**16)))

    return draw()


def write_ck04_grid(dest, teffs, loggs, fehs):
    """A SYNTHETIC grid in the CDBS ck04models layout (``ckp00/ckp00_6000.fits``, columns ``g40`` …).

    Sampled like the real grid (Δ ln λ ≈ 0.003, 10–20 Å in the optical),
    spectra from `kspec_fluxcal.simulate.synthetic_stellar_spectrum`.
    """
    from kspec_fluxcal.simulate import synthetic_stellar_spectrum

    dest = Path(dest)
    wave = np.geomspace(900.0, 100000.0, 1500)
    for feh in fehs:
        folder = "ck" + ("m" if feh < 0 else "p") + f"{round(abs(feh) * 10):02d}"
        (dest / folder).mkdir(parents=True, exist_ok=True)
        for teff in teffs:
            columns = [fits.Column(name="WAVELENGTH", format="D", array=wave)]
            for logg in loggs:
                flux, _ = synthetic_stellar_spectrum(wave, teff, logg, feh, resolution=500.0)
                columns.append(fits.Column(name=f"g{round(logg * 10):02d}", format="E", array=flux))
            fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)]).writeto(
                dest / folder / f"{folder}_{int(teff)}.fits")
    return dest


def write_libraries(folder):
    """{name: folder} of the `LIBRARIES`, written under ``folder`` (skipped when there already)."""
    from kspec_fluxcal.simulate import write_bosz_grid

    folder = Path(folder)
    specs = {"bosz1": ((6000,), (4.5,), (0.0,)), "bosz4": ((5500, 6500), (4.0, 4.5), (0.0,)),
             "ck04_1": ((6000,), (4.5,), (0.0,)), "ck04_4": ((5500, 6500), (4.0, 4.5), (-0.5, 0.0))}
    out = {}
    for name, (teffs, loggs, fehs) in specs.items():
        path = folder / name
        if not path.is_dir():
            if name.startswith("bosz"):
                write_bosz_grid(path, teffs=teffs, loggs=loggs, fehs=fehs, resolution=2000,
                                wave_range=(3000.0, 11000.0), layout="flat", workers=1)
            else:
                write_ck04_grid(path, teffs, loggs, fehs)
        out[name] = path
    return out


def _damage(hdul, draw):
    """Apply ``draw.damage``; returns the fibers left dead (no usable pixel)."""
    counts, variance = hdul[0].data, hdul["VARIANCE"].data
    n_fib, n_pix = counts.shape
    dead = set()
    for kind, fiber, start, length in draw.damage:
        f = fiber % n_fib
        i0 = int(start * n_pix)
        cols = slice(i0, min(n_pix, i0 + max(1, int(length * n_pix))))
        if kind == "nan":
            counts[f, cols] = np.nan
        elif kind == "masked":
            variance[f, cols] = -1.0 if fiber % 2 else np.inf
        elif kind == "negative":
            counts[f, cols] = -np.abs(counts[f, cols]) - 10.0
        elif kind == "saturated":
            ceiling = np.nanpercentile(counts[f], 100 * (1 - length))
            counts[f] = np.minimum(counts[f], ceiling)
        elif kind == "dead":
            counts[f] = 0.0 if fiber % 2 else np.nan
            dead.add(f)
    return dead


def write_frame(draw, folder):
    """The RED file and catalogue of ``draw`` in ``folder``: (red, catalogue, dead fibers)."""
    from kspec_fluxcal.simulate import make_exposure

    exp = make_exposure(n_standards=draw.n_standards, n_science=draw.n_science, n_sky=draw.n_sky,
                        n_pix=draw.n_pix, wave_range=(draw.lo, draw.hi), fwhm=draw.fwhm,
                        wavelength_jitter=draw.jitter, n_field_stars=2, seed=draw.seed)
    dead = _damage(exp.hdulist, draw)
    red, cat = exp.write(folder, stem="fuzz")
    return red, cat, dead


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def calibrate_draw(draw, folder, libraries):
    """Calibrate ``draw`` in ``folder``; return ('ok', None) or ('error', message). Asserts the contract."""
    from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal

    folder = Path(folder)
    red, cat, dead = write_frame(draw, folder)
    out_dir = folder / "out"
    out_dir.mkdir()
    out = out_dir / "calibrated.fits"
    before = _snapshot(folder)
    try:
        apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=libraries[draw.library], output=out))
    except KspecFluxcalError as exc:
        message = " ".join(str(exc).split())
        after = _snapshot(folder)
        assert after == before, f"inputs changed or partial files left: {sorted(set(after) ^ set(before))}"
        assert len(message) >= 20 and re.search(r"[a-z]{3}", message), f"unhelpful message {message!r}"
        return "error", f"{type(exc).__name__}: {message}"
    after = _snapshot(folder)
    written = after.pop("out/calibrated.fits")
    assert after == before, f"inputs changed or partial files left: {sorted(set(after) ^ set(before))}"
    assert written[:6] == b"SIMPLE"
    with fits.open(out) as hdul:
        flux = hdul[0].data.astype(float)
        var = hdul["VARIANCE"].data.astype(float)
        types = np.char.strip(np.asarray(hdul["FIBRES"].data["TYPE"]).astype(str))
    assert not np.isinf(flux).any() and not np.isinf(var).any(), "infinite calibrated pixels"
    finite = np.isfinite(flux)
    assert np.array_equal(finite, np.isfinite(var)), "flux and variance disagree on which pixels are defined"
    assert (var[finite] >= 0).all(), "negative variance"
    live = [f for f in range(flux.shape[0]) if types[f] in ("C", "P") and f not in dead]
    empty = [f for f in live if not finite[f].any()]
    with fits.open(red) as hdul:
        usable = np.isfinite(hdul[0].data) & (hdul["VARIANCE"].data > 0) & np.isfinite(hdul["VARIANCE"].data)
    empty = [f for f in empty if usable[f].sum() > 0.5 * usable.shape[1]]  # a fiber mostly damaged may be all NaN
    assert not empty, f"live fibers {empty} have no finite calibrated pixel"
    return "ok", None


def save_failure(draw, folder, dest, error):
    """Keep a failing draw for a regression test: ``dest/<id>/`` with draw.json, the RED file, catalogue, error."""
    import hashlib
    import shutil

    key = hashlib.sha1(draw.to_json().encode()).hexdigest()[:10]
    target = Path(dest) / key
    target.mkdir(parents=True, exist_ok=True)
    (target / "draw.json").write_text(draw.to_json() + "\n")
    (target / "error.txt").write_text(error + "\n")
    for name in ("fuzz_red.fits", "fuzz_refcat.csv"):
        source = Path(folder) / name
        if source.exists():
            shutil.copy2(source, target / name)
    return target
