"""The per-exposure calibration engine: standards in, one calibration out.

`derive_flux_calibration` runs every stage for all standards of an exposure:
the colour-based Teff window, template matching vectorised over stars and
templates, the photometric scale and reddening, each star's vector on a
common wavelength grid, and the robust combination. A star that fails a
stage is carried as rejected with its reason; the run fails only when no
usable star is left.
"""

import logging
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u

from .calibration import DEFAULT_MAG_FLOOR, LINE_DEPTH, compute_calibration_vectors, scale_template_to_photometry
from .combine import QualityGates, combine_calibration_vectors
from .containers import Photometry, validate_spectrum
from .error_budget import CATALOG_ZERO_POINT_SIGMA, complete_error_budget, library_misfit_floor
from .exceptions import CalibrationError, InputDataError, KspecFluxcalError
from .quantities import value_in

__all__ = ["StandardStar", "EngineOptions", "derive_flux_calibration"]

log = logging.getLogger(__name__)


@dataclass
class StandardStar:
    """One standard: its observed counts, catalogue photometry and identity."""

    spectrum: object
    photometry: Photometry
    name: str = ""
    fiber_id: int = -1
    meta: dict = field(default_factory=dict)


@dataclass
class EngineOptions:
    """Options of `derive_flux_calibration` (see its parameters).

    ``mag_floor`` (mag), the per-star systematic, is added in quadrature to every catalogue band's error
    (`DEFAULT_MAG_FLOOR`, see the caveats page); ``zero_point_sigma`` (mag) is
    the catalogue zero-point error common to all standards, propagated as the
    ``zero_point`` term of the error budget (0 for a catalogue without). ``knot_spacing`` is ``'auto'``
    (chosen per exposure by the standards, `kspec_fluxcal.knot_selection`) or
    a spacing in Å. ``representation`` is ``'smooth'`` or ``'pixel'``: the
    form of the star vectors that is combined and applied.
    ``template_misfit`` is the fractional 1σ template misfit common to all
    standards: None (the library's floor, `kspec_fluxcal.error_budget`), a
    number, a function λ (Å, ndarray) → fraction, or a
    `~kspec_fluxcal.templates.correction.TemplateCorrection` (its σ for the
    standards inside its domain, the floor for the others). ``line_depth``
    is the model line depth beyond which pixels stay out of the smooth
    calibration (`~kspec_fluxcal.calibration.LINE_DEPTH`).
    """

    metric: str = "chi2"
    ebv: object = "fit"
    mag_floor: float = DEFAULT_MAG_FLOOR
    mask_regions: object = "telluric_default"
    knot_spacing: object = "auto"
    representation: str = "smooth"
    combine_method: str = "weighted_mean"
    smooth: bool = False
    smooth_window: int = 51
    use_teff_window: bool = True
    gates: QualityGates = field(default_factory=QualityGates)
    template_misfit: object = None
    zero_point_sigma: float = CATALOG_ZERO_POINT_SIGMA
    telluric: bool = False
    line_depth: object = LINE_DEPTH

    def __post_init__(self):
        if not (isinstance(self.knot_spacing, str) and self.knot_spacing == "auto"):
            self.knot_spacing = float(value_in(self.knot_spacing, u.AA, "knot_spacing"))
        if not (isinstance(self.line_depth, str) and self.line_depth == "auto"):
            depth = float(self.line_depth) if isinstance(self.line_depth, (int, float)) else np.nan
            if not 0 < depth <= 1:
                raise InputDataError(
                    f"line_depth must be 'auto' or a fraction of the continuum in (0, 1]; got {self.line_depth!r}."
                )
            self.line_depth = depth


def _teff_window(photometry):
    from .photometry import estimate_teff_from_color

    for method in ("bp_rp", "g_r"):
        try:
            _, window = estimate_teff_from_color(photometry, method=method)
        except (KspecFluxcalError, KeyError, ValueError):
            continue
        window = tuple(float(u.Quantity(w, u.K).value) for w in window)
        if all(np.isfinite(window)):
            return window
    return None


