"""Band-flux pulls before/after the calibration covariance, its storage size and its time overhead.

Frames (``tests/independent_sim.py``: an instrument, atmosphere and catalogue
the package did not make):

``calspec-floor``
    Real CALSPEC F/G stars, ck04 templates, FWHM 30 Å: each seed puts a
    random half of the stars on the frame, no template correction (the misfit
    floor).
``calspec-heldout``
    The same frames calibrated with a template correction derived from the
    *other* stars only (``derive_template_correction(exclude=frame stars)``).
``independent``
    Standards of the independent star family (8 per frame, 4000 pixels,
    FWHM 2 Å) on a SYNTHETIC grid that does not describe them, structured
    throughputs; the family's misfit is learned from the training frames of
    other seeds (``learned_family_floor``), as the tests learn it.
``single``
    One CALSPEC standard per frame, with the correction learned without it.
``fallback``
    One CALSPEC standard per frame calibrated with the nightly fallback: a
    night of three exposures of other CALSPEC stars (the same instrument,
    catalogue and atmosphere: one seed, different pixel grids) is combined
    (`kspec_fluxcal.night.combine_night`) and rescaled to the frame's own
    standard (``min_standards=2``); the truth's level is that standard's.

On each calibrated frame, SYNTHETIC targets of known flux are observed
through the true calibration and calibrated (``tests/band_pulls.py``); the
pulls (band flux − truth)/σ of box bands and PS1 g r i z are pooled over
targets and seeds, with σ from `kspec_fluxcal.band_flux` ("after") and from
the summed per-pixel variance ("before"), per band and pooled over the box
bands, over PS1 g r i z and over the bands clear of telluric windows
(4000–5400, 5500–6800, 8400–8900 Å, g, r); the calibrations' own per-pixel
pulls (Cal/truth − 1 over the stated σ) are pooled over their pixels. Then
the size of the ``FCALCOV`` extension and the time to build and write it,
against a full frame's calibration (12 400 pixels).

``--terms`` also prints, per band, the calibration's own band pull (the
band-weighted mean of Cal/truth − 1 over the stated σ of that mean, no target
noise) and each correlated term's share of the stated band variance (flat
target), pooled over the frames: a pull below 1 with one term dominating
points at the term that is over-stated.

Usage::

    python benchmarks/bench_band_flux.py [--shared ../shared/data] [--seeds 10] [--kinds calspec-floor ...] [--terms]
"""

import argparse
import io
import logging
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits

from kspec_fluxcal.bandflux import band_weights
from kspec_fluxcal.calspec_correction import _star_name, derive_template_correction
from kspec_fluxcal.combine import QualityGates
from kspec_fluxcal.covariance import CalibrationCovariance
from kspec_fluxcal.error_budget import BUDGET_TERMS, photometric_profiles
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from band_pulls import BOX_BANDS, FILTERS, band_label, target_pulls  # noqa: E402
from independent_sim import FAMILY_GATES, accuracy, learned_family_floor, make_frame  # noqa: E402

KINDS = ("calspec-floor", "calspec-heldout", "independent", "single", "fallback")

PIXEL_PULLS = {}
"""kind → per-pixel pulls (Cal − truth)/σ of the calibrations (σ the covariance's diagonal, = CAL_VARIANCE)."""

TERMS = {}
"""kind → band label → {'pulls': calibration-only band pulls, term name → stated band variances} (``--terms``)."""


def _term_shares(kind, result, wavelength, truth):
    """Record the calibration's own band pull and each covariance term's band variance (``--terms``)."""
    vec, cov = result.combined_vector, result.covariance
    wave = vec.wavelength.to_value(u.AA)
    ok = ~vec.mask & np.isfinite(vec.cal_factor.value)
    cal = np.interp(wavelength, wave[ok], vec.cal_factor.value[ok], left=np.nan, right=np.nan)
    bad = np.interp(wavelength, wave, (~ok).astype(float)) > 0
    good = ~bad & np.isfinite(cal) & (wavelength >= cov.domain[0]) & (wavelength <= cov.domain[1])
    lam, err = wavelength[good], cal[good] / truth[good] - 1
    independent, _ = cov.factors(lam)
    PIXEL_PULLS.setdefault(kind, []).extend(err / np.sqrt(cov.variance(lam)))
    parts = {"independent": None}
    for term in cov.terms:
        parts[term.name] = CalibrationCovariance(cov.wavelength, np.zeros_like(cov.independent), [term], cov.mask,
                                                 cov.domain).factors(lam)[1]
    for band in BOX_BANDS + FILTERS:
        w = band_weights(lam, band if isinstance(band, str) else (band[0] * u.AA, band[1] * u.AA))
        row = TERMS.setdefault(kind, {}).setdefault(band_label(band), {"pulls": []})
        variances = {name: (np.sum(w**2 * independent) if g is None else float(np.sum((g.T @ w) ** 2)))
                     for name, g in parts.items()}
        for name, v in variances.items():
            row.setdefault(name, []).append(v)
        row["pulls"].append(float(w @ err) / np.sqrt(sum(variances.values())))


