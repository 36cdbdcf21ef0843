"""Accuracy of the whole calibration against known truth.

Two kinds of truth: SYNTHETIC exposures whose stars sit between the nodes of
a synthetic grid (so matching, refinement, reddening and the combination are
all exercised), and real CALSPEC stars (Bohlin et al.) observed through an
invented throughput and calibrated with the Castelli–Kurucz grid — stars not
made from the templates. The real-star tests are out of sample: their frames
hold only the held-out stars of `tests/calspec_split.py`, calibrated with the
correction and misfit floor learned from the training stars.

Bounds are about 1.5× what these seeds achieve (the figures in the comments).
"""

import numpy as np
import pytest
from astropy import units as u

from kspec_fluxcal.accuracy import calibration_accuracy, true_level
from kspec_fluxcal.calspec_correction import calspec_frame_accuracy
from kspec_fluxcal.cli import main
from kspec_fluxcal.containers import FluxCalibrationResult
from kspec_fluxcal.masks import load_mask_regions
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal
from kspec_fluxcal.simulate import make_calspec_exposure, make_exposure

from .calspec_split import HELD_OUT, TRAINING, calspec_files, learned, star_name

TELLURIC = load_mask_regions("telluric_default")
# R = 4000 at every wavelength: FWHM(λ) = λ / 4000, as FWHMPCn coefficients
FWHM_POLY = (0.0, 1.0 / 4000.0)


def _simulate_and_calibrate(grid_dir, tmp_path, seed, **options):
    exposure = make_exposure(n_standards=8, n_science=2, n_sky=1, n_pix=8000, fwhm=2.0, fwhm_poly=FWHM_POLY,
                             teff_range=(5300, 7700), logg_range=(4.05, 4.45), feh_range=(-0.9, 0.4), seed=seed)
    red, cat = exposure.write(tmp_path, stem=f"sim{seed}")
    run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=grid_dir, **options))
    truth = exposure.truth["system_calibration"] / true_level(run.result.summary, exposure.truth["gray"])
    accuracy = calibration_accuracy(run.result, exposure.truth["wavelength"], truth, exclude_regions=TELLURIC)
    return exposure, run, accuracy


@pytest.fixture(scope="module")
def simulated(synthetic_grid_dir, tmp_path_factory):
    return _simulate_and_calibrate(synthetic_grid_dir, tmp_path_factory.mktemp("acc"), seed=11)


def test_simulated_calibration_matches_injected_throughput(simulated):
    _, run, accuracy = simulated
    assert run.result.summary["n_stars_used"] >= 6
    # achieved: median 0.13 %, p95 0.26 %, level −0.13 %
    assert accuracy["median_abs_error"] < 0.002
    assert accuracy["p95_abs_error"] < 0.004
    assert abs(accuracy["level_error"]) < 0.002


def test_simulated_stars_parameters_recovered(simulated):
    exposure, run, _ = simulated
    truth = {row["fiber"]: row for row in exposure.truth["stars"]}
    used = [v for v in run.result.per_star_vectors if v.meta["used"]]
    teff_err = [v.meta["teff"] - truth[v.meta["fiber_id"]]["teff"] for v in used]
    rv_err = [v.meta["rv_kms"] - truth[v.meta["fiber_id"]]["rv_kms"] for v in used]
    assert np.max(np.abs(teff_err)) < 150
    assert np.max(np.abs(rv_err)) < 2.0


@pytest.mark.slow
def test_simulated_errors_are_honest(synthetic_grid_dir, tmp_path):
    """Pooled over exposures, (Cal − truth)/σ has an rms of about 1.

    The simulated catalogue has no zero-point errors, so the calibration is
    told so (``zero_point_sigma=0``: no zero-point term; ``mag_floor=0``: the
    floor stands for the zero-point error too, and would add 5 mmag to each
    star's 2–4 mmag Gaia errors — pooled pull ≈ 0.7 with it).
    """
    pulls = [_simulate_and_calibrate(synthetic_grid_dir, tmp_path, seed, zero_point_sigma=0.0,
                                     mag_floor=0.0)[2]["pull_rms"]
             for seed in (21, 22, 23, 24)]
    pooled = np.sqrt(np.mean(np.square(pulls)))
    assert 0.8 <= pooled <= 1.25  # achieved 0.96