def refined_on_grid_edge(match, grid):
    """Which refined parameters sit on the grid's boundary (within a tenth of a step).

    Refinement never leaves the grid, so a star beyond it ends on the
    boundary; one between interior nodes does not, even when its best node
    is an edge node.
    """
    edge = {}
    for name in ("teff", "logg", "feh"):
        nodes = np.unique(np.asarray(grid.params[name], dtype=float))
        value = match.params.get(name)
        if nodes.size < 2 or value is None:
            edge[name] = False
            continue
        tol = 0.1 * np.min(np.diff(nodes))
        edge[name] = bool(value <= nodes[0] + tol or value >= nodes[-1] - tol)
    return edge


def _reject(rejected, star, reason):
    log.warning("standard %s (fiber %s) rejected: %s", star.name, star.fiber_id, reason)
    rejected.append({"star_name": star.name, "fiber_id": int(star.fiber_id), "reject_reason": str(reason)})


MIN_MATCH_PIXELS = 10
"""Fewest usable pixels (outside the masked regions, inside the grid's coverage) a standard needs to be matched."""


def _matchable(stars, spectra, regions, grid, rejected):
    """The stars (and spectra) with enough usable pixels to be matched; the others are rejected, named."""
    from .masks import spectrum_arrays

    lo, hi = (float(v) for v in u.Quantity(grid.wavelength, u.AA).to_value(u.AA)[[0, -1]])
    keep = []
    for k, (star, spectrum) in enumerate(zip(stars, spectra)):
        wave, _, _, good = spectrum_arrays(spectrum, regions, f"standard {star.name}")
        n_good = int(np.count_nonzero(good & (wave >= lo) & (wave <= hi)))
        if n_good < MIN_MATCH_PIXELS:
            _reject(rejected, star, f"only {n_good} usable pixels outside the masked regions (telluric windows, "
                                    f"strong lines) and inside the template grid; {MIN_MATCH_PIXELS} needed")
        else:
            keep.append(k)
    return [stars[k] for k in keep], [spectra[k] for k in keep]


def _star_meta(star, match, window, grid):
    """What a star's vector records about it besides the calibration itself."""
    return {"star_name": star.name, "fiber_id": int(star.fiber_id), **star.meta, "teff_window": window,
            "on_edge": refined_on_grid_edge(match, grid), "runner_up_score": float(match.runner_up_score),
            "n_candidates": int(match.n_candidates)}