def _report_terms(kind):
    rows = TERMS.get(kind, {})
    names = sorted({n for row in rows.values() for n in row if n != "pulls"},
                   key=lambda n: -max(np.mean(row.get(n, [0.0])) for row in rows.values()))
    print("  calibration only: band pull rms, stated σ (%), share of the band variance per term (%)")
    print("  " + f"{'band':10s} {'pull':>5s} {'σ%':>5s} " + " ".join(f"{n[:12]:>12s}" for n in names))
    for label, row in rows.items():
        total = sum(np.mean(row.get(n, [0.0])) for n in names)
        print("  " + f"{label:10s} {np.sqrt(np.mean(np.square(row['pulls']))):5.2f} {100 * np.sqrt(total):5.2f} "
              + " ".join(f"{100 * np.mean(row.get(n, [0.0])) / total:12.0f}" for n in names))


def _truth(run, frame):
    metrics = run.result.summary["per_star_metrics"]
    level = [m["fiber_id"] for m in metrics if m.get("used") and m.get("sets_level", True)]
    return frame.reference_calibration(level)


def _calibrate(frame, templates, tmp, stem, **options):
    red, cat = frame.write(tmp, stem=stem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=templates, output=Path(tmp) / f"{stem}_out.fits",
                                                force=True, **options))


def _pool(into, pulls):
    for label, d in pulls.items():
        into.setdefault(label, {"new": [], "old": []})
        into[label]["new"] += d["new"]
        into[label]["old"] += d["old"]


def _report(kind, pooled, n_frames, seconds):
    print(f"{kind}: {n_frames} frames, {seconds:.0f} s")
    print(f"  {'band':12s} {'before':>7s} {'after':>7s}   (pull rms, pooled)")
    for label, d in pooled.items():
        before = np.sqrt(np.mean(np.square(d["old"])))
        after = np.sqrt(np.mean(np.square(d["new"])))
        print(f"  {label:12s} {before:7.2f} {after:7.2f}")
    clear = ["4000-5400", "5500-6800", "8400-8900", "ps1_g", "ps1_r"]  # no telluric window inside
    for name, labels in (("box", [band_label(b) for b in BOX_BANDS]), ("ps1", list(FILTERS)), ("clear", clear)):
        rows = [d for label, d in pooled.items() if label in labels]
        before = np.sqrt(np.mean(np.square([v for d in rows for v in d["old"]])))
        after = np.sqrt(np.mean(np.square([v for d in rows for v in d["new"]])))
        print(f"  {name + ' pooled':12s} {before:7.2f} {after:7.2f}")
    pixel = np.asarray(PIXEL_PULLS.get(kind, []))
    if pixel.size:
        print(f"  per-pixel pull rms of the calibrations {np.sqrt(np.mean(pixel**2)):.2f} ({pixel.size} pixels)")


