"""Throughput structure the smooth calibration does not follow: the ``bridging`` term of the error budget.

The smooth form of the calibration is a cubic B-spline with knots every
``h`` Å (`kspec_fluxcal.knot_selection`). An instrument's throughput has
structure of its own (VPH-grating, dichroic and coating ripples of 100–600 Å,
steps): between knots the spline leaves part of it out, and across the pixels
left out of its fit (telluric windows, strong stellar lines, the ends of the
frame) it bridges a gap where nothing tells it what the throughput does.
Neither the counts' noise nor the smoothing choice (the change from the next
finer spacing) measures that.

The stars measure it themselves. Each star's per-pixel ln(Cal) less its
smooth form is, on the pixels the fit kept, the structure the spline leaves
plus the star's noise and its own misfit. Each star's residual is box-filtered
over `FILTER_FRACTION` of a knot interval (line misfit on the LSF's scale
averages down, throughput structure of ≥ 100 Å does not); the mean product of
*different* stars' filtered residuals (inverse-variance weights) keeps only
what the stars share — noise and each star's own misfit are independent
between stars — and, averaged over one knot interval, gives the variance of
the shared structure the spline does not follow. The stars also share their
template misfit, which the budget's ``template_misfit`` term already states:
only the excess over its variance is the instrument's (as the knot choice asks
a finer spacing to beat the misfit, `kspec_fluxcal.knot_selection`).

Stars of one type also share the misfit of their templates' *lines*
(G-band, Mg b and the blue line forest of G dwarfs), which the stated misfit,
a broad-scale σ, does not describe: structure that follows the templates'
lines is not the instrument's. Each star's template says where its lines are
(`line_structure`: the total change of ln(model/continuum), box-filtered as
the residuals are, over the filter width); a template whose lines are a fraction
`LINE_MISFIT_FRACTION` off in strength, width or place leaves up to that
fraction of it in the star's filtered residual. The shared structure is
counted only beyond that allowance (the stars' weighted mean line structure ×
the fraction, squared, subtracted pixel by pixel before the average over a
knot interval). Ripples where the templates have no lines keep their whole
variance; with no template misfit stated (a SYNTHETIC library, whose models
are the stars' truth) nothing is allowed for.

In a gap the spline has no data: the term there is that of the nearest kept
samples, growing with the distance d to the nearest kept sample as
``1 + (2 d / h)²`` (twice at half a knot interval from the data, where a
cubic is no longer pinned by them).

Measured on frames of real CALSPEC stars through an instrument with
150–600 Å ripples (``tests/test_accuracy_independent.py``): pooled pull 1.10
with the term (1.05 before the line allowance), 1.33 without; 1.20 (1.18)
against 2.02 within 60 Å of a telluric band. On frames of eight similar G
dwarfs through a smooth throughput (``test_corrected_errors_grow_beyond_the_training_span``)
the term without the allowance read their shared line misfit as structure
(4300–5000 Å pull 0.66, pooled 0.74); with it 1.20 and 0.85 (0.86 with no
term at all).

The term applies to the smooth form only; it is common to all fibers and
correlated over about half a knot interval
(`kspec_fluxcal.covariance.CalibrationCovariance.from_budget`). It cancels
in flux corrected with a telluric transmission measured against the same
calibration, inside the windows where T was measured
(`kspec_fluxcal.containers.telluric_covariance`).
"""

import numpy as np
from scipy.ndimage import uniform_filter1d

__all__ = ["FILTER_FRACTION", "LINE_MISFIT_FRACTION", "RESIDUAL_KEY", "fit_residual", "line_structure",
           "unfollowed_structure"]

FILTER_FRACTION = 0.25
"""Width of the box filter of the mean residual, in knot intervals (21–62 Å for 85–250 Å knots):
wider than a line at the instrument's resolution, narrower than the throughput structure a
spline with these knots can miss (periods ≥ ~2 knot intervals)."""

