"""How close a calibration is to a known truth: the figures the accuracy tests, the demo and the benchmarks report.

Accuracy is the median and 95th percentile of abs(Cal/truth − 1) over the
unmasked pixels; honesty is the rms of the pulls (Cal − truth)/σ, which is 1
when the stated variance is right. Judge honesty pooled over several noise
realisations: one exposure's pulls share one draw of the level error.
"""

import numpy as np
from astropy import units as u

from .apply import calibration_on_grid
from .masks import load_mask_array

__all__ = ["calibration_accuracy", "true_level"]


def calibration_accuracy(result, truth_wavelength, truth_calibration, wave_range=(3700.0, 9500.0),
                         exclude_regions=None):
    """Compare a combined calibration with the truth.

    Returns a dict with the median and 95th percentile of abs(Cal/truth − 1) over
    unmasked pixels in ``wave_range`` (outside ``exclude_regions``), the level
    error (median ratio − 1) and the rms of the pulls (Cal − truth)/σ.
    """
    wave = u.Quantity(truth_wavelength, u.AA)
    factor, var, bad = calibration_on_grid(result.combined_vector, wave)
    truth = np.asarray(u.Quantity(truth_calibration).value, float)
    sel = ~bad & (wave.value >= wave_range[0]) & (wave.value <= wave_range[1])
    if exclude_regions is not None:
        sel &= ~load_mask_array(wave, exclude_regions)
    ratio = factor[sel] / truth[sel]
    err = np.abs(ratio - 1)
    pulls = (factor[sel] - truth[sel]) / np.sqrt(var[sel])
    return {
        "median_abs_error": float(np.median(err)),
        "p95_abs_error": float(np.percentile(err, 95)),
        "level_error": float(np.median(ratio) - 1),
        "pull_rms": float(np.sqrt(np.mean(pulls**2))),
        "n_pixels": int(sel.sum()),
        "n_stars_used": int(result.summary["n_stars_used"]),
    }


def true_level(summary, gray):
    """The true gray level a combined calibration refers to, from the true gray factors of the standards.

    The combination sets its level at the geometric mean of the gray factors
    of the stars that set the level (``per_star_metrics`` ``sets_level``;
    the used stars for products without that flag), so the truth to compare
    with is Cal_true / this level.

    Parameters
    ----------
    summary : dict
        ``FluxCalibrationResult.summary``.
    gray : ndarray
        True gray factor of every fiber (indexed by ``fiber_id``).

    Returns
    -------
    float
    """
    metrics = [m for m in summary["per_star_metrics"] if m.get("used")]
    fibers = [m["fiber_id"] for m in metrics if m.get("sets_level", True)]
    return float(np.exp(np.mean(np.log(np.asarray(gray, dtype=float)[fibers]))))
