"""Where the error of telluric-corrected flux comes from, band by band and pixel by pixel (see docs/band_errors.rst).

On frames of ``bench_band_flux.py`` (``calspec-heldout`` or ``independent``)
it compares, per band, the actual errors of ln Cal (the derived calibration
against the truth), of ln T (the measured transmission against the true
atmosphere) and of their difference (the corrected flux, a target's error
without its own noise) with their stated σ: the calibration's covariance
(``sC``) and T's variance taken as independent per pixel (``sT``); and the
per-pixel pull of the corrected flux against √(cal variance + T variance)
inside and outside the corrected windows.

Usage::

    python benchmarks/bench_telluric_windows.py [--kind calspec-heldout] [--seeds 8] [--shared ../shared/data]
"""

import argparse
import logging
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy import units as u

from kspec_fluxcal.bandflux import band_weights
from kspec_fluxcal.calspec_correction import _star_name, derive_template_correction
from kspec_fluxcal.combine import QualityGates
from kspec_fluxcal.telluric import transmission_on_grid

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_band_flux import _calibrate, _truth, family_floor  # noqa: E402
from independent_sim import FAMILY_GATES, make_frame  # noqa: E402

BANDS = ((6860, 6960), (7000, 7550), (7150, 7340), (7590, 7700), (8100, 8360), (8920, 9200), "ps1_i", "ps1_z",
         (5500, 6800), (8400, 8900))


def _frame(kind, seed, files, ck04, grid, tmp, floor=None):
    if kind == "independent":
        frame = make_frame(n_standards=8, n_pix=4000, seed=seed)
        return frame, _calibrate(frame, grid, tmp, f"ind{seed}", gates=QualityGates(**FAMILY_GATES),
                                 template_misfit=floor)
    names = [_star_name(f) for f in files]
    on = sorted(random.Random(seed).sample(names, len(names) // 2))
    correction = derive_template_correction(files, ck04, fwhm=30.0, exclude=on)
    frame = make_frame(calspec_files=[f for f, n in zip(files, names) if n in on], n_pix=621, fwhm=30.0,
                       snr_range=(50.0, 150.0), seed=seed)
    return frame, _calibrate(frame, ck04, tmp, f"c{seed}", fwhm=30.0, template_correction=correction)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--kind", default="calspec-heldout", choices=("calspec-heldout", "independent"))
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    files = sorted((args.shared / "calspec").glob("*.fits*"))
    rows = {b: [] for b in BANDS}
    inside, outside = [], []
    with tempfile.TemporaryDirectory() as tmp:
        grid = floor = None
        if args.kind == "independent":
            from kspec_fluxcal.simulate import write_bosz_grid

            grid = Path(tmp) / "grid"
            write_bosz_grid(grid, teffs=range(5000, 8001, 250), loggs=(4.0, 4.5), fehs=(-1.0, -0.5, 0.0, 0.5),
                            resolution=10000, wave_range=(3000.0, 26000.0), layout="mast")
            floor = family_floor(grid, tmp)
        for seed in range(1, args.seeds + 1):
            frame, run = _frame(args.kind, seed, files, args.shared / "ck04models", grid, tmp, floor)
            res, wave = run.result, frame.truth["wavelength"]
            vec = res.combined_vector
            grid_wave = vec.wavelength.to_value(u.AA)
            cal = np.interp(wave, grid_wave, vec.cal_factor.value)
            cal_var = np.interp(wave, grid_wave, vec.cal_variance.value) / cal**2
            t, t_var, t_bad = transmission_on_grid(res.telluric, wave)
            d_cal = np.log(cal / _truth(run, frame))
            d_t = np.log(t / frame.truth["atmosphere"])
            independent, factor = res.covariance.factors(wave)
            ok = np.isfinite(d_cal) & np.isfinite(d_t) & np.isfinite(independent) & ~t_bad
            for band in BANDS:
                spec = band if isinstance(band, str) else (band[0] * u.AA, band[1] * u.AA)
                w = np.zeros(wave.size)
                w[ok] = band_weights(wave[ok], spec)
                w /= w.sum()
                s_cal = np.sqrt(w**2 @ np.nan_to_num(independent) + np.sum((np.nan_to_num(factor).T @ w) ** 2))
                s_t = np.sqrt(w[ok] ** 2 @ (t_var[ok] / t[ok] ** 2))
                rows[band].append((w[ok] @ d_cal[ok], w[ok] @ d_t[ok], s_cal, s_t))
            window = np.zeros(wave.size, bool)
            for a, b in res.telluric.windows:
                window |= (wave >= a) & (wave <= b)
            pull = (d_cal - d_t) / np.sqrt(cal_var + t_var / t**2)
            good = ok & np.isfinite(pull)
            inside.append(pull[good & window])
            outside.append(pull[good & ~window & (wave > 4000) & (wave < 9300)])
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    print(f"{args.kind}: {args.seeds} frames; per-pixel pull of the corrected flux (no target noise): "
          f"windows {rms(np.concatenate(inside)):.2f}, outside {rms(np.concatenate(outside)):.2f}")
    print(f"  {'band':12s} {'lnCal %':>8s} {'lnT %':>7s} {'corr':>5s} {'flux %':>7s} {'sC %':>6s} {'sT %':>6s} "
          f"{'pull':>5s}   (rms over frames)")
    for band, r in rows.items():
        r = np.array(r)
        err = r[:, 0] - r[:, 1]
        label = band if isinstance(band, str) else f"{band[0]}-{band[1]}"
        print(f"  {label:12s} {100 * rms(r[:, 0]):8.2f} {100 * rms(r[:, 1]):7.2f} "
              f"{np.corrcoef(r[:, 0], r[:, 1])[0, 1]:5.2f} {100 * rms(err):7.2f} {100 * rms(r[:, 2]):6.2f} "
              f"{100 * rms(r[:, 3]):6.2f} {rms(err / np.hypot(r[:, 2], r[:, 3])):5.2f}")


if __name__ == "__main__":
    main()
