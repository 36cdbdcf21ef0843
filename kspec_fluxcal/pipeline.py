"""The RED-file stage: calibrate a KSPEC reduced frame in place or to a new file.

`apply_fluxcal` reads a RED file (PRIMARY counts, ``VARIANCE``, ``WAVELA``,
``FIBRES``), calibrates it with its ``TYPE='C'`` fibers and a standard-star
catalogue, and writes the calibrated frame atomically: a temporary file in
the target folder, renamed over the target only when complete. On any
failure the input is untouched and nothing partial is left.
"""

import logging
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from . import __version__
from .apply import apply_flux_calibration
from .combine import QualityGates
from .containers import FluxCalibrationResult, make_spectrum
from .engine import EngineOptions, StandardStar, derive_flux_calibration
from .exceptions import AlreadyCalibratedError, InputDataError, KspecFluxcalError, RedFileError

__all__ = ["FluxcalConfig", "RedFrame", "FluxcalRun", "read_red_frame", "apply_fluxcal", "log_wavelength_grid"]

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
    fwhm : float, optional
        Instrument FWHM (Å), overriding the header's ``SPECFWHM``/``FWHMPCn``.
    metric : {'chi2', 'huber'}
        Template-fit metric.
    smooth : bool
        Smooth the combined vector further (running median).
    match : {'position', 'order'}
        How catalogue rows are matched to standard fibers.
    max_sep : float
        Largest match separation (arcsec).
    force : bool
        Recalibrate a file that has ``FLUXCAL = T`` already.
    plots : str or Path, optional
        Folder for the QC figures (PNG).
    ebv : 'fit', float or None
        Reddening mode of the photometric fit.
    enabled : bool
        False skips the stage (kspecdr's ``CALIBFLUX``).
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
            self.fwhm = float(self.fwhm)
            if not np.isfinite(self.fwhm) or self.fwhm <= 0:
                raise InputDataError(f"fwhm must be a positive number of Å; got {self.fwhm}.")

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
class RedFrame:
    """A RED frame in memory (plain arrays; wavelengths in Å, air)."""

    counts: np.ndarray
    variance: np.ndarray
    wavelength: np.ndarray
    fibres: Table
    header: fits.Header
    counts_unit: u.Unit


@dataclass
class FluxcalRun:
    """What `apply_fluxcal` did: the result, where it wrote, and the figures."""

    result: FluxCalibrationResult
    output: Path
    figures: list = field(default_factory=list)
    frame: RedFrame = None


def _wavelength_unit(header, values):
    unit = header.get("BUNIT") or header.get("CUNIT1")
    if unit:
        try:
            unit = u.Unit(unit)
        except ValueError as exc:
            raise RedFileError(f"WAVELA has an unreadable unit '{unit}'; use Angstrom.") from exc
        if unit.physical_type != "length":
            raise RedFileError(f"WAVELA unit '{unit}' is not a wavelength; it must be in Angstrom.")
        return unit
    median = np.nanmedian(values)
    if median < 10:
        return u.micron
    if median < 2000:
        return u.nm
    return u.AA


def read_red_frame(path):
    """Read and validate a RED file.

    Raises `~kspec_fluxcal.RedFileError` naming what is missing or inconsistent.
    """
    path = Path(path)
    if not path.is_file():
        raise RedFileError(f"RED file {path} does not exist.")
    try:
        with fits.open(path, memmap=False) as hdul:
            names = [h.name for h in hdul]
            for ext in ("VARIANCE", "WAVELA", "FIBRES"):
                if ext not in names:
                    raise RedFileError(
                        f"{path.name} has no {ext} extension; a RED file needs PRIMARY, VARIANCE, "
                        "WAVELA and FIBRES (see the RED format page)."
                    )
            header = hdul[0].header.copy()
            counts = _image(hdul[0], "PRIMARY", path)
            variance = _image(hdul["VARIANCE"], "VARIANCE", path)
            wave = np.asarray(hdul["WAVELA"].data, dtype=float)
            wave_unit = _wavelength_unit(hdul["WAVELA"].header, wave)
            fibres = Table.read(hdul["FIBRES"])
    except KspecFluxcalError:
        raise
    except (OSError, TypeError, ValueError, IndexError, KeyError) as exc:
        raise RedFileError(f"{path.name} is not a readable FITS file ({exc}).") from exc
    if counts.ndim != 2:
        raise RedFileError(f"PRIMARY of {path.name} must be 2-D (NFIB, NPIX); got shape {counts.shape}.")
    if variance.shape != counts.shape:
        raise RedFileError(f"VARIANCE shape {variance.shape} differs from PRIMARY shape {counts.shape}.")
    if wave.shape not in (counts.shape, (counts.shape[1],)):
        raise RedFileError(
            f"WAVELA shape {wave.shape} fits neither (NFIB, NPIX) = {counts.shape} nor (NPIX,)."
        )
    if len(fibres) != counts.shape[0]:
        raise RedFileError(f"FIBRES has {len(fibres)} rows but PRIMARY has {counts.shape[0]} fibers.")
    if "TYPE" not in fibres.colnames:
        raise RedFileError("FIBRES has no TYPE column; standards are the fibers with TYPE='C'.")
    wave = (wave * wave_unit).to_value(u.AA)
    wave2d = np.broadcast_to(wave, counts.shape) if wave.ndim == 1 else wave
    finite = np.isfinite(wave2d)
    if not finite.all():
        raise RedFileError(f"WAVELA holds {np.count_nonzero(~finite)} non-finite wavelengths.")
    if np.any(np.diff(wave2d, axis=1) <= 0):
        raise RedFileError("WAVELA must increase along each fiber; this frame's wavelengths decrease somewhere.")
    bunit = header.get("BUNIT", "ct")
    try:
        counts_unit = u.Unit(bunit or "ct")
    except ValueError as exc:
        raise RedFileError(f"PRIMARY BUNIT '{bunit}' is not a unit astropy reads (use 'ct' or 'ct / s').") from exc
    return RedFrame(counts, variance, np.array(wave2d), fibres, header, counts_unit)


def _image(hdu, name, path):
    if hdu.data is None:
        raise RedFileError(f"{name} of {path.name} holds no data.")
    return np.asarray(hdu.data, dtype=float)


def log_wavelength_grid(wave2d):
    """A common grid, uniform in ln λ, spanning every fiber with the median pixel size."""
    lo, hi = np.min(wave2d[:, 0]), np.max(wave2d[:, -1])
    step = np.median(np.diff(np.log(wave2d), axis=1))
    n = int(np.ceil(np.log(hi / lo) / step)) + 1
    return np.exp(np.linspace(np.log(lo), np.log(hi), n))


def _instrument_fwhm(config, header):
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


def _resolve_templates(config):
    from .templates import TemplateLibrary

    folder = config.templates or os.environ.get(TEMPLATES_ENV) or Path("data") / "bosz2024"
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(
            f"template library folder {folder} does not exist; download BOSZ templates with "
            "'kspec-fluxcal download-templates' or give --templates DIR."
        )
    return TemplateLibrary(folder)


def _standards(frame, catalog, config):
    """StandardStar objects for matched standards, and the rejected ones with reasons."""
    from .catalog import match_catalog_to_fibers, photometry_from_catalog_row

    types = np.char.strip(np.asarray(frame.fibres["TYPE"]).astype(str))
    std_idx = np.flatnonzero(types == "C")
    if std_idx.size == 0:
        raise InputDataError("the frame has no standard-star fibers (FIBRES TYPE='C'); nothing to calibrate with.")
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
            rejected.append({**ident, "reject_reason": reason})
            continue
        counts, var = frame.counts[f], frame.variance[f]
        bad = ~np.isfinite(counts) | ~np.isfinite(var) | (var <= 0) | (counts <= 0)
        if np.count_nonzero(~bad) < 0.3 * bad.size:
            rejected.append({**ident, "reject_reason": f"only {np.mean(~bad):.0%} of its pixels are usable"})
            continue
        spec = make_spectrum(frame.wavelength[f], np.where(bad, 1.0, counts), np.where(bad, 1.0, var),
                             mask=bad, flux_unit=frame.counts_unit)
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


def _output_hdulist(frame, flux, flux_var, result, config, grid_meta, library):
    header = frame.header.copy()
    header["BUNIT"] = "erg / (Angstrom s cm2)"
    header["FLUXCAL"] = (True, "flux calibrated by kspec_fluxcal")
    header["FCALNSTR"] = (int(result.summary["n_stars_used"]), "standard stars used")
    rms = result.summary.get("rms_scatter")
    header["FCALRMS"] = (float(rms) if rms is not None and np.isfinite(rms) else -1.0,
                         "rms scatter between standards (-1: one)")
    header["FCALFORM"] = (result.summary.get("representation", "pixel"), "form of the applied vector")
    header["FCALVER"] = (__version__, "kspec_fluxcal version")
    header["FCALTPL"] = (str(Path(library.path).name)[:40], "template library folder")
    header["FCALTFP"] = (str(library.fingerprint)[:40], "template library fingerprint")
    header["FCALMETR"] = (config.metric, "template-fit metric")
    header["FCALSMTH"] = (bool(config.smooth), "extra smoothing of the combined vector")
    header["FCALMTCH"] = (config.match, "catalogue matching")
    header["FCALEBV"] = (str(config.ebv), "reddening mode")
    header["FCALFWHM"] = (str(grid_meta.get("lsf", ""))[:45], "instrument LSF")
    for line in _history(result):
        header.add_history(line)
    primary = fits.PrimaryHDU(flux.astype(np.float32), header=header)
    variance = fits.ImageHDU(flux_var.astype(np.float32), name="VARIANCE")
    variance.header["BUNIT"] = "erg2 / (Angstrom2 s2 cm4)"
    products = result.to_hdulist()
    return primary, variance, products


def _write_atomic(hdus, target):
    """Write ``hdus`` to a temporary file beside ``target``, then rename it over ``target``."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    try:
        fits.HDUList(hdus).writeto(tmp, overwrite=True, checksum=True)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        A prepared grid to reuse (it must match the frame's set-up).

    Returns
    -------
    `FluxcalRun`
    """
    from .catalog import load_standard_star_catalog
    from .templates import PreparedGrid

    if not isinstance(config, FluxcalConfig):
        config = FluxcalConfig.from_args(config)
    red_filename = Path(red_filename)
    frame = read_red_frame(red_filename)
    if frame.header.get("FLUXCAL") and not config.force:
        raise AlreadyCalibratedError(
            f"{red_filename.name} is flux calibrated already (FLUXCAL = T); use --force to calibrate it again."
        )
    if config.catalog is None:
        raise InputDataError("no standard-star catalogue given; pass --catalog CAT.csv.")
    catalog = load_standard_star_catalog(config.catalog)
    fwhm, poly = _instrument_fwhm(config, frame.header)
    stars, rejected = _standards(frame, catalog, config)
    library = _resolve_templates(config)
    common = log_wavelength_grid(frame.wavelength) * u.AA
    if grid is None:
        grid = PreparedGrid.build(library, common, fwhm, fwhm_poly_coeffs=poly)
    options = EngineOptions(metric=config.metric, ebv=config.ebv, smooth=config.smooth, gates=config.gates)
    result = derive_flux_calibration(stars, grid, options, output_wavelength=grid.wavelength, rejected=rejected)
    flux, flux_var = apply_flux_calibration(
        frame.counts * frame.counts_unit, frame.variance * frame.counts_unit**2, result,
        wavelength=frame.wavelength,
    )
    primary, variance, products = _output_hdulist(frame, flux.value, flux_var.value, result, config,
                                                  grid.meta, library)
    with fits.open(red_filename, memmap=False) as hdul:
        kept = [h.copy() for h in hdul[1:] if h.name not in ("VARIANCE", "FLUXCAL", "FCALSTAR", "FCALVEC",
                                                              "FCALSUM")]
    target = Path(config.output) if config.output else red_filename
    hdus = [primary, variance, *kept, products["FLUXCAL"], _fcalstar_table(result),
            *[h for h in products if h.name in ("FCALVEC", "FCALSUM")]]
    _write_atomic(hdus, target)
    log.info("wrote %s (%d standards used)", target, result.summary["n_stars_used"])
    figures = []
    if config.plots:
        from .qc import save_figures

        figures = save_figures(result, config.plots, prefix=target.stem)
    return FluxcalRun(result=result, output=target, figures=figures, frame=frame)