@pytest.mark.parametrize("gray_range", [(1.0, 1.0), (0.7, 1.0)], ids=["no-gray-loss", "gray-losses"])
def test_real_calspec_stars_through_the_command_line(calspec_dir, ck04_dir, tmp_path, gray_range):
    """Held-out CALSPEC stars, calibrated through the CLI with the correction learned from the training stars."""
    correction, _ = learned(calspec_dir, ck04_dir)
    correction_file = tmp_path / "correction_training.ecsv"
    correction.write(correction_file)
    exposure = make_calspec_exposure(calspec_files(calspec_dir, HELD_OUT), fwhm=30.0, n_pix=621,
                                     gray_range=gray_range, seed=2)
    red, cat = exposure.write(tmp_path, stem="calspec")
    out = tmp_path / "calibrated.fits"
    status = main(["calibrate", str(red), "--catalog", str(cat), "--templates", str(ck04_dir), "--fwhm", "30",
                   "--template-correction", str(correction_file), "--output", str(out), "--quiet"])
    assert status == 0
    result = FluxCalibrationResult.read(out)
    assert result.summary["n_stars_used"] == len(HELD_OUT)
    accuracy = calibration_accuracy(result, exposure.truth["wavelength"],
                                    exposure.truth["system_calibration"] / true_level(result.summary,
                                                                                      exposure.truth["gray"]),
                                    wave_range=(3800.0, 9200.0), exclude_regions=TELLURIC)
    # achieved: median 0.09 %, p95 0.53 % (the same frame uncorrected: 0.21 %, 1.30 %)
    assert accuracy["median_abs_error"] <= 0.0014
    assert accuracy["p95_abs_error"] <= 0.008
    assert accuracy["n_pixels"] > 0.6 * np.count_nonzero(
        (exposure.truth["wavelength"] > 3800 * u.AA) & (exposure.truth["wavelength"] < 9200 * u.AA))


def test_real_calspec_errors_are_honest(calspec_dir, ck04_dir, tmp_path):
    """Frames of the held-out stars, pooled over four noise realisations: the floor learned from the training
    stars makes (Cal − truth)/σ about 1; without it the pull is far above; the correction learned from the
    training stars halves the error.

    The catalogue error model is the simulator's: no zero-point error, no
    per-star systematic. The split is that of `tests/calspec_split.py`.
    """
    correction, floor = learned(calspec_dir, ck04_dir)
    files = calspec_files(calspec_dir, HELD_OUT)
    pulls = {"floor": [], "none": [], "corrected": []}
    errors = {"floor": [], "corrected": []}
    for seed in (1, 2, 3, 4):
        exposure = make_calspec_exposure(files, fwhm=30.0, n_pix=621, gray_range=(0.7, 1.0), seed=seed)
        red, cat = exposure.write(tmp_path, stem=f"cs{seed}")
        for label, misfit, corr in (("floor", floor, None), ("none", 0.0, None), ("corrected", None, correction)):
            run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=ck04_dir, fwhm=30.0, template_misfit=misfit,
                                                   template_correction=corr, zero_point_sigma=0.0, mag_floor=0.0,
                                                   output=tmp_path / f"cs{seed}_{label}.fits"))
            truth = exposure.truth["system_calibration"] / true_level(run.result.summary, exposure.truth["gray"])
            accuracy = calibration_accuracy(run.result, exposure.truth["wavelength"], truth,
                                            wave_range=(3800.0, 9200.0), exclude_regions=TELLURIC)
            pulls[label].append(accuracy["pull_rms"])
            if label in errors:
                errors[label].append((accuracy["median_abs_error"], accuracy["p95_abs_error"]))
    pooled = {k: np.sqrt(np.mean(np.square(v))) for k, v in pulls.items()}
    floor_err, corrected_err = np.max(errors["floor"], axis=0), np.max(errors["corrected"], axis=0)
    # achieved (worst of four frames): uncorrected median 0.28 %, p95 1.30 %; corrected 0.15 %, 0.60 %
    assert floor_err[0] <= 0.0042 and floor_err[1] <= 0.02
    assert corrected_err[0] <= 0.0022 and corrected_err[1] <= 0.009
    # the correction more than halves the error of the same frames (achieved: mean ratio 0.44 for the median
    # error and 0.45 for the p95)
    ratio = np.mean(np.array(errors["corrected"]) / np.array(errors["floor"]), axis=0)
    assert ratio[0] <= 0.65 and ratio[1] <= 0.65
    # achieved pooled pulls: floor 0.94, none 1.80
    assert 0.8 <= pooled["floor"] <= 1.25
    assert pooled["none"] > 1.4 * pooled["floor"]


