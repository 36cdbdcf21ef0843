"""The nightly transfer function: the calibrations of a night's exposures combined.

Each exposure's calibration is the instrument's throughput (shared by the
night, slowly varying) times a gray factor of its own: transparency, seeing
and aperture losses, and — for frames in counts — the exposure time. In
ln(Cal) the gray factor is an additive constant, so `combine_night` puts
every exposure's combined vector on one wavelength grid, removes each
exposure's gray term (its median offset from the median exposure), rejects
exposures whose *shape* deviates from the others (median/MAD statistics over
the exposures, which work for 3–20 exposures) and averages the shapes.

The absolute level of the nightly function is the **median** gray term of the
exposures used: a frame calibrated with it gets the night's typical
transparency, not its own. Its variance includes the exposure-to-exposure
spread of the gray terms for that reason. When a frame has at least one usable
standard, `rescale_nightly` fits that frame's own gray level (a single factor)
and keeps the nightly shape.

When every exposure's header gives its exposure time (``EXPTIME`` or
``EXPOSED``, recorded in the products' provenance) and the vectors are per
ct, they are converted to per (ct/s) first, so that exposure times do not enter
the gray terms; `kspec_fluxcal.products.calibration_for_frame` converts back
with the exposure time of the frame it is applied to. Airmass-dependent
extinction differs between exposures in shape: when every exposure's airmass
is known (``AIRMASS``/``ZD``/``ALT``, kept in the products' provenance), the
night's extinction curve k(λ) is fitted (or a site or default curve is used,
see `kspec_fluxcal.atmosphere.night_extinction`), every exposure is moved to
the night's median airmass before the shapes are averaged, and k(λ) with its
variance is stored in ``summary['extinction']``;
`kspec_fluxcal.atmosphere.transfer_to_airmass` moves the nightly function to
a frame's airmass. Without airmasses the nightly shape is that of the typical
airmass of the night.
"""

import logging

import numpy as np
from astropy import units as u

from .apply import calibration_on_grid
from .atmosphere import night_extinction
from .combine import separate_gray_terms
from .containers import FLAM, CalibrationVector, FluxCalibrationResult, jsonable
from .covariance import CalibrationCovariance, CovarianceTerm
from .error_budget import level_log_variance
from .exceptions import CalibrationError, InputDataError
from .io.units import counting_unit
from .products import calibration_provenance, load_calibration
from .stats import MAD_TO_SIGMA, MEDIAN_VARIANCE_FACTOR, combine_shapes
from .wavelength import log_uniform_grid

__all__ = ["combine_night", "rescale_nightly", "NIGHT_LEVEL", "COMMON_TERMS"]

NIGHT_LEVEL = "night_level"
"""The nightly covariance's level term: the night's transparency spread and the error of its median level (or,
after `rescale_nightly`, the error of the frame's own gray factor)."""

COMMON_TERMS = ("template_misfit", "template_misfit_broad", "zero_point_1", "zero_point_2")
"""Terms of the exposures' covariances common to every exposure of a night (one template library, one
catalogue): averaging the exposures does not reduce them. The others (the counts' noise, the stars' tilts,
the smooth form's flexibility) are independent from exposure to exposure and average down; each exposure's
level (``scale``) is removed with its gray term."""

DEFAULT_SHAPE_LENGTH = 250.0
"""Correlation length (Å) of the rest of the nightly shape's variance (the default knot spacing)."""

log = logging.getLogger(__name__)


def _load(products):
    results, names = [], []
    for i, item in enumerate(products):
        if isinstance(item, FluxCalibrationResult):
            result = item
            fallback_name = f"exposure{i + 1}"
        else:
            result = load_calibration(item)
            fallback_name = str(getattr(item, "name", item))
        prov = result.summary.get("provenance") or {}
        results.append(result)
        names.append(prov.get("red_file") or fallback_name)
    return results, names


