"""Robust combination of the calibration vectors of several standard stars.

Each star's vector differs from the others by a gray factor (the fiber's
aperture loss, the star's photometric scale) and by noise and model misfit.
The combination works in ln(Cal): it removes each star's gray factor against
the median shape, rejects stars that fail quality gates or deviate from the
others (median/MAD statistics, which work for 3–10 stars), averages the
shapes, and then sets the absolute level from the gray factors of the stars
used — the calibrated spectra carry the typical aperture loss of the
standards.

The level is the **mean of ln(gray)** (the geometric mean of the gray
factors) of the used stars whose ln(gray) lies within `LEVEL_TOLERANCE` of
the median; a star whose aperture loss is far from the others' (a mis-centred
fibre) does not set it (meta ``sets_level``). The mean averages every
star's photometric scale error (σ/√n); the median of stars whose gray
factors are spread far wider than those errors would rest on the one or two
middle stars (σ/√2 whatever n).
"""

import copy
import logging
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from astropy import units as u
from scipy.ndimage import median_filter, uniform_filter1d

from .containers import CalibrationVector, FluxCalibrationResult
from .exceptions import CalibrationError, InputDataError, KspecFluxcalWarning
from .extinction import extinction_per_ebv
from .stats import (
    MAD_TO_SIGMA,
    combine_shapes,
    nanmedian_columns,
    robust_sigma_columns,
    row_nanmean,
    row_nanmedian,
)

__all__ = ["LEVEL_TOLERANCE", "TILT_ALLOWANCE", "WEIGHT_KEY", "QualityGates", "combine_calibration_vectors",
           "level_stars", "photometric_tilts", "separate_gray_terms"]

log = logging.getLogger(__name__)

LEVEL_TOLERANCE = 0.5
"""Largest distance of a used star's ln(gray) from the median ln(gray) for it to set the level (a factor 1.65)."""

WEIGHT_KEY = "combine_weight"
"""Per-star vector meta key of the star's normalised weight in the combined shape at each pixel (set when the
combination is given the stars' template misfits; read and removed by the error budget)."""

TILT_ALLOWANCE = 3.0
"""Most reddening tilt, in units of a star's own E(B−V) error, that the shape-outlier test forgives
(`separate_gray_terms`)."""


def level_stars(log_gray, active, tolerance=LEVEL_TOLERANCE):
    """The stars whose gray terms set the absolute level: used, and within ``tolerance`` of the median.

    The star(s) nearest the median always count, so that gray factors split in
    two far-apart groups still give a level.

    Parameters
    ----------
    log_gray : ndarray, shape (n_star,)
        ln of each star's gray factor (any common offset).
    active : ndarray of bool, shape (n_star,)
        The stars used in the combination.
    tolerance : float
        Largest distance from the median ln(gray) of the used stars.

    Returns
    -------
    ndarray of bool, shape (n_star,)

    Examples
    --------
    >>> level_stars(np.log([0.8, 0.9, 0.85, 0.3]), np.array([True, True, True, True])).tolist()
    [True, True, True, False]
    >>> level_stars(np.array([-0.7, -0.6, 0.6, 0.7]), np.ones(4, bool)).tolist()
    [False, True, True, False]
    """
    log_gray = np.asarray(log_gray, dtype=float)
    active = np.asarray(active, dtype=bool) & np.isfinite(log_gray)
    if not active.any():
        return active
    distance = np.abs(log_gray - np.median(log_gray[active]))
    return active & (distance <= max(tolerance, np.min(distance[active])))