LINE_MISFIT_FRACTION = 0.3
"""Fraction of the templates' own line structure (`line_structure`) that the standards' shared
residual structure may be template misfit before the rest counts as the instrument's. Measured on
frames of real CALSPEC stars (ck04, FWHM 30 Å) through a smooth throughput, in 250 Å bins: the shared
structure is 0.07–0.16 of the line structure in the median bin and 0.24–0.40 in the 90th
percentile (0.72–0.84 on frames of metal-poor stars alone, whose lines are weak); through an
instrument with 150–600 Å ripples 0.50–1.20 in the median bin."""

RESIDUAL_KEY = "fit_residual"
"""Key of a star vector's ``meta`` holding `fit_residual` (moved out by the error budget)."""


def fit_residual(values, smooth, variance, excluded, depth=None):
    """One star's residual from its smooth form, for `unfollowed_structure`.

    Parameters
    ----------
    values, smooth : ndarray
        Per-pixel calibration factor and its smooth form on one grid.
    variance : ndarray
        Statistical variance of ``values`` (counts' noise).
    excluded : ndarray of bool
        Samples left out of the smooth fit.
    depth : ndarray, optional
        The star's template line depth 1 − model/continuum on that grid (0
        when not given).

    Returns
    -------
    dict
        ``log_residual`` (ln(values / smooth), NaN where excluded or
        undefined), ``log_variance`` (its noise variance) and ``line_depth``.
    """
    values, smooth, variance = (np.asarray(a, dtype=float) for a in (values, smooth, variance))
    ok = ~np.asarray(excluded, dtype=bool) & (values > 0) & (smooth > 0) & (variance > 0) \
        & np.isfinite(values) & np.isfinite(smooth) & np.isfinite(variance)
    with np.errstate(divide="ignore", invalid="ignore"):
        residual = np.where(ok, np.log(values / smooth), np.nan)
        log_variance = np.where(ok, variance / values**2, np.nan)
    depth = np.zeros(values.shape) if depth is None else np.nan_to_num(np.asarray(depth, dtype=float))
    return {"log_residual": residual, "log_variance": log_variance, "line_depth": depth}


def line_structure(depth, width):
    """Each template's line structure as a filtered residual sees it: the total change of ln(model/continuum).

    Parameters
    ----------
    depth : ndarray
        Line depths 1 − model/continuum (stars × samples) at the instrument's resolution.
    width : int
        The residuals' box filter, in samples.

    Returns
    -------
    ndarray
        ln(model/continuum) box-filtered over the width, as the residuals
        are, and the sum of its absolute changes between neighbouring
        samples over the width (stars × samples, a fraction; at most
        EW/width for one line of equivalent width EW in ln): the line
        pattern the filtered residual sees, and so how much a template whose
        lines are a little wrong (strength, width, place) can print into
        it, at any resolution.
    """
    lines = np.log(np.clip(1.0 - np.asarray(depth, dtype=float), 1e-3, None))
    lines = uniform_filter1d(lines, width, axis=-1, mode="nearest")
    change = np.abs(np.diff(lines, axis=-1))
    change = 0.5 * (np.pad(change, [(0, 0)] * (change.ndim - 1) + [(1, 0)])
                    + np.pad(change, [(0, 0)] * (change.ndim - 1) + [(0, 1)]))
    return uniform_filter1d(change, width, axis=-1, mode="nearest") * width