def _common_unit(results):
    """Vectors in one unit: per (ct/s) when the exposure times allow it, else the first vector's unit."""
    vectors = [r.combined_vector for r in results]
    exptimes = [(r.summary.get("provenance") or {}).get("exptime") for r in results]
    base, _ = counting_unit(FLAM / vectors[0].unit, name="the first calibration's counts unit")
    rate_unit = FLAM / (base / u.s)
    per_rate = all(v.unit.is_equivalent(rate_unit) or (v.unit.is_equivalent(FLAM / base) and t)
                   for v, t in zip(vectors, exptimes))
    target = rate_unit if per_rate else vectors[0].unit
    out = []
    for i, (vec, t) in enumerate(zip(vectors, exptimes)):
        scale = 1.0
        if per_rate and not vec.unit.is_equivalent(rate_unit):
            scale = float(t) * u.s
        elif not vec.unit.is_equivalent(target):
            raise InputDataError(
                f"exposure {i + 1}'s calibration is in '{vec.unit}', the first one's in '{target}', and their "
                "exposure times are unknown; combine calibrations of frames in the same counts unit."
            )
        out.append(CalibrationVector(vec.wavelength, (vec.cal_factor * scale).to(target),
                                     (vec.cal_variance * scale**2).to(target**2), vec.mask, meta=dict(vec.meta)))
    return out, target, per_rate


def _night_grid(vectors):
    """The shared grid of the vectors, or a log-uniform grid over their union with the median step."""
    first = vectors[0].wavelength.value
    if all(v.wavelength.shape == first.shape and np.allclose(v.wavelength.value, first, rtol=1e-10, atol=0)
           for v in vectors):
        return first
    lo, hi, steps = [], [], []
    for v in vectors:
        good = v.wavelength.value[~v.mask]
        if good.size < 2:
            continue
        lo.append(good[0])
        hi.append(good[-1])
        steps.append(np.median(np.diff(np.log(v.wavelength.value))))
    if not lo:
        raise CalibrationError("no exposure has a defined calibration; nothing to combine.")
    return log_uniform_grid(min(lo), max(hi), float(np.median(steps)), include_stop=True)


def combine_night(products, wavelength=None, outlier_sigma=5.0, smooth_window=51, extinction="auto"):
    """Combine the calibrations of a night's exposures into a nightly transfer function.

    Parameters
    ----------
    products : list of `~kspec_fluxcal.containers.FluxCalibrationResult` or str or Path
        The exposures' calibrations, or files `kspec_fluxcal.products.load_calibration`
        reads (products or calibrated RED files).
    wavelength : `~astropy.units.Quantity` or array_like, optional
        Grid of the nightly function (Å, air). Default: the exposures' grid
        when they share one, else a grid uniform in ln λ over the union of
        their ranges with their median step.
    outlier_sigma : float
        An exposure whose rms shape deviation from the median shape exceeds
        the median deviation by more than this many robust σ (MAD over the
        exposures, floored at a quarter of the median deviation and at 0.1 %)
        is rejected. Needs at least 3 exposures; with fewer none is rejected.
    smooth_window : int
        Pixels of the running mean applied to the empirical (scatter-based)
        variance before it is compared with the formal one.
    extinction : 'auto', 'fit', 'default', `~kspec_fluxcal.atmosphere.ExtinctionCurve`, str or Path
        The night's extinction curve (`kspec_fluxcal.atmosphere.night_extinction`):
        fitted when the airmasses allow (``'auto'``), a site curve (a file of
        λ in Å and k in mag per airmass), or the documented default.

    Returns
    -------
    `~kspec_fluxcal.containers.FluxCalibrationResult`
        ``combined_vector``: exp(mean shape + median gray) in erg s⁻¹ cm⁻² Å⁻¹
        per counting unit per second (ct/s, electron/s …) when every exposure time is known, else per the exposures'
        counts unit. Its variance is the larger of the formal variance of the
        weighted mean shape and the empirical scatter of the shapes (3 or
        more exposures), plus the spread of the gray terms (the level of a
        frame calibrated with the nightly function is uncertain by the night's
        transparency variations). ``per_star_vectors``: one per exposure on
        the nightly grid (meta ``exposure``, ``used``, ``reject_reason``,
        ``gray_factor``), with each exposure's fractional shape residual.
        ``summary``: ``n_exposures``, ``n_exposures_used``,
        ``n_exposures_rejected``, ``per_exposure`` (also as
        ``per_star_metrics``), ``n_stars_used`` (over the exposures used),
        ``rms_scatter`` (of the exposures' shapes), ``gray_scatter`` (robust σ
        of ln gray), ``level_error`` (σ of the median level), ``level_variance``
        (the ln² term added to every pixel), ``exposure_times``,
        ``extinction`` (k(λ), its variance, source and reference airmass, or
        None without airmasses), and the provenance (``kind = 'night'``,
        every exposure's provenance).

    Raises
    ------
    InputDataError
        No products, or mixed counts units that cannot be converted.
    CalibrationError
        No exposure has a defined calibration on the grid.
    """
    products = list(products)
    if not products:
        raise InputDataError("no calibration products given; combine_night needs at least one exposure.")
    results, names = _load(products)
    vectors, unit, per_rate = _common_unit(results)
    grid = _night_grid(vectors) if wavelength is None else u.Quantity(wavelength, u.AA).to_value(u.AA)
    n_exp, n_pix = len(vectors), grid.size
    logc = np.full((n_exp, n_pix), np.nan)
    lvar = np.full((n_exp, n_pix), np.nan)
    for i, vec in enumerate(vectors):
        factor, var, bad = calibration_on_grid(vec, grid)
        bad |= ~(factor > 0) | ~np.isfinite(var)
        with np.errstate(divide="ignore", invalid="ignore"):
            logc[i] = np.where(bad, np.nan, np.log(factor))
            lvar[i] = np.where(bad, np.nan, var / factor**2)
    curve, logc = night_extinction(grid, logc, lvar, [(r.summary.get("provenance") or {}).get("airmass")
                                                      for r in results], extinction)
    reasons = [None if np.isfinite(row).any() else "calibration undefined on the nightly grid" for row in logc]
    active = np.array([r is None for r in reasons])
    if not active.any():
        raise CalibrationError("no exposure has a defined calibration on the nightly grid; nothing to combine.")
    gray, shape, active, outliers = separate_gray_terms(logc, active, outlier_sigma)
    for i, dev, dev_med in outliers:
        reasons[i] = (f"shape deviates from the other exposures: {100 * dev:.2f}% rms against a median "
                      f"of {100 * dev_med:.2f}% (> {outlier_sigma:g} robust sigma)")
        log.warning("exposure %d rejected: %s", i + 1, reasons[i])
    night = _assemble(results, names, vectors, grid, unit, per_rate, logc, lvar, gray, shape, active, reasons,
                      outlier_sigma, smooth_window)
    night.summary["extinction"] = curve.to_dict() if curve is not None else None
    return night


