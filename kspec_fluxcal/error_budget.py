"""The error budget of a combined calibration: each term, added and accounted for.

``CAL_VARIANCE`` of the combined vector is the sum of six variances of
ln(Cal), each a function of wavelength:

``noise``
    The counts' noise and the reddening tilt of each star's photometric fit,
    as the combination averages them over stars (with the star-to-star
    scatter where it is larger) — what `~kspec_fluxcal.combine` computes.
``scale``
    The absolute level: the photometric flux-scale error of the standards
    that set it (`~kspec_fluxcal.combine.level_stars`), averaged over them.
``zero_point``
    The catalogue's zero-point error per band (`CATALOG_ZERO_POINT_SIGMA`),
    common to every standard of the field: propagated through each star's
    photometric fit (scale and E(B−V)) it gives a level and a tilt that do
    not average down over stars.
``smoothing``
    The choice of the smooth form's flexibility
    (`kspec_fluxcal.knot_selection.KnotChoice.smoothing_log_variance`); zero
    for the per-pixel form and for a fixed or default spacing.
``bridging``
    Throughput structure the smooth form does not follow: left between its
    knots and bridged across the pixels its fit leaves out (telluric windows,
    strong lines, the frame's ends), measured from the used standards' own
    residuals (`kspec_fluxcal.bridging.unfollowed_structure`); zero for the
    per-pixel form.
``template_misfit``
    The misfit of the template library common to all standards (stars of one
    kind share it, so star-to-star scatter cannot reveal it and it does not
    average down). It is the caller's ``template_misfit(λ)`` when given; for
    a template correction, its uncertainty for a new star — each standard's
    own part averaged down over the standards, the part shared by standards
    of similar [M/H] not, and for a standard beyond the training stars' span
    an extrapolation term that grows with the distance
    (`~kspec_fluxcal.templates.TemplateCorrection.misfit_for_standards`); a
    correction file without that term gives the library floor to standards
    outside its domain; else the per-library floor of `library_misfit_floor`.

`apply_error_budget` adds the last three to the combined vector and records
every term (median fractional σ and share of the total variance) in
``summary['error_budget']`` (written to ``FCALSUM``); the terms' correlations
over wavelength ride along as the result's
`~kspec_fluxcal.covariance.CalibrationCovariance` (``FCALCOV``).
"""

import logging
from importlib import resources
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import Table

from .containers import CalibrationVector, FluxCalibrationResult
from .covariance import CalibrationCovariance
from .exceptions import InputDataError

__all__ = [
    "BUDGET_TERMS", "CATALOG_ZERO_POINT_SIGMA", "LIBRARY_MISFIT_FILES", "library_misfit_floor", "misfit_function",
    "apply_error_budget",
    "complete_error_budget",
    "level_log_variance",
    "photometric_profiles",
]

log = logging.getLogger(__name__)

BUDGET_TERMS = ("noise", "scale", "zero_point", "smoothing", "bridging", "template_misfit")
"""Names of the terms of the budget, in the order they are reported."""

CATALOG_ZERO_POINT_SIGMA = 0.005
"""Default rms (mag) of a catalogue band's zero point over a field: the ATLAS Refcat2
systematics (≤ 5 mmag rms away from the Galactic plane, Tonry et al. 2018, ApJ 867, 105);
``EngineOptions.zero_point_sigma`` / ``--zero-point-sigma`` override it."""

LIBRARY_MISFIT_FILES = {"ck04models": "template_misfit_ck04.ecsv", "bosz2024": "template_misfit_ck04.ecsv"}
"""Per-library floor of the template-misfit term: a table of the fractional 1σ misfit
common to F/G standards against wavelength (Å, air), derived from the CALSPEC F/G
stars with the ck04 grid by ``benchmarks/derive_misfit_floor.py``. BOSZ 2024 uses the
ck04 floor until a BOSZ comparison exists (conservative: BOSZ models are newer)."""


def _is_synthetic(grid_meta):
    """True for a SYNTHETIC library written by `kspec_fluxcal.simulate` (its README says so)."""
    source = grid_meta.get("source")
    if not source:
        return False
    readme = Path(source) / "README.txt"
    try:
        return readme.is_file() and readme.read_text(encoding="utf-8", errors="replace").startswith("SYNTHETIC")
    except OSError:
        return False