def derive_flux_calibration(stars, grid, options=None, output_wavelength=None, rejected=None):
    """Derive the calibration of one exposure from its standard stars.

    Parameters
    ----------
    stars : list of `StandardStar`
        The standards, each with its own wavelength axis.
    grid : `~kspec_fluxcal.templates.PreparedGrid`
        Templates prepared for this instrument set-up (with band fluxes).
    options : `EngineOptions`, optional
        Metric, reddening mode, masks, smooth form, combination, gates, the
        magnitude floor and the template-misfit term; ``telluric=True`` also
        measures the telluric transmission on the stars used
        (`kspec_fluxcal.telluric.derive_telluric_transmission`; the result's
        ``telluric``).
    output_wavelength : `~astropy.units.Quantity`, optional
        Grid of the per-star and combined vectors (default ``grid.wavelength``).
    rejected : list of dict, optional
        Standards rejected before this stage (``star_name``, ``fiber_id``,
        ``reject_reason``), reported with the others.

    Returns
    -------
    `~kspec_fluxcal.containers.FluxCalibrationResult`
        Its ``summary['per_star_metrics']`` covers every star, rejected ones
        with their reasons; per-star vectors carry the match and scale.
        ``summary['knot_selection']`` says how the smooth form's knot spacing
        was chosen and ``summary['error_budget']`` lists the terms of the
        combined variance (`kspec_fluxcal.error_budget.apply_error_budget`).
    """
    from .masks import load_mask_regions
    from .matching import select_best_templates

    options = options or EngineOptions()
    rejected = [dict(r) for r in (rejected or [])]
    if not stars:
        return combine_calibration_vectors([], rejected=rejected)
    regions = options.mask_regions
    if isinstance(regions, str):
        regions = load_mask_regions(regions)
    out_wave = grid.wavelength if output_wavelength is None else u.Quantity(output_wavelength, u.AA)
    spectra = [validate_spectrum(star.spectrum, name=f"standard {star.name}") for star in stars]
    stars, spectra = _matchable(stars, spectra, regions, grid, rejected)
    if not stars:
        return combine_calibration_vectors([], rejected=rejected)
    windows = [_teff_window(s.photometry) if options.use_teff_window else None for s in stars]
    log.info("matching %d standards against %d templates", len(stars), grid.n_templates)
    matches = select_best_templates(spectra, grid, teff_windows=windows, metric=options.metric,
                                    mask_regions=regions)
    phot_scales, calibratable = [], []
    for i, (star, match) in enumerate(zip(stars, matches)):
        try:
            phot_scales.append(scale_template_to_photometry(
                np.tensordot(match.weights, grid.band_fnu, axes=(0, 0)), grid.band_names, star.photometry,
                grid.ebv_grid, ebv=options.ebv, mag_floor=options.mag_floor,
            ))
        except CalibrationError as exc:
            _reject(rejected, star, exc)
            continue
        calibratable.append(i)
    vectors, failures = compute_calibration_vectors(
        [spectra[i] for i in calibratable], [matches[i] for i in calibratable], grid, phot_scales, out_wave,
        mask_regions=regions, extinction=grid.meta.get("extinction", "F99"), r_v=grid.meta.get("r_v", 3.1),
        knot_spacing=options.knot_spacing, line_depth=options.line_depth,
        metas=[_star_meta(stars[i], matches[i], windows[i], grid) for i in calibratable],
        misfit=library_misfit_floor(grid.meta)[0],
    )
    for k, reason in failures:
        _reject(rejected, stars[calibratable[k]], reason)
    result = combine_calibration_vectors(
        vectors,
        method=options.combine_method,
        smooth=options.smooth,
        smooth_window=options.smooth_window,
        representation=options.representation,
        gates=options.gates,
        rejected=rejected,
        extinction=grid.meta.get("extinction", "F99"),
        r_v=grid.meta.get("r_v", 3.1),
        star_misfit=_star_misfits(vectors, options.template_misfit),
    )
    result.summary["mag_floor"] = float(options.mag_floor)
    result.summary["zero_point_sigma"] = float(options.zero_point_sigma)
    result = complete_error_budget(result, grid.meta, options.template_misfit,
                                   zero_point_sigma=options.zero_point_sigma)
    if options.telluric:
        failed = {k for k, _ in failures}
        ok = [i for k, i in enumerate(calibratable) if k not in failed]
        used = [j for j, v in enumerate(result.per_star_vectors) if v.meta.get("used", True)]
        result.telluric = _telluric(spectra, matches, phot_scales, calibratable, ok, used, result, grid, regions,
                                    out_wave, stars)
    return result


def _star_misfits(vectors, template_misfit):
    """Each star's fractional template-misfit σ on its vector's grid, for the combination's weights, or None.

    Only a template correction with a model says how the misfit differs
    between standards (`~kspec_fluxcal.templates.TemplateCorrection.sigma_for`
    at each star's fitted Teff and [M/H], with the extrapolation term beyond
    the training span); a plain fraction or function is the same for every
    star and leaves the weights alone.
    """
    if not vectors or getattr(template_misfit, "model", None) is None:
        return None
    rows = []
    for vec in vectors:
        teff, feh = vec.meta.get("teff"), vec.meta.get("feh")
        if teff is None or feh is None:
            return None
        rows.append(template_misfit.sigma_for(vec.wavelength.to_value(u.AA), float(teff), float(feh)))
    return np.array(rows)


def _telluric(spectra, matches, phot_scales, calibratable, ok, used, result, grid, regions, out_wave, stars):
    """The telluric transmission measured on the standards the combination used."""
    from .telluric import derive_telluric_transmission

    scale_of = dict(zip(calibratable, phot_scales))
    return derive_telluric_transmission(
        [spectra[ok[j]] for j in used], [matches[ok[j]] for j in used], grid, [scale_of[ok[j]] for j in used],
        [result.per_star_vectors[j] for j in used], out_wave, regions=regions,
        extinction=grid.meta.get("extinction", "F99"), r_v=grid.meta.get("r_v", 3.1),
        names=[stars[ok[j]].name for j in used])
