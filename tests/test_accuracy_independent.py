"""Accuracy on frames the package did not make (`tests/independent_sim.py`).

The instrument (Gaussian LSF by direct convolution, a throughput with
ripples of 150–600 Å and a dichroic-like step), the atmosphere (weak telluric
lines outside the masked windows too), the reddening (G23 while the package
fits F99) and the catalogue (synphot magnitudes, per-band zero-point offsets)
share no code with the package. Bounds are about 1.5× what these seeds achieve
(the figures in the comments); the real-CALSPEC test observes the held-out stars
of `tests/calspec_split.py` with the misfit floor learned from the training
stars.
"""

import numpy as np
import pytest
from astropy.io import fits

from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal

from .calspec_split import HELD_OUT, calspec_files, learned
from .independent_sim import accuracy, make_frame


def _calibrate(frame, grid_dir, tmp_path, stem, **options):
    red, cat = frame.write(tmp_path, stem=stem)
    out = tmp_path / f"{stem}_{options.get('knot_spacing', 'auto')}.fits"
    run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=grid_dir, output=out, **options))
    return run, accuracy(run.result, frame)


@pytest.fixture(scope="module")
def structured(synthetic_grid_dir, tmp_path_factory):
    frame = make_frame(n_standards=8, n_pix=8000, seed=1)
    tmp = tmp_path_factory.mktemp("independent")
    return frame, _calibrate(frame, synthetic_grid_dir, tmp, "ind1"), tmp


def test_structured_throughput_is_followed(structured):
    frame, (run, acc), _ = structured
    choice = run.result.summary["knot_selection"]
    assert choice["method"] == "loso" and choice["spacing"] <= 170.0
    assert acc["n_stars_used"] >= 6
    assert acc["median_abs_error"] < 0.002  # achieved 0.13 %
    assert acc["p95_abs_error"] < 0.0065  # achieved 0.42 %
    with fits.open(run.output) as hdul:
        assert hdul[0].header["FCALKNOT"] == choice["spacing"]
        assert hdul[0].header["FCALKSEL"] == "loso"
        assert hdul[0].header["FCALFORM"] == "smooth"


def test_fixed_coarse_knots_smooth_the_structure_away(structured, synthetic_grid_dir):
    frame, (_, auto), tmp = structured
    _, coarse = _calibrate(frame, synthetic_grid_dir, tmp, "ind1", knot_spacing=500.0)
    assert coarse["p95_abs_error"] > 3 * auto["p95_abs_error"]  # achieved 2.46 % against 0.42 %
    assert coarse["pull_rms"] > auto["pull_rms"]


@pytest.mark.slow
def test_pooled_pulls_on_independent_frames(synthetic_grid_dir, tmp_path):
    """Eight frames with different throughputs, stars and catalogue zero points: honest σ when pooled."""
    pulls, medians, p95 = [], [], []
    for seed in range(1, 9):
        _, acc = _calibrate(make_frame(n_standards=8, n_pix=8000, seed=seed), synthetic_grid_dir, tmp_path,
                            f"pool{seed}")
        pulls.append(acc["pulls"])
        medians.append(acc["median_abs_error"])
        p95.append(acc["p95_abs_error"])
    pooled = np.sqrt(np.mean(np.concatenate(pulls) ** 2))
    # achieved: pooled pull 1.00; median over frames of the median error 0.25 %, of the p95 0.77 %
    assert 0.8 <= pooled <= 1.25
    assert np.median(medians) < 0.0038
    assert np.median(p95) < 0.0115


def test_real_calspec_stars_through_an_independent_instrument(calspec_dir, ck04_dir, tmp_path):
    """Held-out CALSPEC F/G stars, ck04 templates, FWHM 30 Å, pooled over 3 frames: the misfit floor learned from
    the training stars (`tests/calspec_split.py`; no template correction) keeps σ honest."""
    _, floor = learned(calspec_dir, ck04_dir)
    files = calspec_files(calspec_dir, HELD_OUT)
    pulls, medians, p95_wide = [], [], []
    for seed in (1, 2, 3):
        frame = make_frame(calspec_files=files, n_pix=621, fwhm=30.0, snr_range=(50.0, 150.0), seed=seed)
        run, acc = _calibrate(frame, ck04_dir, tmp_path, f"cs{seed}", fwhm=30.0, template_correction=None,
                              template_misfit=floor)
        assert acc["n_stars_used"] >= len(HELD_OUT) - 2
        assert run.result.summary["error_budget"]["terms"]["template_misfit"]["median_fraction"] > 0
        pulls.append(acc["pulls"])
        medians.append(acc["median_abs_error"])
        p95_wide.append(accuracy(run.result, frame, wave_range=(3800.0, 9200.0))["p95_abs_error"])
    print("CSIND", medians, p95_wide, np.sqrt(np.mean(np.concatenate(pulls) ** 2)), [np.sqrt(np.mean(p**2)) for p in pulls])
    assert np.median(medians) < 0.015
    assert max(p95_wide) < 0.045
    assert 0.8 <= np.sqrt(np.mean(np.concatenate(pulls) ** 2)) <= 1.25