def run_calspec(kind, files, ck04, seeds, tmp):
    pooled, t0, n = {}, time.perf_counter(), 0
    names = [_star_name(f) for f in files]
    for seed in seeds:
        rng = random.Random(seed)
        if kind == "single":
            on_frame = [rng.choice(names)]
        else:
            on_frame = sorted(rng.sample(names, len(names) // 2))
        frame_files = [f for f, name in zip(files, names) if name in on_frame]
        correction = "none"
        if kind != "calspec-floor":
            correction = derive_template_correction(files, ck04, fwhm=30.0, exclude=on_frame)
        frame = make_frame(calspec_files=frame_files, n_pix=621, fwhm=30.0, snr_range=(50.0, 150.0), seed=seed)
        run = _calibrate(frame, ck04, tmp, f"{kind}{seed}", fwhm=30.0, template_correction=correction)
        pulls = target_pulls(run.result, frame.truth["wavelength"], _truth(run, frame), np.random.default_rng(seed),
                             atmosphere=frame.truth["atmosphere"])
        _term_shares(kind, run.result, frame.truth["wavelength"], _truth(run, frame))
        _pool(pooled, pulls)
        n += 1
    _report(kind, pooled, n, time.perf_counter() - t0)


def run_fallback(files, ck04, seeds, tmp):
    from kspec_fluxcal.night import combine_night
    from kspec_fluxcal.products import save_calibration

    pooled, t0 = {}, time.perf_counter()
    names = [_star_name(f) for f in files]
    for seed in seeds:
        rng = random.Random(seed)
        single = rng.choice(names)
        others = [n for n in names if n != single]
        correction = derive_template_correction(files, ck04, fwhm=30.0, exclude=[single])
        exposures = []
        for k in range(3):
            on_frame = sorted(rng.sample(others, 4))
            frame = make_frame(calspec_files=[f for f, n in zip(files, names) if n in on_frame], n_pix=621 + 2 * k,
                               fwhm=30.0, snr_range=(50.0, 150.0), seed=seed)
            exposures.append(_calibrate(frame, ck04, tmp, f"night{seed}_{k}", fwhm=30.0,
                                        template_correction=correction).result)
        night_path = Path(tmp) / f"night{seed}.fits"
        save_calibration(combine_night(exposures), night_path, overwrite=True)
        frame = make_frame(calspec_files=[f for f, n in zip(files, names) if n == single], n_pix=640, fwhm=30.0,
                           snr_range=(50.0, 150.0), seed=seed)
        run = _calibrate(frame, ck04, tmp, f"fallback{seed}", fwhm=30.0, template_correction=correction,
                         fallback=night_path, min_standards=2)
        assert run.result.summary.get("gray_rescale"), "the nightly fallback was not applied"
        _term_shares("fallback", run.result, frame.truth["wavelength"], frame.reference_calibration([0]))
        _pool(pooled, target_pulls(run.result, frame.truth["wavelength"], frame.reference_calibration([0]),
                                   np.random.default_rng(seed), atmosphere=frame.truth["atmosphere"]))
    _report("fallback", pooled, len(seeds), time.perf_counter() - t0)


def family_floor(grid, tmp):
    """The independent star family's misfit on ``grid``, learned from the training frames (as in the tests)."""
    gates = QualityGates(**FAMILY_GATES)
    return learned_family_floor(lambda frame, stem: accuracy(_calibrate(frame, grid, tmp, stem, gates=gates).result,
                                                             frame))


def run_independent(seeds, grid, tmp):
    pooled, t0 = {}, time.perf_counter()
    floor = family_floor(grid, tmp)
    for seed in seeds:
        frame = make_frame(n_standards=8, n_pix=4000, seed=seed)
        run = _calibrate(frame, grid, tmp, f"ind{seed}", gates=QualityGates(**FAMILY_GATES), template_misfit=floor)
        _pool(pooled, target_pulls(run.result, frame.truth["wavelength"], _truth(run, frame),
                                   np.random.default_rng(seed), atmosphere=frame.truth["atmosphere"]))
        _term_shares("independent", run.result, frame.truth["wavelength"], _truth(run, frame))
    _report("independent", pooled, len(seeds), time.perf_counter() - t0)


def overhead(grid, tmp):
    """Size of FCALCOV and the time to build and write it, against the calibration of a 12 400-pixel frame."""
    frame = make_frame(n_standards=8, n_pix=12400, seed=1)
    t0 = time.perf_counter()
    run = _calibrate(frame, grid, tmp, "big", gates=QualityGates(**FAMILY_GATES))
    total = time.perf_counter() - t0
    cov = run.result.covariance
    vec = run.result.combined_vector
    wave = vec.wavelength.to_value(u.AA)
    factor = vec.cal_factor.value
    total_var = vec.cal_variance.value / factor**2
    terms = {name: total_var / len(BUDGET_TERMS) for name in BUDGET_TERMS}  # the budget's shape, for timing
    t0 = time.perf_counter()
    for _ in range(10):
        built = CalibrationCovariance.from_budget(wave, terms, ~vec.mask, "smooth", cov.meta["knot_spacing"],
                                                  profiles=photometric_profiles(run.result, wave, "F99", 3.1, 0.005))
        built.to_hdu().writeto(io.BytesIO())
    build = (time.perf_counter() - t0) / 10
    with fits.open(run.output) as hdul:
        size = len(hdul["FCALCOV"].header.tostring()) + hdul["FCALCOV"].data.nbytes
        names = [hdul["FCALCOV"].header[f"FCOVN{i}"] for i in range(1, hdul["FCALCOV"].header["FCOVNTRM"] + 1)]
    print(f"overhead: calibration of a {frame.truth['wavelength'].size}-pixel frame ({wave.size} calibration samples, "
          f"8 standards) {total:.1f} s; FCALCOV {size / 1e6:.2f} MB ({len(names)} correlated terms: "
          f"{', '.join(names)}), built and written in {1e3 * build:.0f} ms = {100 * build / total:.2f} % of the "
          "calibration")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--seeds", type=int, default=10, help="frames per kind")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--no-overhead", action="store_true")
    parser.add_argument("--terms", action="store_true",
                        help="also print the calibration-only band pulls and each covariance term's share")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    files = sorted((args.shared / "calspec").glob("*.fits*"))
    ck04 = args.shared / "ck04models"
    seeds = list(range(1, args.seeds + 1))
    with tempfile.TemporaryDirectory() as tmp:
        grid = None
        if "independent" in args.kinds or not args.no_overhead:
            from kspec_fluxcal.simulate import write_bosz_grid

            grid = Path(tmp) / "grid"
            write_bosz_grid(grid, teffs=range(5000, 8001, 250), loggs=(4.0, 4.5), fehs=(-1.0, -0.5, 0.0, 0.5),
                            resolution=10000, wave_range=(3000.0, 26000.0), layout="mast")
        for kind in args.kinds:
            if kind == "independent":
                run_independent(seeds, grid, tmp)
            elif kind == "fallback":
                run_fallback(files, ck04, seeds, tmp)
            else:
                run_calspec(kind, files, ck04, seeds, tmp)
            if args.terms:
                _report_terms(kind)
        if not args.no_overhead:
            overhead(grid, tmp)


if __name__ == "__main__":
    main()