def test_corrected_errors_are_honest_for_a_held_out_star(calspec_dir, ck04_dir):
    """Single-standard frames of each held-out star with the correction learned without it: pull rms about 1.

    The correction's σ is its leave-one-star-out predictive scatter: the
    error for one star it has not seen. Achieved: pooled pull 0.83 over 8
    stars × 2 seeds; median error 0.25 %, worst p95 2.0 %.
    """
    correction, _ = learned(calspec_dir, ck04_dir)
    rows = [calspec_frame_accuracy([f], ck04_dir, correction, seed)
            for f in calspec_files(calspec_dir, HELD_OUT) for seed in (1, 2)]
    pooled = np.sqrt(np.mean([r["pull_rms"] ** 2 for r in rows]))
    assert 0.8 <= pooled <= 1.25
    assert np.median([r["median_abs_error"] for r in rows]) <= 0.004
    assert max(r["p95_abs_error"] for r in rows) <= 0.03


def test_corrected_errors_are_honest_with_many_standards(calspec_dir, ck04_dir, tmp_path):
    """Frames of the eight held-out stars with the training correction: the pull rms is about 1.

    Each standard's misfit after correction is split into a part shared by the
    standards of similar [M/H] and the star's own part, which averages down
    over the standards (`TemplateCorrection.misfit_for_standards`). Achieved:
    pooled pull 0.84 (seeds 0.95, 0.72); counting each standard's whole σ as
    shared (the previous term) gave 0.59.
    """
    correction, _ = learned(calspec_dir, ck04_dir)
    files = calspec_files(calspec_dir, HELD_OUT)
    pulls = []
    for seed in (1, 2):
        exposure = make_calspec_exposure(files, fwhm=30.0, n_pix=621, gray_range=(0.7, 1.0), seed=seed)
        red, cat = exposure.write(tmp_path, stem=f"many{seed}")
        run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=ck04_dir, fwhm=30.0,
                                               template_correction=correction, zero_point_sigma=0.0, mag_floor=0.0,
                                               output=tmp_path / f"many{seed}_cal.fits"))
        truth = exposure.truth["system_calibration"] / true_level(run.result.summary, exposure.truth["gray"])
        pulls.append(calibration_accuracy(run.result, exposure.truth["wavelength"], truth,
                                          wave_range=(3800.0, 9200.0), exclude_regions=TELLURIC)["pull_rms"])
    # bounds at about 1.5x the achieved departure from 1
    assert 0.75 <= np.sqrt(np.mean(np.square(pulls))) <= 1.25



G_DWARFS = ("hd209458", "hd38949", "hd159222", "hd37962", "hd185975", "p041c", "p330e", "p177d")
"""Eight solar-type G dwarfs ([M/H] −0.23 … +0.23): no other star of the 17 lies within 0.45 dex of them."""


@pytest.mark.slow
def test_corrected_errors_grow_beyond_the_training_span(calspec_dir, ck04_dir, tmp_path):
    """Eight G dwarfs with a correction learned only from the nine other stars ([M/H] −2.3 … −0.7).

    The G dwarfs lie 1.9–3.7 domain margins beyond those stars' span, so their
    σ carries the extrapolation term learned by holding stars out beyond the
    others' span. The ck04 blue edge is off by +4–5 % at 3800–4000 Å for
    them, which no metal-poor star shows. Achieved (seeds 1, 2): pooled pull
    0.86, 3800–4300 Å pull 1.30; with the library floor instead (before)
    0.97 and 2.00 — the floor sat at 1.5 % where the error is 4.5 %.

    The stars share their lines' misfit too (G band, Mg b): the bridging term
    counts shared residual structure only beyond what the templates' lines
    allow (`kspec_fluxcal.bridging.LINE_MISFIT_FRACTION`). Pulls per band,
    3800–4300 / 4300–5000 / 5000–6000 / 6000–7000 / 7000–8000 / 8000–9200 Å:
    1.30 / 1.22 / 0.57 / 0.62 / 0.75 / 0.65, pooled 0.85; when it read that
    misfit as throughput structure 1.30 / 0.66 / 0.55 / 0.62 / 0.73 / 0.65,
    pooled 0.74; without the term 0.86 (4300–5000 Å 1.25).
    """
    from kspec_fluxcal.apply import calibration_on_grid
    from kspec_fluxcal.calspec_correction import derive_template_correction
    from kspec_fluxcal.masks import load_mask_array

    others = tuple(n for n in TRAINING + HELD_OUT if n not in G_DWARFS)
    correction = derive_template_correction(calspec_files(calspec_dir, others + G_DWARFS), ck04_dir,
                                            exclude=list(G_DWARFS))
    assert sorted(correction.meta["used_stars"]) == sorted(others)
    pulls, waves = [], []
    for seed in (1, 2):
        exposure = make_calspec_exposure(calspec_files(calspec_dir, G_DWARFS), fwhm=30.0, n_pix=621, seed=seed)
        red, cat = exposure.write(tmp_path, stem=f"gdwarfs{seed}")
        run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=ck04_dir, fwhm=30.0,
                                               template_correction=correction, zero_point_sigma=0.0, mag_floor=0.0,
                                               output=tmp_path / f"gdwarfs{seed}_cal.fits"))
        wave = u.Quantity(exposure.truth["wavelength"], u.AA)
        truth = u.Quantity(exposure.truth["system_calibration"]).value / true_level(run.result.summary,
                                                                                   exposure.truth["gray"])
        factor, var, bad = calibration_on_grid(run.result.combined_vector, wave)
        sel = ~bad & (wave.value >= 3800.0) & (wave.value <= 9200.0) & ~load_mask_array(wave, TELLURIC)
        pull = (factor[sel] - truth[sel]) / np.sqrt(var[sel])
        pulls.append(pull)
        waves.append(wave.value[sel])
    pull, wave = np.concatenate(pulls), np.concatenate(waves)
    bands = {edges: np.sqrt(np.mean(pull[(wave >= edges[0]) & (wave < edges[1])] ** 2))
             for edges in ((3800, 4300), (4300, 5000), (5000, 6000), (6000, 7000), (7000, 8000), (8000, 9200))}
    pooled = np.sqrt(np.mean(pull**2))
    print(f"pooled pull rms {pooled:.2f}; per band:", ", ".join(f"{a}-{b} A {p:.2f}" for (a, b), p in bands.items()))
    assert 0.8 <= pooled <= 1.25
    # the metal-poor stars cannot foresee the sign the solar stars need there: bounded, not 1
    assert 0.75 <= bands[(3800, 4300)] <= 1.5
    # the G band and Mg b: the stars' shared line misfit is not read as throughput structure (0.66 when it was)
    assert 0.8 <= bands[(4300, 5000)] <= 1.5


