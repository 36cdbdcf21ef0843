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

from kspec_fluxcal.combine import QualityGates
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal

from .calspec_split import HELD_OUT, calspec_files, learned
from .independent_sim import (
    FAMILY_GATES,
    TELLURIC_BANDS,
    accuracy,
    learned_family_floor,
    learned_family_misfit,
    make_frame,
)


def _calibrate(frame, grid_dir, tmp_path, stem, **options):
    if "calspec" not in stem:
        options.setdefault("gates", QualityGates(**FAMILY_GATES))
    red, cat = frame.write(tmp_path, stem=stem)
    out = tmp_path / f"{stem}_{options.get('knot_spacing', 'auto')}.fits"
    run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=grid_dir, output=out, **options))
    return run, accuracy(run.result, frame)


@pytest.fixture(scope="module")
def structured(synthetic_grid_dir, tmp_path_factory):
    frame = make_frame(n_standards=8, n_pix=8000, seed=1)
    tmp = tmp_path_factory.mktemp("independent")
    return frame, _calibrate(frame, synthetic_grid_dir, tmp, "ind1"), tmp


@pytest.fixture(scope="module")
def family_misfit(synthetic_grid_dir, tmp_path_factory):
    """The star family's signed misfit, learned on the training seeds (`tests.independent_sim.TRAINING_SEEDS`)."""
    tmp = tmp_path_factory.mktemp("family_training")
    return learned_family_misfit(lambda frame, stem: _calibrate(frame, synthetic_grid_dir, tmp, stem)[1])


def test_structured_throughput_is_followed(structured, family_misfit):
    """The knots follow the ripples and the step: judged after removing the star family's signed misfit.

    The family's misfit, shared by its stars, dominates Cal/truth − 1 (median
    1.76 %, p95 3.37 % on this frame); divided out with what the training
    frames (other seeds, other throughputs) learned, the instrument's part
    is left. Bounds at 1.5× what is achieved. The frame's own level error
    (the family's photometric misfit: 0.5–1 % from frame to frame; −0.29 %
    here before the shape-outlier test forgave each star its reddening tilt,
    −0.49 % since, with more stars kept) limits a level check on one frame:
    a calibration 0.5 % low fails it, 0.5 % high does not (the pooled and
    real-star tests catch it, docs/testing.rst).
    """
    frame, (run, acc), _ = structured
    choice = run.result.summary["knot_selection"]
    assert choice["method"] == "loso" and choice["spacing"] <= 170.0
    assert acc["n_stars_used"] >= 6
    errors = (1 + acc["errors"]) / (1 + family_misfit(acc["wavelength"])) - 1
    assert np.median(np.abs(errors)) < 0.0085  # achieved 0.56 %
    assert np.percentile(np.abs(errors), 95) < 0.038  # achieved 2.51 %
    assert abs(np.median(errors)) < 0.0075  # achieved −0.49 %
    with fits.open(run.output) as hdul:
        assert hdul[0].header["FCALKNOT"] == choice["spacing"]
        assert hdul[0].header["FCALKSEL"] == "loso"
        assert hdul[0].header["FCALFORM"] == "smooth"


def test_fixed_coarse_knots_smooth_the_structure_away(structured, synthetic_grid_dir):
    frame, (_, auto), tmp = structured
    _, coarse = _calibrate(frame, synthetic_grid_dir, tmp, "ind1", knot_spacing=500.0)
    assert coarse["p95_abs_error"] > 1.2 * auto["p95_abs_error"]  # achieved 4.31 % against 3.37 %
    # achieved 1.39 against 1.23 (no misfit term here: the bridging term takes up the family's shared misfit;
    # 4.58 against 3.99 without it)
    assert coarse["pull_rms"] > auto["pull_rms"]


