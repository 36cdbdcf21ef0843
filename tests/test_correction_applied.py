"""The template correction the library applies, against the kernel curve recomputed here from the training stars.

`tests/calspec_split.py` learns a correction from the nine training stars;
each training star's spectrum / model curve is stored in it. This test
recomputes, in numpy and from those curves alone, the factor a template of
[M/H] = f must receive — the Gaussian-kernel mean of the curves in [M/H]
(weights exp(−½((f − f_s)/h)²)), its departure from 1 shrunk by
d²/(d² + s²/n_eff) when the model says so, 1 outside the Teff/[M/H] domain —
and compares it with what the template library actually multiplies the
ck04 models by (corrected grid / uncorrected grid). A factor whose departure
from 1 is scaled (doubled, halved) or taken at the wrong [M/H] fails here by
the size of the departure, percent-level, against a tolerance of 1e-5.
"""

import numpy as np
import pytest

from kspec_fluxcal.templates import TemplateLibrary

from .calspec_split import TRAINING, learned


def _expected_factor(correction, teff, feh):
    model = correction.meta["model"]
    domain = model["domain"]
    if not (domain["teff"][0] <= teff <= domain["teff"][1] and domain["feh"][0] <= feh <= domain["feh"][1]):
        return np.ones(correction.wavelength.size)
    names = list(model["training"])
    stack = np.array([correction.curves[name] for name in names])
    train_feh = np.array(model["feh"], dtype=float)
    weights = np.exp(-0.5 * ((train_feh - feh) / model["bandwidth_dex"]) ** 2)
    mean = np.sum(weights[:, None] * stack, axis=0) / weights.sum()
    if not model.get("shrinkage", False):
        return mean
    n_eff = weights.sum() ** 2 / np.sum(weights**2)
    departure = mean - 1.0
    noise = np.var(stack, axis=0, ddof=1) / n_eff
    return 1.0 + departure * departure**2 / (departure**2 + noise)


def _check_applied(library_dir, correction, min_checked, min_departures):
    """Compare the factor the library applies with `_expected_factor` on every 5000–7000 K model."""
    plain = TemplateLibrary(library_dir, correction="none")
    corrected = TemplateLibrary(library_dir, correction=correction)
    wave, flux0, _, entries = plain.load_grid()
    _, flux1, _, _ = corrected.load_grid()
    lam = correction.wavelength.value
    inside = (wave.value >= lam[0]) & (wave.value <= lam[-1])
    checked, departures = 0, []
    for row in entries:
        if not 5000.0 <= row["teff"] <= 7000.0:
            continue
        k = int(row["index"])
        ok = inside & (flux0[k] > 0)
        applied = flux1[k][ok].astype(float) / flux0[k][ok].astype(float)
        expected = np.interp(wave.value[ok], lam, _expected_factor(correction, float(row["teff"]),
                                                                  float(row["feh"])))
        assert np.max(np.abs(applied / expected - 1)) < 1e-5, (row["teff"], row["feh"])
        checked += 1
        if correction.covers(row["teff"], row["feh"]):
            departures.append(np.max(np.abs(expected - 1)))
    assert checked >= min_checked and len(departures) >= min_departures
    # the check has teeth: templates inside the domain get percent-level departures (a doubled one moves that much)
    assert np.median(departures) > 0.01


def test_the_applied_correction_on_two_metallicities(calspec_dir, ck04_dir, ck04_subset):
    """The same check on the [M/H] = −0.5 and 0 models only, in the default run (the whole grid is slow)."""
    correction, _ = learned(calspec_dir, ck04_dir)
    _check_applied(ck04_subset(("ckm05", "ckp00")), correction, 10, 10)


@pytest.mark.slow
def test_the_applied_correction_is_the_kernel_mean_of_the_training_curves(calspec_dir, ck04_dir):
    correction, _ = learned(calspec_dir, ck04_dir)
    assert sorted(correction.meta["model"]["training"]) == sorted(TRAINING)
    _check_applied(ck04_dir, correction, 20, 10)