@dataclass
class QualityGates:
    """Per-star thresholds; a star failing one is rejected with the reason.

    Attributes
    ----------
    max_line_misfit : float
        Largest fractional misfit of the template to the star's lines,
        √(max(χ²/ν − 1, 0)) / (S/N): independent of the S/N, unlike χ²/ν.
    max_phot_rms : float
        Largest rms (mag) of the photometric residuals.
    reject_on_edge : tuple of str
        Parameters whose best value on the grid's edge rejects the star.
    min_snr : float
        Smallest median S/N per pixel.
    min_good_fraction : float
        Smallest fraction of usable pixels.
    outlier_sigma : float
        Robust (MAD) threshold for a star whose shape deviates from the others,
        after the reddening tilt its own E(B−V) error allows (`TILT_ALLOWANCE`).
    """

    max_line_misfit: float = 0.05
    max_phot_rms: float = 0.08
    reject_on_edge: tuple = ("teff", "feh")
    min_snr: float = 5.0
    min_good_fraction: float = 0.3
    outlier_sigma: float = 5.0


def _gate(meta, gates):
    """Reason a star fails the gates, or None."""
    ndof = meta.get("ndof") or 0
    chi2, snr = meta.get("chi2"), meta.get("snr_median")
    if chi2 is not None and ndof > 0 and snr and np.isfinite(snr) and snr > 0:
        misfit = np.sqrt(max(chi2 / ndof - 1.0, 0.0)) / snr
        if misfit > gates.max_line_misfit:
            return f"template misfit {100 * misfit:.1f}% of the continuum > {100 * gates.max_line_misfit:.1f}%"
    rms = meta.get("phot_rms")
    if rms is not None and np.isfinite(rms) and rms > gates.max_phot_rms:
        return f"photometric residual rms {rms:.3f} mag > {gates.max_phot_rms}"
    edge = meta.get("on_edge") or {}
    hit = [p for p in gates.reject_on_edge if edge.get(p)]
    if hit:
        return f"best {', '.join(hit)} on the template grid's edge"
    snr = meta.get("snr_median")
    if snr is not None and np.isfinite(snr) and snr < gates.min_snr:
        return f"median S/N {snr:.1f} < {gates.min_snr}"
    good = meta.get("good_fraction")
    if good is not None and good < gates.min_good_fraction:
        return f"usable pixel fraction {good:.2f} < {gates.min_good_fraction}"
    return None


def _log_vectors(vectors, smooth):
    """ln(Cal) and its variance as (n_star, n_pix) arrays on the common grid."""
    wave = vectors[0].wavelength
    unit = vectors[0].unit
    logs, lvars = [], []
    for i, vec in enumerate(vectors):
        if vec.wavelength.shape != wave.shape or not np.allclose(vec.wavelength.value, wave.value):
            raise InputDataError(
                f"calibration vector {i} is on another wavelength grid; put every vector on "
                "the same grid (compute_calibration_vector_for_star(output_wavelength=...))."
            )
        factor, variance = vec.best(smooth)
        factor = factor.to_value(unit)
        variance = variance.to_value(unit**2)
        bad = vec.mask if not smooth else ~np.isfinite(factor)
        bad = bad | ~np.isfinite(factor) | (factor <= 0) | ~np.isfinite(variance)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs.append(np.where(bad, np.nan, np.log(factor)))
            lvars.append(np.where(bad, np.nan, variance / factor**2))
    return wave, unit, np.array(logs), np.array(lvars)