@pytest.mark.slow
def test_pooled_pulls_on_independent_frames(synthetic_grid_dir, tmp_path):
    """Eight frames with different throughputs, stars and catalogue zero points: honest σ when pooled.

    The stars are of a family the grid does not describe
    (`tests.independent_sim.independent_star_model`); the misfit it leaves is
    learned from four training frames of other seeds
    (`tests.independent_sim.learned_family_floor`) and given to the
    calibration (``template_misfit``), as the real-star floor is learned from
    training stars. Without that term the same errors give a pull rms far above 1.
    """
    floor = learned_family_floor(lambda frame, stem: _calibrate(frame, synthetic_grid_dir, tmp_path, stem)[1])
    pulls, medians, p95, without = [], [], [], []
    for seed in range(1, 9):
        _, acc = _calibrate(make_frame(n_standards=8, n_pix=8000, seed=seed), synthetic_grid_dir, tmp_path,
                            f"pool{seed}", template_misfit=floor)
        pulls.append(acc["pulls"])
        medians.append(acc["median_abs_error"])
        p95.append(acc["p95_abs_error"])
        rest = acc["sigma_fraction"] ** 2 - floor(acc["wavelength"]) ** 2
        without.append(acc["errors"] / np.sqrt(rest))
    pooled = np.sqrt(np.mean(np.concatenate(pulls) ** 2))
    pooled_without = np.sqrt(np.mean(np.concatenate(without) ** 2))
    # achieved: pooled pull 1.00 (3.2 without the floor, three frames); median over frames of the median error
    # 1.64 %, of the p95 3.29 % — the family's misfit, shared by the stars, dominates
    assert 0.8 <= pooled <= 1.25
    assert pooled_without > 1.5
    assert np.median(medians) < 0.025
    assert np.median(p95) < 0.05


@pytest.fixture(scope="module")
def calspec_frames(calspec_dir, ck04_dir, tmp_path_factory):
    """Six frames of the held-out CALSPEC stars (`tests/calspec_split.py`) through the independent instrument,
    ck04 templates, FWHM 30 Å, calibrated with the misfit floor learned from the training stars (no correction)."""
    _, floor = learned(calspec_dir, ck04_dir)
    files = calspec_files(calspec_dir, HELD_OUT)
    tmp = tmp_path_factory.mktemp("calspec_independent")
    out = []
    for seed in range(1, 7):
        frame = make_frame(calspec_files=files, n_pix=621, fwhm=30.0, snr_range=(50.0, 150.0), seed=seed)
        run, acc = _calibrate(frame, ck04_dir, tmp, f"calspec{seed}", fwhm=30.0, template_correction=None,
                              template_misfit=floor)
        out.append((run, acc, accuracy(run.result, frame, wave_range=(3800.0, 9200.0))))
    return out


def test_real_calspec_stars_through_an_independent_instrument(calspec_frames):
    """Accurate, with the misfit floor and the bridging term in the budget."""
    for run, acc, _ in calspec_frames:
        assert acc["n_stars_used"] >= len(HELD_OUT) - 2
        terms = run.result.summary["error_budget"]["terms"]
        assert terms["template_misfit"]["median_fraction"] > 0
        # the bridging term is in the budget; over about half the pixels it is nil, where the templates'
        # lines allow for the shared structure (kspec_fluxcal.bridging.LINE_MISFIT_FRACTION)
        assert terms["bridging"]["share"] > 0
    # achieved: median over frames of the median error 0.52 %, worst p95 over 3800–9200 Å 3.4 %
    assert np.median([acc["median_abs_error"] for _, acc, _ in calspec_frames]) < 0.008
    assert max(wide["p95_abs_error"] for _, _, wide in calspec_frames) < 0.05


def test_real_calspec_errors_through_an_independent_instrument_are_honest(calspec_frames):
    """Honest σ pooled over six frames, also beside the masked telluric windows.

    The instrument's ripples (150–600 Å) and step are partly left between the
    85–120 Å knots and bridged across the masked telluric windows; the budget's
    ``bridging`` term (`kspec_fluxcal.bridging`) states that structure. Achieved:
    pooled pull 1.11 (1.33 without the term, 1.05 when it also counted the
    shared structure the templates' lines allow for; 0.87 with a smooth
    throughput); on the pixels within 60 Å of a telluric band's edge 1.20
    (2.02 without, 1.18).
    """
    pooled = np.sqrt(np.mean(np.concatenate([acc["pulls"] for _, acc, _ in calspec_frames]) ** 2))
    assert 0.8 <= pooled <= 1.25
    near = []
    for _, acc, _ in calspec_frames:
        x = acc["wavelength"]
        distance = np.min([np.minimum(np.abs(x - a), np.abs(x - b)) for a, b, _ in TELLURIC_BANDS], axis=0)
        near.append(acc["pulls"][distance < 60.0])
    assert 0.8 <= np.sqrt(np.mean(np.concatenate(near) ** 2)) <= 1.4