def _table_function(table):
    wave = np.asarray(u.Quantity(table["WAVELENGTH"], u.AA).value, dtype=float)
    frac = np.asarray(table["FRACTION"], dtype=float)

    def misfit(wavelength):
        return np.interp(np.asarray(wavelength, dtype=float), wave, frac)

    return misfit


def library_misfit_floor(grid_meta):
    """The template-misfit floor of a prepared grid's library: (function or None, label).

    Parameters
    ----------
    grid_meta : dict
        `~kspec_fluxcal.templates.PreparedGrid.meta` (``library_kind``, ``source``).

    Returns
    -------
    function or None
        λ (Å, ndarray) → fractional 1σ misfit; None (no term) for a SYNTHETIC
        library, whose models are the truth of the simulated stars, and for
        an unknown kind.
    str
        Where the floor comes from (for ``FCALSUM`` and the header).
    """
    kind = grid_meta.get("library_kind")
    if _is_synthetic(grid_meta):
        return None, "none (SYNTHETIC library)"
    name = LIBRARY_MISFIT_FILES.get(kind)
    if name is None:
        return None, f"none (no floor for library kind {kind!r})"
    with resources.as_file(resources.files("kspec_fluxcal") / "data" / name) as path:
        table = Table.read(path, format="ascii.ecsv")
    return _table_function(table), f"floor {name}"


def misfit_function(template_misfit, grid_meta, standards=(), weights=None):
    """Resolve `~kspec_fluxcal.engine.EngineOptions.template_misfit` into (function or None, label).

    ``None`` gives the library floor (`library_misfit_floor`); a number is a
    constant fraction; a callable λ (Å) → fraction is used as it is; a
    template correction (`~kspec_fluxcal.templates.correction.TemplateCorrection`)
    gives its uncertainty for the standards inside its domain and the library
    floor for the others (``TemplateCorrection.misfit_for_standards``; the
    label is the correction's, followed by ``+floor`` when some standards
    are outside its domain).

    Parameters
    ----------
    template_misfit : None, float, callable or TemplateCorrection
        The configured term.
    grid_meta : dict
        The prepared grid's meta (for the per-library floor).
    standards : sequence of (float, float)
        (Teff in K, [M/H] in dex) of the used standards; only a template
        correction looks at them.
    weights : tuple of (ndarray, ndarray), optional
        (λ in Å, the standards' normalised weights in the combined shape,
        shape (n_standards, n_λ)) when the combination did not weigh them
        equally (``TemplateCorrection.misfit_for_standards``).
    """
    if template_misfit is None:
        return library_misfit_floor(grid_meta)
    if hasattr(template_misfit, "misfit_for_standards"):
        floor, floor_label = library_misfit_floor(grid_meta)
        function, n_in = template_misfit.misfit_for_standards(list(standards), floor, weights=weights)
        if n_in == len(standards):
            return function, template_misfit.label
        extrapolated = getattr(template_misfit, "extrapolation", None) is not None
        rule = "its extrapolation term" if extrapolated else floor_label
        log.info("template-misfit term: %d of %d standards outside the domain of %s, %s for them",
                 len(standards) - n_in, len(standards), template_misfit.label, rule)
        return function, template_misfit.label + ("+extrap" if extrapolated else "+floor")
    if callable(template_misfit):
        owner = getattr(template_misfit, "__self__", None)
        return template_misfit, getattr(owner, "label", "caller's template_misfit")
    try:
        value = float(template_misfit)
    except (TypeError, ValueError) as exc:
        raise InputDataError(
            f"template_misfit must be None, a fraction or a function of wavelength (Å); got {template_misfit!r}."
        ) from exc
    if not np.isfinite(value) or value < 0:
        raise InputDataError(f"template_misfit must be a fraction ≥ 0; got {value}.")
    return (lambda wavelength: np.full(np.shape(wavelength), value)), f"constant {value:g}"


def _scale_log_variance(result):
    """Variance of ln(level): the photometric scale errors of the stars that set it, averaged (mean of ln gray)."""
    from .combine import gray_log_variance

    used = [v for v in result.per_star_vectors if v.meta.get("used") and v.meta.get("sets_level", True)]
    if not used:
        return 0.0
    gray = np.array([gray_log_variance(v.meta) for v in used])
    return float(np.mean(gray)) / len(used)