def test_the_split_is_recorded_and_disjoint(calspec_dir):
    """The named stars are there, each once, and none is both a training and a held-out star."""
    assert not set(TRAINING) & set(HELD_OUT)
    assert [star_name(p) for p in calspec_files(calspec_dir, TRAINING + HELD_OUT)] == [*TRAINING, *HELD_OUT]


PROXY_FRAMES = (("hd209458", "hd38949", "hd159222", "hd37962", "hd185975", "p041c", "bd29d2091", "bd54d1216"),
                ("hd209458", "hd38949", "hd185975", "p041c", "p330e", "p177d", "bd02d3375", "hd031128"))
"""Two frames of ``benchmarks/bench_similar_standards.py``'s ``gdwarf-proxy``: six G dwarfs and two metal-poor F
stars; the other nine stars (two G dwarfs among them) train the correction."""


@pytest.mark.slow
def test_open_frame_proxy_of_six_g_dwarfs_and_two_metal_poor_stars(calspec_dir, ck04_dir, tmp_path):
    """Six G dwarfs and two metal-poor F stars, correction learned from the nine other stars (issue 22's open frame).

    The frames the issue's first target describes (stars the correction never
    saw, of the kinds it was learned from). Achieved (seed 1, these two
    rotations, `calibration_accuracy`): median 0.19 / 0.11 %, p95 1.23 /
    0.40 %, pull 0.97 / 0.67 (pooled 0.84). The first rotation, trained on
    P330E and P177D only among the G dwarfs, is the benchmark's worst
    (``gdwarf-proxy``: p95 1.22–1.85 % over seeds 1–4, target ≤ 1.2 %).
    """
    from kspec_fluxcal.calspec_correction import derive_template_correction

    every = TRAINING + HELD_OUT
    figures, pulls = [], []
    for k, frame in enumerate(PROXY_FRAMES):
        correction = derive_template_correction(calspec_files(calspec_dir, every), ck04_dir, exclude=list(frame))
        assert not set(correction.meta["used_stars"]) & set(frame)
        exposure = make_calspec_exposure(calspec_files(calspec_dir, frame), fwhm=30.0, n_pix=621, seed=1)
        red, cat = exposure.write(tmp_path, stem=f"proxy{k}")
        run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=ck04_dir, fwhm=30.0,
                                               template_correction=correction, zero_point_sigma=0.0, mag_floor=0.0,
                                               output=tmp_path / f"proxy{k}_cal.fits"))
        truth = exposure.truth["system_calibration"] / true_level(run.result.summary, exposure.truth["gray"])
        acc = calibration_accuracy(run.result, exposure.truth["wavelength"], truth, wave_range=(3800.0, 9200.0),
                                   exclude_regions=TELLURIC)
        figures.append(acc)
        pulls.append(acc["pull_rms"])
    # bounds at about 1.5x what is achieved
    assert max(f["median_abs_error"] for f in figures) <= 0.003
    assert max(f["p95_abs_error"] for f in figures) <= 0.019
    assert 0.65 <= np.sqrt(np.mean(np.square(pulls))) <= 1.25