def _assemble(results, names, vectors, grid, unit, per_rate, logc, lvar, gray, shape, active, reasons,
              outlier_sigma, smooth_window):
    n_used = int(np.count_nonzero(active))
    use = active[:, None] & np.isfinite(shape)
    mean, var_shape, n_at = combine_shapes(shape, lvar, use, smooth_window=max(int(smooth_window), 1))
    defined = n_at > 0

    used_gray = gray[active]
    level = float(np.median(used_gray))
    if n_used >= 3:
        gray_scatter = float(MAD_TO_SIGMA * np.median(np.abs(used_gray - level)))
    elif n_used == 2:
        gray_scatter = float(np.std(used_gray, ddof=1))
    else:
        gray_scatter = 0.0
    level_error2 = (MEDIAN_VARIANCE_FACTOR if n_used > 2 else 1.0) * gray_scatter**2 / n_used
    level_variance = gray_scatter**2 + level_error2

    factor = np.exp(mean + level)
    mask = ~defined | ~np.isfinite(factor)
    variance = factor**2 * (var_shape + level_variance)
    factor = np.where(mask, np.nan, factor)
    variance = np.where(mask, np.nan, variance)

    per_exposure, per_vectors, residuals = [], [], []
    for i, (result, name) in enumerate(zip(results, names)):
        prov = result.summary.get("provenance") or {}
        entry = {
            "star_name": name,
            "exposure": name,
            "fiber_id": None,
            "used": bool(active[i]),
            "reject_reason": reasons[i],
            "gray_factor": float(np.exp(gray[i] - level)) if np.isfinite(gray[i]) else None,
            "n_stars_used": int(result.summary.get("n_stars_used", 0)),
            "rms_scatter": result.summary.get("rms_scatter"),
            "date_obs": prov.get("date_obs"),
        }
        per_exposure.append(entry)
        ok = np.isfinite(logc[i])
        with np.errstate(invalid="ignore"):
            per_vectors.append(CalibrationVector(
                grid * u.AA, np.where(ok, np.exp(logc[i]), np.nan) * unit,
                np.where(ok, lvar[i] * np.exp(2 * logc[i]), np.nan) * unit**2, ~ok, meta=dict(entry)))
            residuals.append((np.exp(shape[i] - mean) - 1.0) * u.one)
    used_res = np.array([r.value for r, a in zip(residuals, active) if a])
    rms = float(np.sqrt(np.nanmean(used_res**2))) if n_used > 1 else np.nan
    provenance = calibration_provenance(kind="night", options={"outlier_sigma": outlier_sigma,
                                                               "smooth_window": smooth_window})
    exposures = [jsonable(r.summary.get("provenance") or {}) for r in results]
    fingerprints = sorted({str(p.get("template_fingerprint")) for p in exposures if p.get("template_fingerprint")})
    libraries = sorted({str(p.get("template_library")) for p in exposures if p.get("template_library")})
    dates = sorted(str(p["date_obs"]) for p in exposures if p.get("date_obs"))
    provenance.update({
        "n_exposures": len(results),
        "exposures": exposures,
        "template_fingerprint": ",".join(fingerprints) or None,
        "template_library": ",".join(libraries) or None,
        "date_obs": dates[0] if dates else None,
    })
    good_wave = grid[~mask]
    summary = {
        "kind": "night",
        "n_exposures": len(results),
        "n_exposures_used": n_used,
        "n_exposures_rejected": len(results) - n_used,
        "per_exposure": per_exposure,
        "per_star_metrics": per_exposure,
        "n_stars_used": int(sum(e["n_stars_used"] for e in per_exposure if e["used"])),
        "n_stars_rejected": 0,
        "rms_scatter": rms,
        "gray_scatter": gray_scatter,
        "level_error": float(np.sqrt(level_error2)),
        "level_variance": level_variance,
        "exposure_times": "normalised (per ct/s)" if per_rate else "not normalised (unknown or frames in ct/s)",
        "wavelength_range": [float(good_wave.min()), float(good_wave.max())] if good_wave.size else None,
        "representation": "night",
        "method": "weighted_mean",
        "provenance": provenance,
    }
    combined = CalibrationVector(grid * u.AA, factor * unit, variance * unit**2, mask,
                                 meta={"representation": "night", "n_exposures_used": n_used})
    covariance = _night_covariance([r for r, a in zip(results, active) if a], grid, np.where(mask, 0.0, var_shape),
                                   level_variance, ~mask)
    log.info("nightly calibration from %d of %d exposures; shape rms %.2f%%, gray scatter %.2f%%",
             n_used, len(results), 100 * rms if rms == rms else 0.0, 100 * gray_scatter)
    return FluxCalibrationResult(combined, per_vectors, residuals, summary, covariance=covariance)


