"""A split of the 17 real CALSPEC F/G stars of ../shared/data into training and held-out stars.

The real-star accuracy tests calibrate frames of the HELD-OUT stars only,
with what was learned from the TRAINING stars: the ck04 template correction
(`~kspec_fluxcal.calspec_correction.derive_template_correction` with the
held-out stars excluded) and the template-misfit floor (the formula of
``benchmarks/derive_misfit_floor.py`` applied to the training stars' curves).
The shipped correction and floor files are learned from stars of both parts,
so these tests do not use them.

The split alternates along [M/H] (fitted by the derivation), so that both
parts hold metal-poor and solar-metallicity G dwarfs: similar standards
share most of their template misfit, and a test on stars unlike the training
ones would prove nothing about the similar stars a frame holds.
"""

import functools
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter1d

TRAINING = ("hd200654", "bd02d3375", "hd160617", "bd54d1216", "hd111980", "p330e", "hd209458", "p041c",
            "hd159222")
"""Stars the correction and the floor are learned from ([M/H] −2.3 … +0.2)."""

HELD_OUT = ("bd26d2606", "bd29d2091", "bd_17d4708", "hd031128", "hd38949", "hd37962", "hd185975", "p177d")
"""Stars the real-CALSPEC accuracy tests observe ([M/H] −2.1 … +0.1)."""


def star_name(path):
    """The CALSPEC star name of a file: its stem before ``_stis``."""
    return Path(path).name.split("_stis")[0]


def calspec_files(calspec_dir, names):
    """The files of the stars ``names`` (each must be there exactly once)."""
    files = []
    for name in names:
        found = [p for p in sorted(Path(calspec_dir).glob("*.fits*")) if star_name(p) == name]
        assert len(found) == 1, f"CALSPEC star {name} not found once in {calspec_dir} ({found})"
        files.append(found[0])
    return files


@functools.lru_cache(maxsize=2)
def learned(calspec_dir, ck04_dir, fwhm=30.0):
    """(correction, floor) learned from the `TRAINING` stars only.

    ``correction`` is the `~kspec_fluxcal.templates.TemplateCorrection`
    derived without the held-out stars; ``floor(λ)`` is the fractional 1σ
    misfit the training stars share, σ² = ⟨m⟩²₂₅₀ + ⟨s²⟩₂₅₀/N with m and s
    the mean and scatter over the N training stars of (model / star − 1)
    and ⟨⟩₂₅₀ a 250 Å running mean.
    """
    from kspec_fluxcal.calspec_correction import derive_template_correction

    files = calspec_files(calspec_dir, TRAINING + HELD_OUT)
    correction = derive_template_correction(files, ck04_dir, fwhm=fwhm, exclude=list(HELD_OUT))
    assert sorted(correction.meta["used_stars"]) == sorted(TRAINING), correction.meta["used_stars"]
    misfit = np.array([1.0 / correction.curves[name] - 1.0 for name in TRAINING])
    step = 10.0
    grid = np.arange(correction.wavelength.value[0], correction.wavelength.value[-1], step)
    on_grid = np.array([np.interp(grid, correction.wavelength.value, m) for m in misfit])
    width = int(250.0 / step)
    mean = uniform_filter1d(np.mean(on_grid, axis=0), width, mode="nearest")
    scatter2 = uniform_filter1d(np.var(on_grid, axis=0, ddof=1), width, mode="nearest")
    sigma = np.sqrt(uniform_filter1d(mean**2, width, mode="nearest") + scatter2 / len(TRAINING))

    def floor(wavelength):
        return np.interp(np.asarray(wavelength, dtype=float), grid, sigma)

    return correction, floor