def combine_calibration_vectors(
    vectors,
    method="weighted_mean",
    sigma_clip=3.0,
    smooth=False,
    smooth_window=51,
    representation=None,
    gates=None,
    rejected=None,
    extinction="F99",
    r_v=3.1,
    star_misfit=None,
):
    """Combine per-star calibration vectors into one.

    Parameters
    ----------
    vectors : list of `~kspec_fluxcal.containers.CalibrationVector`
        On one wavelength grid, one per standard.
    method : {'weighted_mean', 'median'}
        How the gray-normalised shapes are averaged at each wavelength.
    sigma_clip : float
        Per-pixel clipping (robust σ) of individual stars around the median.
    smooth : bool
        Smooth the combined vector further with a running median of
        ``smooth_window`` pixels followed by a running mean.
    smooth_window : int
        Window (pixels) of that smoothing.
    representation : {'smooth', 'pixel'}, optional
        Which form of the star vectors to combine; default the smooth form when
        every vector has one.
    gates : `QualityGates`, optional
        Per-star quality thresholds.
    rejected : list of dict, optional
        Stars already rejected upstream (each with ``star_name``, ``fiber_id``,
        ``reject_reason``); they are carried into the summary.
    extinction, r_v : str, float
        The reddening law of the stars' photometric fits: a star's E(B−V)
        error (meta ``ebv_error``) tilts its vector along this law's k(λ), and
        the shape-outlier test forgives that tilt (`separate_gray_terms`).
    star_misfit : ndarray, shape (n_star, n_pix), optional
        Each star's fractional 1σ template misfit on the vectors' grid (the
        template correction's σ at its fitted Teff and [M/H]). The weighted
        mean then weighs each star by 1/(noise² + misfit²): where one kind of
        standard is known to be modelled worse (solar G dwarfs below
        4300 Å), the better-modelled ones carry the shape. Each star's weight
        is left in its meta (`WEIGHT_KEY`) for the error budget, which counts
        the misfit of this weighted mean. (The generalised least-squares
        weights of the misfit's shared/own covariance were measured and not
        kept: they put most of the weight on the G dwarfs with the smallest
        extrapolated σ, and eight G dwarfs beyond the training span went from
        2.0–2.5 % to 2.5–3.6 % in their 95th percentile. Widening the
        per-pixel clip by the stars' misfit made them worse too, 2.06 → 2.80 %
        on seed 1.)

    Returns
    -------
    `~kspec_fluxcal.containers.FluxCalibrationResult`
        The combined vector (its ``meta['representation']`` says which form),
        the per-star vectors (meta ``used``, ``reject_reason``,
        ``gray_factor``), each star's fractional residual from the
        combination, and the summary (``n_stars_used``, ``n_stars_rejected``,
        ``rms_scatter``, ``wavelength_range``, ``per_star_metrics``).
    """
    if method not in ("weighted_mean", "median"):
        raise InputDataError(f"method must be 'weighted_mean' or 'median'; got {method!r}.")
    gates = gates or QualityGates()
    vectors = list(vectors)
    prior = [dict(r) for r in (rejected or [])]
    if not vectors:
        if prior:
            _raise_none_left([], [], prior)
        raise CalibrationError(
            "no standard-star calibration vector to combine; check the standards' catalogue matches and data quality."
        )
    if representation is None:
        representation = "smooth" if all(v.smooth_factor is not None for v in vectors) else "pixel"
    if representation not in ("smooth", "pixel"):
        raise InputDataError(f"representation must be 'smooth' or 'pixel'; got {representation!r}.")
    wave, unit, logc, lvar = _log_vectors(vectors, representation == "smooth")
    reasons = [_gate(v.meta, gates) for v in vectors]
    active = np.array([r is None for r in reasons])
    if not active.any():
        _raise_none_left(vectors, reasons, prior)

    tilts = photometric_tilts(vectors, wave, extinction, r_v)
    misfit2 = None
    if star_misfit is not None:
        misfit2 = np.asarray(star_misfit, dtype=np.float64) ** 2
        if misfit2.shape != logc.shape:
            raise InputDataError(f"star_misfit has shape {misfit2.shape}; it needs one row per vector on the "
                                 f"vectors' grid {logc.shape}.")
    return _combine(vectors, logc, lvar, wave, unit, reasons, active, prior, method, sigma_clip, smooth,
                    smooth_window, representation, gates, tilts, misfit2)