def unfollowed_structure(wavelength, residuals, spacing, misfit=None, line_fraction=None):
    """Variance of ln(Cal) from throughput structure the smooth form does not follow (see the module).

    Parameters
    ----------
    wavelength : ndarray
        Å, increasing: the calibration grid.
    residuals : list of dict
        `fit_residual` of each used standard on that grid.
    spacing : float
        Knot spacing (Å) of the smooth form.
    misfit : ndarray, optional
        Fractional template misfit shared by the standards (the budget's
        ``template_misfit`` term) on that grid: the stars share it too, so
        only the structure beyond it is the instrument's.
    line_fraction : float, optional
        Fraction of the templates' line structure allowed as their shared
        line misfit: by default `LINE_MISFIT_FRACTION` when a ``misfit`` is
        stated, 0 (all shared structure counts) when not — a library
        without a misfit term (SYNTHETIC: its models are the simulated
        stars' truth) has no line misfit either. Residuals without
        ``line_depth`` have no lines.

    Returns
    -------
    ndarray
        Variance of ln(Cal) at each sample (0 when no star kept any sample).
    """
    wave = np.asarray(wavelength, dtype=float)
    if not residuals or wave.size < 2:
        return np.zeros(wave.size)
    res = np.array([r["log_residual"] for r in residuals], dtype=float)
    var = np.array([r["log_variance"] for r in residuals], dtype=float)
    ok = np.isfinite(res) & np.isfinite(var) & (var > 0)
    kept = ok.any(axis=0)
    if np.count_nonzero(ok.any(axis=1)) < 2:
        return np.zeros(wave.size)
    step = float(np.median(np.diff(wave)))
    width = max(int(round(FILTER_FRACTION * spacing / step)), 1)
    interval = max(int(round(spacing / step)), 1)
    # each star's residual box-filtered over its kept samples, and that mean's inverse noise variance
    share = uniform_filter1d(ok.astype(float), width, axis=1, mode="nearest")
    has = share * width >= 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        filtered = np.where(has, uniform_filter1d(np.where(ok, res, 0.0), width, axis=1, mode="nearest") / share,
                            0.0)
        noise = uniform_filter1d(np.where(ok, var, 0.0), width, axis=1, mode="nearest") / (share**2 * width)
        weight = np.where(has, 1.0 / np.where(has, noise, 1.0), 0.0)
    depth = np.array([r.get("line_depth", np.zeros(wave.size)) for r in residuals], dtype=float)
    lines = line_structure(np.nan_to_num(depth), width)
    # structure shared by the stars: the weighted mean of the products of different stars' residuals
    # (unbiased by the noise and by each star's own misfit, which are independent between stars)
    sum_wf, sum_w = np.sum(weight * filtered, axis=0), np.sum(weight, axis=0)
    pairs = sum_w**2 - np.sum(weight**2, axis=0)
    cross = sum_wf**2 - np.sum((weight * filtered) ** 2, axis=0)
    kept = kept & (pairs > 0)
    excess = np.where(kept, cross / np.where(kept, pairs, 1.0), 0.0)
    if line_fraction is None:
        line_fraction = 0.0 if misfit is None else LINE_MISFIT_FRACTION
    fraction = float(line_fraction)
    allowance = np.where(kept, (fraction * np.sum(weight * lines, axis=0) / np.where(kept, sum_w, 1.0)) ** 2, 0.0)
    if not kept.any():
        return np.zeros(wave.size)
    count = uniform_filter1d(kept.astype(float), interval, mode="nearest")
    near = count * interval >= 0.5
    local = np.where(near, uniform_filter1d(excess - allowance, interval, mode="nearest") / np.where(near, count, 1.0),
                     np.nan)
    local = np.interp(wave, wave[near], local[near])
    if misfit is not None:
        local = local - np.nan_to_num(np.asarray(misfit, dtype=float)) ** 2
    local = np.maximum(local, 0.0)
    kept_wave = wave[kept]
    index = np.clip(np.searchsorted(kept_wave, wave), 1, kept_wave.size - 1) if kept_wave.size > 1 else None
    if index is None:
        distance = np.abs(wave - kept_wave[0])
    else:
        distance = np.minimum(np.abs(wave - kept_wave[index - 1]), np.abs(wave - kept_wave[index]))
    return local * (1.0 + (2.0 * distance / spacing) ** 2)
