"""Robust statistics over stars or exposures: one home for the constants and the column-wise estimators.

Arrays are (rows, pixels): one row per star or exposure on one wavelength
grid, NaN where a row is undefined.
"""

import math
import warnings

import numpy as np
from scipy.ndimage import uniform_filter1d

MAD_TO_SIGMA = 1.482602218505602
"""σ of a normal distribution per unit median absolute deviation, 1 / Φ⁻¹(3/4)."""

MEDIAN_VARIANCE_FACTOR = math.pi / 2
"""Variance of the median of n normal values per unit variance of their mean (large n)."""


def nanmedian_columns(x):
    """Median over axis 0 ignoring NaN (NaN where a column has no value).

    Sorting sends NaN to the end, so each column's median sits at the middle
    of its finite count: much faster than `numpy.nanmedian` on (stars, pixels).

    Examples
    --------
    >>> nanmedian_columns(np.array([[1.0, np.nan], [3.0, np.nan], [2.0, 5.0]])).tolist()
    [2.0, 5.0]
    """
    srt = np.sort(x, axis=0)
    n = np.sum(np.isfinite(x), axis=0)
    lo = np.take_along_axis(srt, np.maximum((n - 1) // 2, 0)[None, :], axis=0)[0]
    hi = np.take_along_axis(srt, np.maximum(n // 2, 0)[None, :], axis=0)[0]
    return np.where(n > 0, 0.5 * (lo + hi), np.nan)


def robust_sigma_columns(x, floor=0.0):
    """MAD-based σ over axis 0, ignoring NaN, floored at ``floor``."""
    mad = nanmedian_columns(np.abs(x - nanmedian_columns(x)))
    return np.maximum(MAD_TO_SIGMA * mad, floor)


def row_nanmedian(x):
    """Median of each row ignoring NaN; NaN (without a warning) for a row with no value."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        return np.nanmedian(x, axis=1)


def row_nanmean(x):
    """Mean of each row ignoring NaN; NaN (without a warning) for a row with no value."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        return np.nanmean(x, axis=1)


def combine_shapes(shape, log_variance, use, method="weighted_mean", smooth_window=None, weight_variance=None):
    """Average ln shapes (rows) at each pixel, with the variance of the average.

    Shared by the combination of a frame's standards and of a night's
    exposures. The variance is the larger of the formal one (inverse-variance
    weights; ×π/2 for a median) and the empirical scatter of the rows about
    the average where at least 3 rows take part, else the formal one.

    Parameters
    ----------
    shape, log_variance : ndarray, shape (n_rows, n_pix)
        ln of the gray-normalised vectors and their variances.
    use : ndarray of bool, shape (n_rows, n_pix)
        Values that take part (rows with a non-positive variance never do).
    method : {'weighted_mean', 'median'}
        Inverse-variance weighted mean, or median.
    smooth_window : int, optional
        Pixels of a running mean applied to the empirical variance before it is
        compared with the formal one.
    weight_variance : ndarray, shape (n_rows, n_pix), optional
        The variances that set the weights of the weighted mean (default
        ``log_variance``), e.g. the noise plus each row's own template misfit;
        the formal variance is then Σw²·``log_variance``/(Σw)² and the
        empirical scatter keeps the ``log_variance`` weights.

    Returns
    -------
    mean, variance : ndarray, shape (n_pix,)
        NaN where no row takes part.
    n_at : ndarray of int, shape (n_pix,)
        Rows taking part at each pixel.
    """
    use = use & (log_variance > 0)
    n_at = use.sum(axis=0)
    w = np.where(use, 1.0 / np.where(use, log_variance, 1.0), 0.0)
    wsum = w.sum(axis=0)
    defined = n_at > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "median":
            mean = nanmedian_columns(np.where(use, shape, np.nan))
            formal = MEDIAN_VARIANCE_FACTOR / wsum
        elif weight_variance is not None:
            v = np.where(use, 1.0 / np.where(use, weight_variance, 1.0), 0.0)
            vsum = v.sum(axis=0)
            mean = np.sum(v * np.where(use, shape, 0.0), axis=0) / vsum
            formal = np.sum(v**2 * np.where(use, log_variance, 0.0), axis=0) / vsum**2
        else:
            mean = np.sum(w * np.where(use, shape, 0.0), axis=0) / wsum
            formal = 1.0 / wsum
        resid2 = np.where(use, (shape - mean) ** 2, 0.0)
        empirical = np.sum(w * resid2, axis=0) / wsum / np.maximum(n_at - 1, 1)
    if smooth_window:
        empirical = uniform_filter1d(np.where(defined, empirical, 0.0), int(smooth_window), mode="nearest")
    return mean, np.where(n_at >= 3, np.maximum(formal, empirical), formal), n_at