def photometric_tilts(vectors, wavelength, extinction="F99", r_v=3.1):
    """Each star's 1σ reddening tilt of ln(Cal): 0.4 ln 10 · k(λ) · σ(E(B−V)).

    A star's photometric fit leaves its colour excess uncertain by
    ``meta['ebv_error']``; the vector then tilts along the extinction curve
    k(λ) = A(λ)/E(B−V). A star without that error gets a zero row.

    Parameters
    ----------
    vectors : list of `~kspec_fluxcal.containers.CalibrationVector`
    wavelength : `~astropy.units.Quantity`
        Their common grid.
    extinction, r_v : str, float
        The reddening law fitted.

    Returns
    -------
    ndarray, shape (n_star, n_pix)
    """
    k = extinction_per_ebv(u.Quantity(wavelength, u.AA).value, extinction, r_v)
    errors = []
    for vec in vectors:
        err = vec.meta.get("ebv_error")
        errors.append(float(err) if err is not None and np.isfinite(err) and err > 0 else 0.0)
    return 0.4 * np.log(10) * np.outer(errors, k)


def _combine(vectors, logc, lvar, wave, unit, reasons, active, prior, method, sigma_clip, smooth, smooth_window,
             representation, gates, tilts, misfit2=None):
    use_smooth = representation == "smooth"
    n_star = len(vectors)
    gray, shape, active, outliers = separate_gray_terms(logc, active, gates.outlier_sigma, tilts=tilts)
    for i, dev, _ in outliers:
        reasons[i] = f"shape deviates from the other stars ({100 * dev:.1f}% rms)"

    gray_var = np.array([gray_log_variance(v.meta) for v in vectors])
    # the gray normalisation removes each star's gray error from its shape; it enters the level only
    lvar = np.maximum(lvar - gray_var[:, None], 0.25 * lvar)
    n_used = int(np.count_nonzero(active))
    if n_used == 1:
        warnings.warn(
            "only one standard star is usable: its calibration passes through unchecked.",
            KspecFluxcalWarning,
            stacklevel=2,
        )
    shape = logc - gray[:, None]
    use = active[:, None] & np.isfinite(shape)
    if n_used >= 3:
        med = nanmedian_columns(np.where(use, shape, np.nan))
        scatter = robust_sigma_columns(np.where(use, shape, np.nan))
        scatter = np.maximum(scatter, np.sqrt(nanmedian_columns(np.where(use, lvar, np.nan))))
        with np.errstate(invalid="ignore"):
            use &= np.abs(shape - med) <= sigma_clip * scatter
    weighting = None if misfit2 is None or method != "weighted_mean" else lvar + misfit2
    mean, var_shape, n_at = combine_shapes(shape, lvar, use, method,
                                           smooth_window=max(int(smooth_window), 3) if use_smooth else None,
                                           weight_variance=weighting)
    defined = n_at > 0
    weights = None
    if weighting is not None:
        usable = use & (lvar > 0)
        inverse = np.where(usable, 1.0 / np.where(usable, weighting, 1.0), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            weights = np.nan_to_num(inverse / inverse.sum(axis=0))

    sets_level = level_stars(gray, active)
    level = float(np.mean(gray[sets_level]))
    var_level = float(np.mean(gray_var[sets_level])) / np.count_nonzero(sets_level)

    combined_log = mean + level
    if smooth:
        filled = np.interp(np.arange(mean.size), np.flatnonzero(defined), combined_log[defined])
        filled = median_filter(filled, size=int(smooth_window), mode="nearest")
        combined_log = np.where(defined, uniform_filter1d(filled, max(int(smooth_window) // 3, 1)), np.nan)
    factor = np.exp(combined_log)
    variance = factor**2 * (var_shape + var_level)
    mask = ~defined | ~np.isfinite(factor)
    factor = np.where(mask, np.nan, factor)
    variance = np.where(mask, np.nan, variance)

    residuals = []
    per_star = []
    for i, vec in enumerate(vectors):
        meta = dict(vec.meta)
        meta["used"] = bool(active[i])
        meta["reject_reason"] = reasons[i]
        meta["gray_factor"] = float(np.exp(gray[i] - level)) if np.isfinite(gray[i]) else None
        meta["sets_level"] = bool(sets_level[i])
        if weights is not None:
            meta[WEIGHT_KEY] = weights[i]
        per_star.append(with_meta(vec, meta))
        with np.errstate(invalid="ignore"):
            residuals.append((np.exp(shape[i] - mean) - 1.0) * u.one)
    used_res = np.array([r.value for r, a in zip(residuals, active) if a])
    rms = float(np.sqrt(np.nanmean(used_res**2))) if n_used > 1 else np.nan
    good_wave = wave.value[~mask]
    metrics = [
        {k: _plain(vec.meta.get(k)) for k in (
            "star_name", "fiber_id", "teff", "logg", "feh", "alpha_m", "rv_kms", "ebv",
            "scale_factor", "phot_rms", "chi2", "ndof", "snr_median", "used", "reject_reason", "gray_factor",
            "sets_level",
        )}
        for vec in per_star
    ]
    metrics += [
        {"star_name": r.get("star_name"), "fiber_id": r.get("fiber_id"), "used": False,
         "reject_reason": r.get("reject_reason")}
        for r in prior
    ]
    summary = {
        "n_stars_used": n_used,
        "n_stars_rejected": int(n_star - n_used + len(prior)),
        "rms_scatter": rms,
        "wavelength_range": [float(good_wave.min()), float(good_wave.max())] if good_wave.size else None,
        "per_star_metrics": metrics,
        "method": method,
        "representation": representation,
        "smoothed": bool(smooth),
        "gates": asdict(gates),
    }
    combined = CalibrationVector(
        wavelength=wave,
        cal_factor=factor * unit,
        cal_variance=variance * unit**2,
        mask=mask,
        meta={"representation": representation, "n_stars_used": n_used, "method": method},
    )
    log.info("combined %d of %d standards; rms scatter %.2f%%", n_used, n_star, 100 * rms if rms == rms else 0)
    return FluxCalibrationResult(combined, per_star, residuals, summary)


def separate_gray_terms(logc, active, outlier_sigma, max_iter=5, tilts=None):
    """Split ln(calibration) rows into a gray term each and a shape; reject deviant shapes.

    Each row's gray term is its median offset from the median row; a row
    whose shape deviates (rms against the median shape) by more than
    ``outlier_sigma`` robust σ from the other rows' deviations is rejected,
    and the split is repeated without it. The robust σ is the MAD of the
    deviations, floored at a quarter of their median and at 0.1 %, so that
    3–10 nearly identical rows do not reject each other.

    With ``tilts``, the deviation is judged after removing the part of it
    that the row's own photometric fit explains: its least-squares fit by a
    constant (the gray term is the median offset, not the mean) and the
    row's 1σ reddening tilt, the tilt's coefficient held to
    ±`TILT_ALLOWANCE` σ, that σ no larger than the median of the active
    rows'. A star whose shape differs only by its own E(B−V) error (10 mmag
    catalogue errors in four bands leave ±1.5 % end to end) is kept; a
    larger tilt, or any other structure, still counts.

    Parameters
    ----------
    logc : ndarray, shape (n_rows, n_pix)
        ln of the calibration vectors (NaN where undefined), one row per star
        or exposure, on one wavelength grid.
    active : ndarray of bool, shape (n_rows,)
        Rows that take part (others get terms but never set the reference).
    outlier_sigma : float
        Rejection threshold (robust σ).
    max_iter : int
        Most rejection rounds.
    tilts : ndarray, shape (n_rows, n_pix), optional
        Each row's 1σ photometric tilt of ln(Cal) (`photometric_tilts`);
        zero rows forgive nothing.

    Returns
    -------
    gray : ndarray, shape (n_rows,)
        ln gray term of each row.
    shape : ndarray, shape (n_rows, n_pix)
        ``logc`` minus the gray terms.
    active : ndarray of bool
        ``active`` less the rejected rows.
    rejected : list of (int, float, float)
        (row, its rms deviation, the median deviation) of each rejected row.
    """
    active = np.array(active, dtype=bool)
    rejected = []
    for _ in range(max_iter):
        ref = nanmedian_columns(logc[active])
        gray = row_nanmedian(logc - ref)
        shape = logc - gray[:, None]
        deviation = shape - nanmedian_columns(shape[active])
        if tilts is not None:
            deviation = deviation - _allowed_tilt(deviation, tilts, TILT_ALLOWANCE, active)
        dev = np.sqrt(row_nanmean(deviation**2))
        if np.count_nonzero(active) < 3:
            break
        dev_med = np.median(dev[active])
        spread = max(MAD_TO_SIGMA * np.median(np.abs(dev[active] - dev_med)), 0.25 * dev_med, 1e-3)
        outliers = active & ((dev - dev_med) / spread > outlier_sigma)
        if not outliers.any():
            break
        rejected += [(int(i), float(dev[i]), float(dev_med)) for i in np.flatnonzero(outliers)]
        active &= ~outliers
    return gray, shape, active, rejected


def _allowed_tilt(deviation, tilts, limit, active):
    """The part of each row's deviation along its own tilt (and a constant), the tilt held to ±``limit`` σ.

    σ is the row's own tilt, but never more than the median tilt of the
    active rows: a star whose photometry leaves its E(B−V) far less certain
    than its peers' (a fit against a grid edge, a template too far off) does
    not earn a larger allowance; its tilt enters the mean shape at full
    weight.
    """
    ok = np.isfinite(deviation) & np.isfinite(tilts)
    n = np.maximum(np.count_nonzero(ok, axis=1), 1)
    t = np.where(ok, tilts, 0.0)
    t_centred = np.where(ok, t - (t.sum(axis=1) / n)[:, None], 0.0)
    d = np.where(ok, deviation, 0.0)
    norm = np.sum(t_centred**2, axis=1)
    size = np.sqrt(norm / n)
    peers = size[active & (size > 0)]
    cap = np.median(peers) if peers.size else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        coef = np.where(norm > 0, np.sum(d * t_centred, axis=1) / norm, 0.0)
        bound = np.where(size > 0, limit * np.minimum(1.0, cap / size), 0.0)
    offset = np.where(size > 0, d.sum(axis=1) / n, 0.0)  # the gray term's share of a tilt: median ≠ mean
    return np.clip(coef, -bound, bound)[:, None] * t_centred + offset[:, None]


def gray_log_variance(meta):
    """Variance of ln(gray factor) of a star: its photometric flux-scale error.

    ``phot_log_variance`` (the variance of the log model flux at the pivot
    where the photometry pins it) when known, else (σ_scale/scale)², else 0.
    """
    value = meta.get("phot_log_variance")
    if value is not None and np.isfinite(value):
        return float(value)
    err, scale = meta.get("scale_error"), meta.get("scale_factor")
    if err is None or not scale or not np.isfinite(err / scale):
        return 0.0
    return float((err / scale) ** 2)


def with_meta(vec, meta):
    """A copy of a (validated) vector with another meta; the arrays are shared."""
    out = copy.copy(vec)
    out.meta = meta
    return out


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def _raise_none_left(vectors, reasons, prior):
    lines = [f"{v.meta.get('star_name', i)} (fiber {v.meta.get('fiber_id')}): {str(r).rstrip('.')}"
             for i, (v, r) in enumerate(zip(vectors, reasons))]
    lines += [f"{r.get('star_name')} (fiber {r.get('fiber_id')}): {str(r.get('reject_reason')).rstrip('.')}"
              for r in prior]
    raise CalibrationError(
        "every standard star was rejected — " + "; ".join(lines)
        + ". Check the standards' catalogue matches and data, or relax the quality gates."
    )
