"""The RED-file stage: calibrate a KSPEC reduced frame in place or to a new file.

`apply_fluxcal` reads a RED file (PRIMARY counts, ``VARIANCE``, ``WAVELA``,
``FIBRES``), calibrates it with its ``TYPE='C'`` fibers and a standard-star
catalogue, and writes the calibrated frame atomically: a temporary file in
the target folder, renamed over the target only when complete. On any
failure the input is untouched and nothing partial is left.
"""

import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from . import __version__
from .apply import apply_flux_calibration, fiber_blocks
from .atmosphere import read_airmass, transfer_to_airmass
from .calibration import DEFAULT_MAG_FLOOR
from .combine import QualityGates
from .containers import (
    BRIDGING_CANCELLED,
    FluxCalibrationResult,
    TelluricTransmission,
    make_spectrum,
    telluric_window_string,
)
from .engine import EngineOptions, StandardStar, derive_flux_calibration
from .error_budget import CATALOG_ZERO_POINT_SIGMA
from .exceptions import (
    AlreadyCalibratedError,
    CalibrationError,
    InputDataError,
)
from .io.atomic import write_fits_atomic
from .io.header import set_card, update_calibration_header
from .io.red import PLAUSIBLE_WAVELENGTHS, RedFrame, read_red_frame  # noqa: F401 (public here too)
from .products import (
    calibration_for_frame,
    calibration_provenance,
    file_sha256,
    header_exptime,
    load_calibration,
)
from .products import save_calibration as _save_product
from .quantities import value_in
from .telluric import (
    apply_telluric_correction,
    check_not_corrected,
    read_transmission,
    telluric_header,
    transmission_to_apply,
    warn_airmass_mismatch,
)
from .wavelength import common_log_grid

__all__ = ["FluxcalConfig", "RedFrame", "FluxcalRun", "read_red_frame", "apply_fluxcal", "correct_red_file"]

log = logging.getLogger(__name__)

TEMPLATES_ENV = "KSPEC_FLUXCAL_TEMPLATES"
"""Environment variable naming the default template library folder."""