def _zero_point_log_variance(result, wave, extinction, r_v, sigma):
    """Variance of ln(Cal) from band zero points common to all standards (median over the used stars).

    For a star whose fit has the design J (used bands × (offset, E(B−V)))
    and weights W, a common offset δm of the catalogue magnitudes moves the
    fit by A δm, A = (JᵀWJ)⁻¹JᵀW, and ln F(λ) by −0.4 ln 10 (1, k(λ)) A δm.
    """
    from .extinction import extinction_per_ebv

    k = extinction_per_ebv(wave, extinction, r_v)
    terms = []
    for *_, sens in _photometric_fits(result):
        cov = sigma**2 * sens @ sens.T
        terms.append((0.4 * np.log(10)) ** 2 * (cov[0, 0] + 2 * k * cov[0, 1] + k**2 * cov[1, 1]))
    return np.median(terms, axis=0) if terms else np.zeros_like(wave)


def _photometric_fits(result):
    """``(vector, (JᵀWJ)⁻¹, (JᵀWJ)⁻¹JᵀW)`` of every used star whose vector carries its photometric design."""
    for vec in result.per_star_vectors:
        design = vec.meta.get("phot_design") or {}
        if not vec.meta.get("used") or not design.get("jacobian"):
            continue
        jac = np.asarray(design["jacobian"], dtype=float)
        w = np.asarray(design["weights"], dtype=float)
        fit = np.linalg.pinv(jac.T @ (w[:, None] * jac))
        yield vec, fit, fit @ (jac.T * w)


def photometric_profiles(result, wave, extinction, r_v, sigma):
    """Signed profiles of the zero-point and reddening-tilt terms in the span of 1 and k(λ).

    Parameters
    ----------
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        The combination (its used star vectors carry ``phot_design``).
    wave : ndarray
        Å, where the profiles are wanted.
    extinction, r_v : str, float
        The reddening law fitted.
    sigma : float
        rms (mag) of the catalogue zero points.

    Both come from the stars' photometric fits, whose offset μ and colour
    excess E move ln F(λ) by −0.4 ln 10 (δμ + k(λ) δE): two functions of λ
    carry them over the whole vector. The zero points are common to all
    stars (the median of their covariances); each star's own fit error,
    less its gray part (removed with its gray factor), is a tilt about its
    pivot k* that averages down over the N used stars.

    Returns
    -------
    dict
        ``{'zero_point': (n, 2), 'noise': (n, 2)}`` arrays (the entries
        missing when no used star has a photometric design).
    """
    from .extinction import extinction_per_ebv

    k = extinction_per_ebv(wave, extinction, r_v)
    basis = np.column_stack([np.ones_like(k), k]) * (0.4 * np.log(10))
    zero_points, tilts = [], []
    for vec, fit, sens in _photometric_fits(result):
        zero_points.append(sigma**2 * sens @ sens.T)
        if fit[1, 1] > 0:
            pinned = fit[0, 0] - fit[0, 1] ** 2 / fit[1, 1]
            stated = vec.meta.get("phot_log_variance")
            if stated is not None and np.isfinite(stated) and pinned > 0:  # the fit's own scaling of its errors
                fit = fit * float(stated) / ((0.4 * np.log(10)) ** 2 * pinned)
            # δμ = (V_μE / V_EE) δE + a part independent of δE: the tilt is 0.921 √V_EE (k(λ) − k*), k* = −V_μE/V_EE
            direction = np.array([fit[0, 1] / fit[1, 1], 1.0]) * np.sqrt(fit[1, 1])
            tilts.append(np.outer(direction, direction))
    out = {}
    if zero_points:
        out["zero_point"] = basis @ _root(np.median(zero_points, axis=0))
    if tilts:
        out["noise"] = basis @ _root(np.sum(tilts, axis=0) / len(tilts) ** 2)
    return out


def _root(matrix):
    """L with L Lᵀ = ``matrix`` (symmetric, positive semi-definite)."""
    values, vectors = np.linalg.eigh(matrix)
    return vectors * np.sqrt(np.maximum(values, 0.0))