def _night_covariance(used, grid, shape_variance, level_variance, defined):
    """The covariance of ln(nightly calibration): its level, the exposures' correlated terms averaged, the rest.

    ``NIGHT_LEVEL`` (a level term) carries ``level_variance``. Each term of
    the used exposures' covariances is averaged over them: a `COMMON_TERMS`
    term keeps its mean σ, any other its rms σ divided by √n, each at its own
    correlation length; ``scale`` is left out (the gray terms remove each
    exposure's level). Where they add up to more than the shape's variance
    they are scaled down to it; what is left of the shape's variance (all of
    it when no exposure has a covariance) is the ``shape`` term at the
    exposures' knot spacing. The diagonal is exactly ``shape_variance +
    level_variance``.
    """
    if not defined.any():
        return None
    covariances = [r.covariance for r in used if r.covariance is not None]
    names, lengths = [], {}
    for cov in covariances:
        for term in cov.terms:
            if term.name != "scale" and term.name not in lengths:
                names.append(term.name)
                lengths[term.name] = term.length
    n = max(len(covariances), 1)
    sigmas = {}
    for name in names:
        per = np.array([np.abs(cov.term_sigma(name, grid)) for cov in covariances])
        finite = np.isfinite(per)
        count = np.maximum(finite.sum(axis=0), 1)
        per = np.where(finite, per, 0.0)
        sigma = per.sum(axis=0) / count if name in COMMON_TERMS else np.sqrt((per**2).sum(axis=0) / count / n)
        sigmas[name] = np.where(defined & finite.any(axis=0), sigma, 0.0)
    total = sum((s**2 for s in sigmas.values()), np.zeros(grid.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        shrink = np.where(total > shape_variance, np.sqrt(shape_variance / total), 1.0)
    terms = [CovarianceTerm(name, sigma * shrink, lengths[name]) for name, sigma in sigmas.items()
             if np.any(sigma > 0)]
    rest = np.maximum(shape_variance - total * shrink**2, 0.0)
    spacings = [float(cov.meta["knot_spacing"]) for cov in covariances if cov.meta.get("knot_spacing")]
    terms.append(CovarianceTerm("shape", np.sqrt(rest), float(np.median(spacings)) if spacings
                                else DEFAULT_SHAPE_LENGTH))
    terms.append(CovarianceTerm(NIGHT_LEVEL, np.where(defined, np.sqrt(level_variance), 0.0), None))
    wave_ok = grid[defined]
    return CalibrationCovariance(grid, np.zeros(grid.size), terms, ~defined, (float(wave_ok[0]), float(wave_ok[-1])),
                                 {"representation": "night", "knot_spacing": terms[-2].length})


def rescale_nightly(nightly, frame_result):
    """Rescale a nightly calibration to the gray level of a frame's own standards.

    The nightly shape is kept; one factor (the median ratio of the frame's own
    combined vector to the nightly one over their common unmasked pixels) sets
    the level. Use it when a frame has too few standards for a calibration of
    its own but at least one usable.

    Parameters
    ----------
    nightly : `~kspec_fluxcal.containers.FluxCalibrationResult`
        From `combine_night` (any calibration works; for one that is not
        nightly no level variance is removed).
    frame_result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        The frame's own calibration (in a unit convertible to the nightly one).

    Returns
    -------
    `~kspec_fluxcal.containers.FluxCalibrationResult`
        The nightly result with the rescaled combined vector; the nightly
        level variance (``summary['level_variance']``) is replaced by the
        variance of the fitted gray factor
        (`kspec_fluxcal.error_budget.level_log_variance`: the frame's
        photometric scale and zero-point terms, plus its wavelength-dependent
        terms averaged over the pixels the factor is fitted on; the median
        relative variance of the frame's vector when it has no error
        budget), and ``summary['gray_rescale']`` holds ``factor``,
        ``log_variance`` and ``n_standards``.

    Raises
    ------
    InputDataError
        Units that do not convert, or no common unmasked pixel.
    """
    night = nightly.combined_vector
    own = frame_result.combined_vector
    try:
        own_factor = own.cal_factor.to_value(night.unit)
        own_var = own.cal_variance.to_value(night.unit**2)
    except u.UnitConversionError as exc:
        raise InputDataError(
            f"the frame's calibration is in '{own.unit}', the nightly one in '{night.unit}'; they do not convert."
        ) from exc
    factor, _, bad = calibration_on_grid(night, own.wavelength)
    ok = ~bad & ~own.mask & (own_factor > 0) & (factor > 0) & np.isfinite(own_var)
    if not ok.any():
        raise InputDataError("the frame's calibration and the nightly one share no unmasked wavelength.")
    ratio = np.log(own_factor[ok] / factor[ok])
    gray = float(np.median(ratio))
    wave = own.wavelength.to_value(u.AA)[ok]
    gray_var = level_log_variance(frame_result, wave[-1] - wave[0])
    if gray_var is None:  # a calibration without an error budget: its whole variance, none averaged down
        gray_var = float(np.median(own_var[ok] / own_factor[ok] ** 2))
    level_var = float(nightly.summary.get("level_variance") or 0.0)
    scale = np.exp(gray)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_var = night.cal_variance.value / night.cal_factor.value**2
        new_log_var = np.maximum(log_var - level_var, 0.0) + gray_var
    new_factor = night.cal_factor * scale
    new_var = np.where(night.mask, np.nan, new_log_var * new_factor.value**2) * night.unit**2
    vector = CalibrationVector(night.wavelength, new_factor, new_var, night.mask, meta=dict(night.meta))
    covariance = None  # the night's level term (its variance is level_var) becomes the gray factor's
    if nightly.covariance is not None:
        covariance = nightly.covariance.with_term(NIGHT_LEVEL, np.sqrt(gray_var), None)
    summary = dict(nightly.summary)
    summary["level_variance"] = gray_var
    summary["gray_rescale"] = {"factor": float(scale), "log_variance": gray_var,
                               "n_standards": int(frame_result.summary.get("n_stars_used", 0))}
    log.info("nightly calibration rescaled by %.4f to the frame's own standards", scale)
    return FluxCalibrationResult(vector, list(nightly.per_star_vectors), list(nightly.per_star_residuals), summary,
                                 covariance=covariance)