@dataclass
class FluxcalConfig:
    """Options of the RED-file stage.

    Attributes
    ----------
    catalog : str or Path
        Refcat2 CSV of the field's standards.
    templates : str or Path, optional
        Template library folder (BOSZ 2024 or ck04models); default
        ``$KSPEC_FLUXCAL_TEMPLATES``, else ``data/bosz2024`` in the working folder.
    output : str or Path, optional
        Where to write; default: the input file, rewritten atomically.
    fwhm : float or `~astropy.units.Quantity`, optional
        Instrument FWHM (Å when a bare number), overriding the header's ``SPECFWHM``/``FWHMPCn``.
    metric : {'chi2', 'huber'}
        Template-fit metric.
    smooth : bool
        Smooth the combined vector further (running median).
    match : {'position', 'order'}
        How catalogue rows are matched to standard fibers.
    max_sep : float or `~astropy.units.Quantity`
        Largest match separation (arcsec when a bare number).
    force : bool
        Recalibrate a file that has ``FLUXCAL = T`` already.
    plots : str or Path, optional
        Folder for the QC figures (PNG).
    ebv : 'fit', float or None
        Reddening mode of the photometric fit.
    enabled : bool
        False skips the stage (kspecdr's ``CALIBFLUX``).
    gates : `~kspec_fluxcal.combine.QualityGates`
        Per-star quality thresholds.
    calibration : str or Path, optional
        A stored calibration (a product of `kspec_fluxcal.products`, a nightly
        product or a calibrated RED file) to apply instead of deriving one; no
        catalogue or templates are needed then. The header records it
        (``FCALSRC``).
    fallback : str or Path, optional
        A nightly calibration (`kspec_fluxcal.night.combine_night`) applied
        when the frame's own standards cannot calibrate it: the derivation
        fails (`~kspec_fluxcal.CalibrationError`, e.g. no catalogue row
        matches) or uses fewer than ``min_standards`` stars. The header
        records it (``FCALFALL = T``, ``FCALSRC``, a ``HISTORY`` line). Its
        absolute level is the median transparency of the night, not this
        frame's; when 1 ≤ n < ``min_standards`` standards are usable, their
        gray level rescales it (`kspec_fluxcal.night.rescale_nightly`).
    min_standards : int
        Fewest usable standards for a frame's own calibration; fewer raise
        `~kspec_fluxcal.CalibrationError` unless ``fallback`` is given.
    save_calibration : str or Path, optional
        Also write the calibration as a product here (``.fits`` or ``.ecsv``;
        see `kspec_fluxcal.products.save_calibration`), replacing an existing
        file.
    template_correction : 'auto', 'none', None, str, Path or `~kspec_fluxcal.templates.TemplateCorrection`
        Correction applied to every template before the LSF (see
        `~kspec_fluxcal.templates.TemplateLibrary`): ``'auto'`` applies the
        shipped CALSPEC-derived correction to a ck04models library and none to
        BOSZ. Recorded in the header (``FCALTCOR``) and the summary; its
        per-wavelength uncertainty enters the combined calibration's variance
        as the template-misfit term.
    telluric : bool or None
        Telluric correction (`kspec_fluxcal.telluric`). None (default): the
        transmission is measured on the frame's standards (or taken from the
        stored calibration) and applied, unless the frame has ``TELCOR = T``
        already (then it is skipped with a warning). True: the same, but a
        frame with ``TELCOR = T`` or no transmission available is an error.
        False: no correction; the windows stay bridged by the smooth vector.
    form : {'smooth', 'pixel'}
        Form of the star vectors combined and applied: the smooth B-spline
        form (knot spacing ``knot_spacing``) or the per-pixel form.
    knot_spacing : 'auto' or float
        Knot spacing (Å) of the smooth form; ``'auto'`` lets the standards
        choose it (`kspec_fluxcal.knot_selection`). Recorded as ``FCALKNOT``.
    mag_floor : float
        Per-star systematic error (mag) added in quadrature to every
        catalogue band (default `kspec_fluxcal.calibration.DEFAULT_MAG_FLOOR`;
        the field-common part is ``zero_point_sigma``; see the caveats page).
        Recorded as ``FCALMFLR``.
    template_misfit : None, float or callable
        The template-misfit term of the error budget (see
        `kspec_fluxcal.engine.EngineOptions`); None: the template
        correction's σ for the standards inside its domain and the library's
        floor for the others (the floor alone without a correction).
    zero_point_sigma : float
        Catalogue zero-point error (mag) shared by all standards, the
        ``zero_point`` term of the error budget (default
        `kspec_fluxcal.error_budget.CATALOG_ZERO_POINT_SIGMA`). Recorded as ``FCALZPS``.
    """

    catalog: object = None
    templates: object = None
    output: object = None
    fwhm: float = None
    metric: str = "chi2"
    smooth: bool = False
    match: str = "position"
    max_sep: float = 2.0
    force: bool = False
    plots: object = None
    ebv: object = "fit"
    enabled: bool = True
    gates: QualityGates = field(default_factory=QualityGates)
    calibration: object = None
    fallback: object = None
    min_standards: int = 1
    save_calibration: object = None
    template_correction: object = "auto"
    telluric: object = None
    form: str = "smooth"
    knot_spacing: object = "auto"
    mag_floor: float = DEFAULT_MAG_FLOOR
    template_misfit: object = None
    zero_point_sigma: float = CATALOG_ZERO_POINT_SIGMA

    KSPECDR_NAMES = {
        "CALIBFLUX": "enabled",
        "CALIBFLUX_CATALOG": "catalog",
        "CALIBFLUX_FWHM": "fwhm",
        "CALIBFLUX_METRIC": "metric",
        "CALIBFLUX_SMOOTH": "smooth",
    }

    def __post_init__(self):
        if self.metric not in ("chi2", "huber"):
            raise InputDataError(f"metric must be 'chi2' or 'huber'; got {self.metric!r}.")
        if self.match not in ("position", "order"):
            raise InputDataError(f"match must be 'position' or 'order'; got {self.match!r}.")
        if self.fwhm is not None:
            self.fwhm = float(value_in(self.fwhm, u.AA, "fwhm"))
            if not np.isfinite(self.fwhm) or self.fwhm <= 0:
                raise InputDataError(f"fwhm must be a positive number of Å; got {self.fwhm}.")
        self.max_sep = float(value_in(self.max_sep, u.arcsec, "max_sep"))
        if int(self.min_standards) != self.min_standards or self.min_standards < 1:
            raise InputDataError(f"min_standards must be a whole number ≥ 1; got {self.min_standards!r}.")
        self.min_standards = int(self.min_standards)
        if self.calibration is not None and self.fallback is not None:
            raise InputDataError("give either a stored calibration or a fallback, not both.")
        self._check_fit_options()

    def _check_fit_options(self):
        """Validate ``form``, ``knot_spacing`` and ``mag_floor`` (the fit options)."""
        if self.form not in ("smooth", "pixel"):
            raise InputDataError(f"form must be 'smooth' or 'pixel'; got {self.form!r}.")
        if self.knot_spacing != "auto":
            try:
                self.knot_spacing = float(self.knot_spacing)
            except (TypeError, ValueError) as exc:
                raise InputDataError(
                    f"knot_spacing must be 'auto' or a number of Å; got {self.knot_spacing!r}.") from exc
            if not np.isfinite(self.knot_spacing) or self.knot_spacing <= 0:
                raise InputDataError(f"knot_spacing must be 'auto' or a positive number of Å; got {self.knot_spacing}.")
        for name in ("mag_floor", "zero_point_sigma"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or value < 0:
                raise InputDataError(f"{name} must be a number of magnitudes ≥ 0; got {value}.")
            setattr(self, name, value)

    @classmethod
    def from_args(cls, args=None, **overrides):
        """Build a config from kspecdr's args (a dict or an object) and keywords.

        kspecdr names (``CALIBFLUX``, ``CALIBFLUX_CATALOG``, ``CALIBFLUX_FWHM``,
        ``CALIBFLUX_METRIC``, ``CALIBFLUX_SMOOTH``) and this class's own field
        names are both understood.
        """
        values = {}
        if args is not None:
            source = args if isinstance(args, dict) else vars(args)
            own = {f.name for f in fields(cls)}
            for key, value in source.items():
                name = cls.KSPECDR_NAMES.get(str(key).upper(), key if key in own else None)
                if name is not None and value is not None:
                    values[name] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        for flag in ("enabled", "smooth", "force"):
            if isinstance(values.get(flag), str):
                values[flag] = values[flag].strip().lower() in ("1", "t", "true", "yes", "y")
        return cls(**values)


@dataclass
class FluxcalRun:
    """What `apply_fluxcal` did: the result, where it wrote, and the figures."""

    result: FluxCalibrationResult
    output: Path
    figures: list = field(default_factory=list)
    frame: RedFrame = None


def instrument_fwhm(config, header):
    """(FWHM in Å or None, FWHM polynomial coefficients or None) of a frame: ``config.fwhm``, else the header.

    The header's ``SPECFWHM`` (Å) or ``FWHMPC0``, ``FWHMPC1`` … (FWHM(λ) = Σ c_k λ^k, Å).
    Raises `~kspec_fluxcal.InputDataError` when neither is known.
    """
    if config.fwhm is not None:
        return config.fwhm, None
    poly = []
    while f"FWHMPC{len(poly)}" in header:
        poly.append(float(header[f"FWHMPC{len(poly)}"]))
    fwhm = header.get("SPECFWHM")
    if fwhm is None and not poly:
        raise InputDataError(
            "the instrument FWHM is unknown: the header has neither SPECFWHM nor FWHMPCn; "
            "give it with --fwhm (Å)."
        )
    return (float(fwhm) if fwhm is not None else None), (poly or None)


def resolve_template_library(config):
    """The template library of ``config.templates``, else of $KSPEC_FLUXCAL_TEMPLATES, else of data/bosz2024."""
    from .templates import TemplateLibrary

    folder = config.templates or os.environ.get(TEMPLATES_ENV) or Path("data") / "bosz2024"
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(
            f"template library folder {folder} does not exist; download BOSZ templates with "
            "'kspec-fluxcal download-templates' or give --templates DIR."
        )
    return TemplateLibrary(folder, correction=config.template_correction)


def _standards(frame, catalog, config):
    """StandardStar objects for matched standards, and the rejected ones with reasons."""
    from .catalog import match_catalog_to_fibers, photometry_from_catalog_row

    types = np.char.strip(np.asarray(frame.fibres["TYPE"]).astype(str))
    std_idx = np.flatnonzero(types == "C")
    if std_idx.size == 0:
        raise CalibrationError("the frame has no standard-star fibers (FIBRES TYPE='C'); nothing to calibrate with.")
    matches = match_catalog_to_fibers(frame.fibres, catalog, max_sep=config.max_sep * u.arcsec, method=config.match)
    by_fiber = {int(m["FIBER"]): m for m in matches}
    stars, rejected = [], []
    names = frame.fibres["NAME"] if "NAME" in frame.fibres.colnames else [f"fiber{i}" for i in range(len(types))]
    for f in std_idx:
        name = str(names[f]).strip()
        ident = {"star_name": name, "fiber_id": int(f)}
        m = by_fiber.get(int(f))
        if m is None or not m["MATCHED"]:
            reason = str(m["REASON"]) if m is not None and m["REASON"] else "no catalogue row matched"
            log.warning("standard %s (fiber %d) rejected: %s", name, f, reason)
            rejected.append({**ident, "reject_reason": reason})
            continue
        counts, var = frame.counts[f], frame.variance[f]
        bad = ~np.isfinite(counts) | ~np.isfinite(var) | (var <= 0) | (counts <= 0)
        if np.count_nonzero(~bad) < 0.3 * bad.size:
            reason = (f"only {np.mean(~bad):.0%} of its pixels are usable (finite positive counts and variance; "
                      "30% needed)")
            log.warning("standard %s (fiber %d) rejected: %s", name, f, reason)
            rejected.append({**ident, "reject_reason": reason})
            continue
        spec = make_spectrum(frame.wavelength[f], np.where(bad, 1.0, counts), np.where(bad, 1.0, var),
                             mask=bad, flux_unit=frame.counts_unit, light=True)
        phot = photometry_from_catalog_row(catalog[int(m["CATALOG_ROW"])])
        stars.append(StandardStar(spec, phot, name=name, fiber_id=int(f),
                                  meta={"catalog_sep_arcsec": float(m["SEPARATION"])}))
    return stars, rejected


def _fcalstar_table(result):
    rows = result.summary.get("per_star_metrics", [])
    bands = sorted({b for v in result.per_star_vectors for b in (v.meta.get("band_residuals") or {})})
    table = Table()
    table["FIBER"] = [int(r.get("fiber_id") if r.get("fiber_id") is not None else -1) for r in rows]
    table["NAME"] = [str(r.get("star_name") or "") for r in rows]
    table["USED"] = [bool(r.get("used")) for r in rows]
    table["REASON"] = [str(r.get("reject_reason") or "") for r in rows]
    for key, col, unit in (("teff", "TEFF", u.K), ("logg", "LOGG", None), ("feh", "FEH", None),
                           ("alpha_m", "ALPHA_M", None), ("rv_kms", "RV", u.km / u.s), ("ebv", "EBV", u.mag),
                           ("scale_factor", "SCALE", None), ("chi2", "CHI2", None), ("ndof", "NDOF", None),
                           ("phot_rms", "PHOT_RMS", u.mag), ("gray_factor", "GRAY", None),
                           ("snr_median", "SNR", None)):
        table[col] = [np.nan if r.get(key) is None else float(r.get(key)) for r in rows]
        if unit is not None:
            table[col].unit = unit
    vec_meta = {(v.meta.get("fiber_id")): v.meta for v in result.per_star_vectors}
    for band in bands:
        col = f"RES_{band.upper()}"
        table[col] = [float((vec_meta.get(r.get("fiber_id"), {}).get("band_residuals") or {}).get(band, np.nan))
                      for r in rows]
        table[col].unit = u.mag
    hdu = fits.table_to_hdu(table)
    hdu.name = "FCALSTAR"
    hdu.header["COMMENT"] = "RES_<band>: synthetic minus catalogue AB magnitude"
    return hdu


def _history(result):
    lines = []
    for r in result.summary.get("per_star_metrics", []):
        status = "used" if r.get("used") else f"rejected: {r.get('reject_reason')}"
        if r.get("teff") is None:
            lines.append(f"FCAL fiber {r.get('fiber_id')} {r.get('star_name')}: {status}")
            continue
        lines.append(
            f"FCAL fiber {r.get('fiber_id')} {r.get('star_name')}: Teff={r['teff']:.0f} logg={r['logg']:.2f} "
            f"[M/H]={r['feh']:+.2f} RV={r['rv_kms']:+.1f} E(B-V)={r['ebv']:.3f} "
            f"scale={r['scale_factor']:.4g} {status}"
        )
    return lines


def _output_hdulist(frame, flux, flux_var, result, config, origin):
    header = frame.header.copy()
    update_calibration_header(header, result)
    header["FCALVER"] = (__version__, "kspec_fluxcal version")
    header["FCALBUNI"] = (frame.counts_unit.to_string(), "input counts unit (BUNIT) as read")
    if frame.unit_assumed:
        header.add_history(f"FCAL input had no BUNIT; counts in {frame.counts_unit.to_string()} assumed")
    provenance = result.summary.get("provenance") or {}
    for key in ("FCALSRC", "FCALNOWN", "FCALGRAY"):  # left by an earlier (forced) run
        header.remove(key, ignore_missing=True, remove_all=True)
    header["FCALTPL"] = (str(origin.get("template_library") or provenance.get("template_library") or "")[:40],
                         "template library folder")
    header["FCALTFP"] = (str(origin.get("template_fingerprint") or provenance.get("template_fingerprint") or "")[:40],
                         "template library fingerprint")
    stored = (result.summary.get("template_correction") or {}).get("label")
    header["FCALTCOR"] = (str(origin.get("template_correction") or stored or "none")[:45],
                          "template correction applied")
    header["FCALFALL"] = (bool(origin.get("fallback")), "nightly fallback calibration applied")
    if origin.get("source"):
        set_card(header, "FCALSRC", origin["source"], "calibration product applied")
    if origin.get("fallback"):
        header["FCALNOWN"] = (int(origin.get("n_own", 0)), "this frame's own usable standards")
        if origin.get("gray") is not None:
            header["FCALGRAY"] = (float(origin["gray"]), "gray rescaling of the nightly calibration")
    if "lsf" in origin:
        header["FCALMETR"] = (config.metric, "template-fit metric")
        header["FCALSMTH"] = (bool(config.smooth), "extra smoothing of the combined vector")
        header["FCALMTCH"] = (config.match, "catalogue matching")
        header["FCALEBV"] = (str(config.ebv), "reddening mode")
        header["FCALFWHM"] = (str(origin["lsf"])[:45], "instrument LSF")
        _budget_cards(header, result.summary)
    for line in _history(result) if not origin.get("source") else origin.get("history", []):
        header.add_history(_ascii(line))
    primary = fits.PrimaryHDU(np.asarray(flux, dtype=np.float32), header=header)
    variance = fits.ImageHDU(np.asarray(flux_var, dtype=np.float32), name="VARIANCE")
    variance.header["BUNIT"] = "erg2 / (Angstrom2 s2 cm4)"
    products = result.to_hdulist()
    return primary, variance, products


def _template_misfit(config, library):
    """The template-misfit term: the configured one, else the library's correction, else None (the floor)."""
    if config.template_misfit is not None:
        return config.template_misfit
    return library.correction


def _budget_cards(header, summary):
    """Header keys of the knot choice, magnitude floor and error budget."""
    choice = summary.get("knot_selection") or {}
    if choice:
        header["FCALKNOT"] = (float(choice["spacing"]), "[Angstrom] knot spacing of the smooth form")
        header["FCALKSEL"] = (str(choice["method"]), "how the knot spacing was chosen")
    if summary.get("mag_floor") is not None:
        header["FCALMFLR"] = (float(summary["mag_floor"]), "[mag] floor added to catalogue errors")
    if summary.get("zero_point_sigma") is not None:
        header["FCALZPS"] = (float(summary["zero_point_sigma"]), "[mag] catalogue zero-point error")
    budget = summary.get("error_budget") or {}
    if budget:
        header["FCALMISF"] = (str(budget.get("misfit_source", ""))[:40], "template-misfit term source")
        for name, key in (("noise", "FCALENOI"), ("scale", "FCALESCL"), ("zero_point", "FCALEZP"),
                          ("smoothing", "FCALESMO"), ("template_misfit", "FCALEMIS")):
            value = budget["terms"][name]["median_fraction"]
            header[key] = (float(value) if value is not None else -1.0, f"median fractional sigma: {name}")


def _derive(red_filename, frame, config, grid):
    """The frame's calibration from its own standards, or the nightly fallback: (result, origin)."""
    from .catalog import load_standard_star_catalog
    from .templates import PreparedGrid

    if config.catalog is None:
        raise InputDataError("no standard-star catalogue given; pass --catalog CAT.csv (or --calibration FILE).")
    catalog = load_standard_star_catalog(config.catalog)
    fwhm, poly = instrument_fwhm(config, frame.header)
    library = resolve_template_library(config)
    origin = {"template_library": Path(library.path).name, "template_fingerprint": library.fingerprint,
              "template_correction": library.correction.label if library.correction is not None else "none"}
    try:
        stars, rejected = _standards(frame, catalog, config)
        if grid is None:
            common = common_log_grid(frame.wavelength) * u.AA
            grid = PreparedGrid.build(library, common, fwhm, fwhm_poly_coeffs=poly)
        origin["lsf"] = grid.meta.get("lsf", "")
        options = EngineOptions(metric=config.metric, ebv=config.ebv, smooth=config.smooth, gates=config.gates,
                                representation=config.form, knot_spacing=config.knot_spacing,
                                mag_floor=config.mag_floor, template_misfit=_template_misfit(config, library),
                                zero_point_sigma=config.zero_point_sigma,
                                telluric=config.telluric is not False and not frame.header.get("TELCOR"))
        result = derive_flux_calibration(stars, grid, options, output_wavelength=grid.wavelength, rejected=rejected)
        if result.telluric is not None:
            result.telluric.meta["airmass"] = read_airmass(frame.header)
    except CalibrationError as exc:
        if config.fallback is None:
            raise
        return _fallback(frame, config, None, str(exc), origin)
    n_used = int(result.summary["n_stars_used"])
    if n_used < config.min_standards:
        reason = f"only {n_used} usable standard(s), fewer than the minimum of {config.min_standards}"
        if config.fallback is None:
            raise CalibrationError(f"{reason}; give a nightly calibration as fallback or lower the minimum.")
        return _fallback(frame, config, result, reason, origin)
    options = {"metric": config.metric, "ebv": config.ebv, "smooth": config.smooth, "match": config.match,
               "form": config.form, "knot_spacing": config.knot_spacing, "mag_floor": config.mag_floor,
               "zero_point_sigma": config.zero_point_sigma,
               "max_sep_arcsec": config.max_sep, "lsf": origin["lsf"], "gates": asdict(config.gates),
               "template_correction": origin["template_correction"]}
    result.summary["provenance"] = calibration_provenance(
        red_filename, frame.header, file_sha256(red_filename), origin["template_library"],
        origin["template_fingerprint"], options)
    correction = library.correction
    result.summary["template_correction"] = None if correction is None else {
        "label": correction.label, "name": correction.name, "fingerprint": correction.fingerprint,
        "library_kind": correction.meta.get("library_kind"), "used_stars": correction.meta.get("used_stars"),
        "date": correction.meta.get("date"), "misfit_variance_in_cal_variance": True,
        "model": (correction.model or {}).get("kind", "constant"),
        "domain": (correction.model or {}).get("domain"),
        "standards_outside_domain": [
            str(v.meta.get("star_name")) for v in result.per_star_vectors
            if v.meta.get("used", True) and v.meta.get("teff") is not None
            and not correction.covers(v.meta["teff"], v.meta["feh"])]}
    return result, origin


def _ascii(text):
    """``text`` with what FITS headers cannot hold replaced (dashes by '-', anything else by '?')."""
    return text.replace("\u2014", "-").replace("\u2013", "-").encode("ascii", "replace").decode("ascii")


def _fallback(frame, config, own, reason, origin):
    """The nightly calibration for a frame whose standards fall short, rescaled by them when any is usable."""
    from .night import rescale_nightly

    source = Path(config.fallback)
    nightly = calibration_for_frame(load_calibration(source), frame.counts_unit, header_exptime(frame.header))
    nightly = transfer_to_airmass(nightly, read_airmass(frame.header))
    n_own = int(own.summary["n_stars_used"]) if own is not None else 0
    origin = {**origin, "source": source.name, "fallback": True, "n_own": n_own}
    origin["history"] = [f"FCAL fallback: nightly calibration {source.name} applied because {reason}"]
    if own is not None:
        nightly = rescale_nightly(nightly, own)
        nightly.telluric = own.telluric
        origin["gray"] = nightly.summary["gray_rescale"]["factor"]
        origin["history"].append(f"FCAL nightly calibration rescaled by {origin['gray']:.4f} to this frame's "
                                 f"{n_own} usable standard(s)")
        origin["history"] += _history(own)
    log.warning("%s; applying the nightly calibration %s", reason, source.name)
    return nightly, origin


def apply_fluxcal(red_filename, config=None, grid=None):
    """Flux-calibrate a RED file.

    Parameters
    ----------
    red_filename : str or Path
        The RED file; rewritten atomically unless ``config.output`` is set.
    config : `FluxcalConfig`, dict or object, optional
        Options; dicts and objects (kspecdr's args) go through
        `FluxcalConfig.from_args`.
    grid : `~kspec_fluxcal.templates.PreparedGrid`, optional
        A prepared grid to reuse (it must match the frame's set-up and cover
        its wavelengths).

    Returns
    -------
    `FluxcalRun`
        ``result`` is the calibration applied: the frame's own (its
        ``summary['provenance']`` filled, see
        `kspec_fluxcal.products.calibration_provenance`), the stored one
        (``config.calibration``) or the nightly one (``config.fallback``).

    Notes
    -----
    With ``config.calibration`` the stored calibration is applied and nothing
    is derived. Otherwise the frame's standards are used; when they fall short
    (see ``FluxcalConfig.fallback`` and ``min_standards``) the nightly
    calibration is applied instead and the header says so (``FCALFALL = T``,
    ``FCALSRC``, ``FCALNOWN``, ``HISTORY``). A calibration per ct is converted
    for a frame in ct/s (or back) with the exposure times
    (`kspec_fluxcal.products.calibration_for_frame`).
    """
    if not isinstance(config, FluxcalConfig):
        config = FluxcalConfig.from_args(config)
    red_filename = Path(red_filename)
    frame = read_red_frame(red_filename)
    if frame.header.get("FLUXCAL") and not config.force:
        raise AlreadyCalibratedError(
            f"{red_filename.name} is flux calibrated already (FLUXCAL = T); use --force to calibrate it again."
        )
    if config.telluric:
        check_not_corrected(frame.header, red_filename.name)
    if config.calibration is not None:
        stored = Path(config.calibration)
        result = load_calibration(stored)
        prov = result.summary["provenance"]
        origin = {"source": stored.name, "history": [
            f"FCAL calibration {stored.name} applied (derived from {prov.get('red_file') or 'unknown'}, "
            f"DATE-OBS {prov.get('date_obs') or 'unknown'}, kind {prov.get('kind')})"]}
    else:
        result, origin = _derive(red_filename, frame, config, grid)
    result = calibration_for_frame(result, frame.counts_unit, header_exptime(frame.header))
    telluric = transmission_to_apply(frame.header, result, config.telluric, red_filename.name)
    # T measured against the calibration applied (not a nightly one's): the bridging error cancels in counts·Cal/T
    cancels = telluric is not None and result.covariance is not None and not origin.get("fallback")
    flux, flux_var = _calibrated_arrays(frame, result, telluric, cancels)
    primary, variance, products = _output_hdulist(frame, flux, flux_var, result, config, origin)
    if telluric is not None:
        telluric_header(primary.header, telluric, origin.get("source"))
        if cancels:
            primary.header[BRIDGING_CANCELLED] = (True, "bridging error cancels inside TELLURIC")
    with fits.open(red_filename, memmap=False) as hdul:
        kept = [h.copy() for h in hdul[1:] if h.name not in ("VARIANCE", "FLUXCAL", "FCALSTAR", "FCALVEC",
                                                              "FCALSUM", "TELLURIC", "FCALCOV")]
    target = Path(config.output) if config.output else red_filename
    hdus = [primary, variance, *kept, products["FLUXCAL"], _fcalstar_table(result),
            *[h for h in products if h.name in ("FCALVEC", "FCALSUM", "FCALCOV")],
            *([telluric.to_hdu()] if telluric is not None else [])]
    write_fits_atomic(hdus, target)
    log.info("wrote %s (%d standards used)", target, result.summary["n_stars_used"])
    if config.save_calibration:
        _save_product(result, config.save_calibration, overwrite=True)
    figures = []
    if config.plots:
        from .qc import save_figures

        figures = save_figures(result, config.plots, prefix=target.stem)
        if telluric is not None and telluric.per_star is not None:
            from .qc_telluric import save_telluric_figures

            figures += save_telluric_figures(telluric, config.plots, prefix=target.stem)
    return FluxcalRun(result=result, output=target, figures=figures, frame=frame)


def _calibrated_arrays(frame, result, telluric, cancels=False):
    """The frame's calibrated flux and variance (FLAM, float32 as written), computed in blocks of fibers.

    ``cancels``: ``telluric`` was measured against ``result``, so its bridging term is left out where T was
    measured (`kspec_fluxcal.containers.telluric_covariance`).

    Each block is calibrated (and telluric-corrected) in float64 and stored
    in float32, the type the calibrated file holds, so that no step holds a
    (fibers × pixels) float64 temporary of the whole frame.
    """
    # the covariance as FCALCOV stores it (σ in float32), so that the stored calibration gives this frame bit for bit
    covariance = type(result.covariance).from_hdu(result.covariance.to_hdu()) if cancels else None
    flux = np.empty(frame.counts.shape, dtype=np.float32)
    flux_var = np.empty(frame.counts.shape, dtype=np.float32)
    for rows in fiber_blocks(frame.counts.shape):
        f, fv = apply_flux_calibration(frame.counts[rows] * frame.counts_unit,
                                       frame.variance[rows] * frame.counts_unit**2, result,
                                       wavelength=frame.wavelength[rows])
        f, fv = f.value, fv.value
        if telluric is not None:
            f, fv = apply_telluric_correction(f, fv, frame.wavelength[rows], telluric, covariance=covariance)
        flux[rows], flux_var[rows] = f, fv
    return flux, flux_var


def correct_red_file(red_filename, transmission, output=None):
    """Apply a stored transmission to a (calibrated) RED file, written atomically.

    Parameters
    ----------
    red_filename : str or Path
        The frame; rewritten unless ``output`` is given.
    transmission : `TelluricTransmission` or str or Path
        The transmission, or a file holding one (`read_transmission`).
    output : str or Path, optional
        Where to write.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    TelluricCorrectedError
        The frame has ``TELCOR = T`` already.
    """
    red_filename = Path(red_filename)
    frame = read_red_frame(red_filename)
    check_not_corrected(frame.header, red_filename.name)
    source = None
    if not isinstance(transmission, TelluricTransmission):
        source = Path(transmission).name
        transmission = read_transmission(transmission)
    warn_airmass_mismatch(transmission, read_airmass(frame.header), red_filename.name)
    flux, var = apply_telluric_correction(frame.counts, frame.variance, frame.wavelength, transmission)
    with fits.open(red_filename, memmap=False) as hdul:
        header = hdul[0].header.copy()
        telluric_header(header, transmission, source)
        variance = hdul["VARIANCE"].copy()
        variance.data = var.astype(np.float32)
        kept = [h.copy() for h in hdul[1:] if h.name not in ("VARIANCE", "TELLURIC")]
    hdus = [fits.PrimaryHDU(flux.astype(np.float32), header=header), variance, *kept, transmission.to_hdu()]
    target = Path(output) if output else red_filename
    write_fits_atomic(hdus, target)
    log.info("wrote %s (telluric windows %s corrected)", target, telluric_window_string(transmission.windows) or "none")
    return target