def apply_error_budget(result, knot_choice=None, template_misfit=None, misfit_label="", representation=None,
                       zero_point_sigma=CATALOG_ZERO_POINT_SIGMA, extinction="F99", r_v=3.1, bridging=None):
    """Add the smoothing, bridging and template-misfit terms to a combined calibration and record every term.

    Parameters
    ----------
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        The combination (its variance holds the noise and scale terms).
    knot_choice : `~kspec_fluxcal.knot_selection.KnotChoice`, optional
        The choice of the smooth form, with its smoothing term.
    template_misfit : callable, optional
        λ (Å, ndarray) → fractional 1σ misfit common to all standards.
    misfit_label : str
        Where ``template_misfit`` comes from (recorded).
    representation : {'smooth', 'pixel'}, optional
        Form of the combined vector (default: ``result.summary['representation']``);
        the smoothing term applies to the smooth form only.
    zero_point_sigma : float
        rms (mag) of the catalogue zero point of each band, common to all standards.
    extinction, r_v : str, float
        The reddening law fitted (for the tilt of the zero-point term).
    bridging : ndarray, optional
        Variance of ln(Cal) on the combined vector's grid from throughput
        structure the smooth form does not follow
        (`kspec_fluxcal.bridging.unfollowed_structure`); the smooth form only.

    Returns
    -------
    `~kspec_fluxcal.containers.FluxCalibrationResult`
        A new result: the combined vector's variance is the whole budget and
        ``summary['error_budget']`` lists, per term, the median fractional σ
        and the share of the total variance over the defined pixels;
        ``covariance`` holds the budget with its correlations
        (`~kspec_fluxcal.covariance.CalibrationCovariance.from_budget`).
    """
    combined = result.combined_vector
    representation = representation or result.summary.get("representation", "smooth")
    wave = combined.wavelength.to_value(u.AA)
    unit = combined.unit
    factor = combined.cal_factor.to_value(unit)
    variance = combined.cal_variance.to_value(unit**2)
    ok = ~combined.mask & np.isfinite(factor) & np.isfinite(variance) & (factor > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        statistical = np.where(ok, variance / factor**2, 0.0)
    scale = np.minimum(_scale_log_variance(result), statistical)
    terms = {"noise": statistical - scale, "scale": scale,
             "zero_point": np.where(ok, _zero_point_log_variance(result, wave, extinction, r_v, zero_point_sigma),
                                    0.0)}
    smoothing = np.zeros(wave.size)
    if knot_choice is not None and representation == "smooth":
        smoothing = np.maximum(knot_choice.smoothing_term(wave), 0.0)
    terms["smoothing"] = np.where(ok, smoothing, 0.0)
    structure = np.zeros(wave.size)
    if bridging is not None and representation == "smooth":
        structure = np.maximum(np.nan_to_num(np.asarray(bridging, dtype=float)), 0.0)
    terms["bridging"] = np.where(ok, structure, 0.0)
    misfit = np.zeros(wave.size)
    if template_misfit is not None:
        misfit = np.asarray(template_misfit(wave), dtype=float)
        if misfit.shape != wave.shape or np.any(~np.isfinite(misfit[ok])) or np.any(misfit[ok] < 0):
            raise InputDataError(
                "template_misfit(wavelength) must return one finite fraction ≥ 0 per wavelength; check the function."
            )
    terms["template_misfit"] = np.where(ok, misfit**2, 0.0)
    total = sum(terms.values())
    new_variance = np.where(ok, factor**2 * total, np.nan)
    total_sum = float(np.sum(total[ok])) if ok.any() else 0.0
    budget = {"terms": {}, "misfit_source": misfit_label or "none", "representation": representation}
    for name in BUDGET_TERMS:
        term = terms[name][ok]
        budget["terms"][name] = {
            "median_fraction": float(np.median(np.sqrt(term))) if term.size else None,
            "share": float(np.sum(term) / total_sum) if total_sum > 0 else None,
        }
    budget["median_total_fraction"] = float(np.median(np.sqrt(total[ok]))) if ok.any() else None
    summary = {**result.summary, "error_budget": budget}
    if knot_choice is not None:
        summary["knot_selection"] = knot_choice.summary()
    vector = CalibrationVector(wavelength=combined.wavelength, cal_factor=combined.cal_factor,
                               cal_variance=new_variance * unit**2, mask=combined.mask,
                               meta={**combined.meta, "error_budget": list(BUDGET_TERMS)})
    log.info("error budget (median fractional sigma): %s", ", ".join(
        f"{k} {100 * v['median_fraction']:.2f}%" for k, v in budget["terms"].items()
        if v["median_fraction"] is not None))
    covariance = CalibrationCovariance.from_budget(
        wave, terms, ok, representation, knot_spacing=None if knot_choice is None else knot_choice.spacing,
        profiles=photometric_profiles(result, wave, extinction, r_v, zero_point_sigma),
    ) if ok.any() else None
    return FluxCalibrationResult(vector, result.per_star_vectors, result.per_star_residuals, summary,
                                 covariance=covariance)


LEVEL_TERMS = ("scale", "zero_point")
"""Terms of the budget common to every pixel of a calibration: they set its level."""


def level_log_variance(result, wavelength_span):
    """Variance of ln(level) of a calibration: one gray factor fitted over ``wavelength_span`` Å of it.

    The level of an exposure's calibration is pinned by the photometric scale
    of its standards and the catalogue zero points (the budget's ``scale``
    and ``zero_point`` terms, medians over λ), which every pixel shares. The
    other terms (``noise``, ``smoothing``, ``template_misfit``) vary with
    wavelength on the scale of the smooth form's knot spacing (one pixel for
    the per-pixel form), so a level fitted over the span averages them over
    span / spacing independent stretches.

    Parameters
    ----------
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        An exposure's calibration with ``summary['error_budget']``.
    wavelength_span : float
        Å of the calibration the level is fitted over.

    Returns
    -------
    float or None
        The variance of ln(level) (dimensionless); None when the result has
        no error budget.
    """
    budget = (result.summary or {}).get("error_budget") or {}
    terms = budget.get("terms")
    if not terms:
        return None

    def variance(name):
        fraction = (terms.get(name) or {}).get("median_fraction")
        return float(fraction) ** 2 if fraction is not None and np.isfinite(fraction) else 0.0

    if budget.get("representation", result.summary.get("representation")) == "pixel":
        vec = result.combined_vector
        step = float(np.median(np.diff(vec.wavelength.to_value(u.AA))))
    else:
        step = float((result.summary.get("knot_selection") or {}).get("spacing") or 250.0)
    n_independent = max(float(wavelength_span) / step, 1.0)
    common = sum(variance(name) for name in LEVEL_TERMS)
    varying = sum(variance(name) for name in BUDGET_TERMS if name not in LEVEL_TERMS)
    return common + varying / n_independent


def complete_error_budget(result, grid_meta, template_misfit=None, zero_point_sigma=CATALOG_ZERO_POINT_SIGMA):
    """`apply_error_budget` for the engine: the knot choice read from the star vectors, the misfit resolved.

    The star vectors' meta carry the choice (``knot_selection``, written by
    `~kspec_fluxcal.calibration.smooth_calibration_vectors`); it moves to the
    summary, and each star keeps only its ``knot_spacing``.

    Parameters
    ----------
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        The combination of the exposure's standards.
    grid_meta : dict
        The prepared grid's meta (for the per-library floor).
    template_misfit : None, float, callable or TemplateCorrection
        See `misfit_function` (a correction is given the used standards' fitted Teff and [M/H]).
    zero_point_sigma : float
        rms (mag) of the catalogue zero points, common to all standards.
    """
    from .bridging import RESIDUAL_KEY, unfollowed_structure
    from .combine import WEIGHT_KEY, with_meta
    from .knot_selection import KnotChoice

    wave = result.combined_vector.wavelength.to_value(u.AA)

    choice = None
    vectors, residuals, weights = [], [], []
    for vec in result.per_star_vectors:
        meta = dict(vec.meta)
        selection = meta.pop("knot_selection", None)
        residual = meta.pop(RESIDUAL_KEY, None)
        weight = meta.pop(WEIGHT_KEY, None)
        if weight is not None and meta.get("used", True) and meta.get("teff") is not None \
                and meta.get("feh") is not None:
            weights.append(weight)
        if choice is None and selection:
            choice = KnotChoice.from_summary(selection)
        if residual is not None and meta.get("used", True) and vec.wavelength.shape == wave.shape:
            residuals.append(residual)
        vectors.append(with_meta(vec, meta))

    result = FluxCalibrationResult(result.combined_vector, vectors, result.per_star_residuals, result.summary)
    standards = [(float(v.meta["teff"]), float(v.meta["feh"])) for v in vectors
                 if v.meta.get("used", True) and v.meta.get("teff") is not None and v.meta.get("feh") is not None]
    weighted = (wave, np.array(weights)) if weights and len(weights) == len(standards) else None
    function, label = misfit_function(template_misfit, grid_meta, standards, weights=weighted)
    bridging = None
    if choice is not None and residuals:
        shared = None if function is None else np.asarray(function(wave), dtype=float)
        bridging = unfollowed_structure(wave, residuals, choice.spacing, misfit=shared)
    return apply_error_budget(result, choice, function, label, zero_point_sigma=zero_point_sigma,
                              extinction=grid_meta.get("extinction", "F99"), r_v=grid_meta.get("r_v", 3.1),
                              bridging=bridging)
