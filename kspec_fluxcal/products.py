"""Calibration products: a `FluxCalibrationResult` on disk, with its provenance.

A product is the calibration of one exposure (or of a night, see
`kspec_fluxcal.night`) in a file of its own, so that it can be applied to
other frames (``kspec-fluxcal calibrate RED --calibration FILE``) or combined
into a nightly transfer function (``kspec-fluxcal combine-night``).

Two formats:

* **FITS** (``.fits``, ``.fit``, ``.fts``, optionally ``.gz``): everything —
  the ``FLUXCAL`` extension (combined vector), one ``FCALVEC`` extension per
  standard star (or per exposure for a nightly product), ``FCALSUM`` (the
  summary as JSON, provenance included) — as written by
  `~kspec_fluxcal.containers.FluxCalibrationResult.to_hdulist`, plus
  provenance keywords in the primary header (`PROVENANCE_KEYWORDS`).
* **ECSV** (``.ecsv``): the combined vector, as an astropy Table with
  units, and the calibration's covariance (``FCALCOV_*`` columns, its header
  cards in the meta's ``FCALCOV``); the summary and the provenance are in its
  meta. No per-star vectors.

A calibrated RED file holds the same ``FLUXCAL``/``FCALVEC``/``FCALSUM``
extensions, so `load_calibration` reads a calibrated frame as a product too.

Every write is atomic: a temporary file beside the target, renamed over it
when complete.
"""

import hashlib
import json
import logging
from pathlib import Path

from astropy import units as u
from astropy.io import fits
from astropy.time import Time

from . import __version__
from .atmosphere import read_airmass
from .containers import FLAM, CalibrationVector, FluxCalibrationResult, jsonable
from .exceptions import InputDataError
from .io.atomic import atomic_output
from .io.header import set_card, write_summary_cards
from .io.products import EXPTIME_KEYWORDS, PROVENANCE_KEYWORDS, header_exptime, load_calibration  # noqa: F401

__all__ = ["header_exptime", "calibration_provenance", "save_calibration", "load_calibration", "calibration_for_frame"]

log = logging.getLogger(__name__)

_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")


def file_sha256(path):
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def calibration_provenance(red_file=None, header=None, red_sha256=None, template_library=None,
                           template_fingerprint=None, options=None, kind="exposure"):
    """The provenance record of a calibration (a JSON-able dict).

    Parameters
    ----------
    red_file : str or Path, optional
        RED file the calibration was derived from (its name is kept).
    header : `~astropy.io.fits.Header`, optional
        Its primary header: ``DATE-OBS``, ``CHECKSUM``, the exposure time
        (`EXPTIME_KEYWORDS`, s) and the airmass
        (`kspec_fluxcal.atmosphere.read_airmass`) are copied when present.
    red_sha256 : str, optional
        SHA-256 of the RED file as read (`file_sha256`).
    template_library, template_fingerprint : str, optional
        Template library folder name and fingerprint.
    options : dict, optional
        Options of the derivation (metric, reddening mode, gates …).
    kind : {'exposure', 'night'}
        What the calibration describes.

    Returns
    -------
    dict
        ``kind``, ``package_version``, ``created`` (UTC, ISO 8601),
        ``red_file``, ``red_sha256``, ``red_checksum``, ``date_obs``,
        ``exptime`` (s), ``airmass``, ``template_library``,
        ``template_fingerprint``, ``options``; None where unknown.
    """
    header = header if header is not None else fits.Header()
    return {
        "kind": kind,
        "package_version": __version__,
        "created": Time.now().utc.isot,
        "red_file": Path(red_file).name if red_file is not None else None,
        "red_sha256": red_sha256,
        "red_checksum": header.get("CHECKSUM"),
        "date_obs": header.get("DATE-OBS"),
        "exptime": header_exptime(header),
        "airmass": read_airmass(header),
        "template_library": template_library,
        "template_fingerprint": template_fingerprint,
        "options": jsonable(options or {}),
    }


def _is_fits(path):
    name = str(path).lower()
    return name.endswith(_FITS_SUFFIXES)


def _with_provenance(result, provenance):
    summary = dict(result.summary)
    if provenance is not None:
        summary["provenance"] = jsonable(provenance)
    return FluxCalibrationResult(result.combined_vector, list(result.per_star_vectors),
                                 list(result.per_star_residuals), summary, result.telluric, result.covariance)


def _product_hdulist(result):
    hdus = result.to_hdulist()
    header = hdus[0].header
    prov = result.summary.get("provenance") or {}
    for key, (name, comment) in PROVENANCE_KEYWORDS.items():
        value = prov.get(name)
        if value is not None:
            set_card(header, key, value, comment)
    write_summary_cards(header, result.summary)
    header["FCALUNIT"] = (result.combined_vector.unit.to_string(), "unit of the calibration factor")
    header["COMMENT"] = "kspec_fluxcal calibration product; FCALSUM holds the summary and provenance (JSON)"
    return hdus


def save_calibration(result, path, provenance=None, overwrite=False):
    """Write a calibration product (FITS or ECSV, chosen by the file name).

    Parameters
    ----------
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        The calibration.
    path : str or Path
        Target; ``.ecsv`` writes the combined vector as ECSV, the FITS
        suffixes (``.fits``, ``.fit``, ``.fts``, optionally ``.gz``) the whole
        result.
    provenance : dict, optional
        Provenance (`calibration_provenance`); default: the result's own
        ``summary['provenance']`` when it has one.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    InputDataError
        An unknown suffix, or an existing target without ``overwrite``.
    """
    path = Path(path)
    if not isinstance(result, FluxCalibrationResult):
        raise InputDataError(f"save_calibration needs a FluxCalibrationResult; got {type(result).__name__}.")
    ecsv = path.name.lower().endswith(".ecsv")
    if not ecsv and not _is_fits(path):
        raise InputDataError(
            f"calibration product {path.name}: unknown format; name it *.fits (whole result) or *.ecsv "
            "(combined vector)."
        )
    if path.exists() and not overwrite:
        raise InputDataError(f"calibration product {path} exists already; remove it or allow overwriting.")
    result = _with_provenance(result, provenance)
    with atomic_output(path) as tmp:
        if ecsv:
            table = result.combined_vector.to_table()
            table.meta["SUMMARY"] = json.dumps(jsonable(result.summary))
            if result.covariance is not None and result.covariance.wavelength.size == len(table):
                columns, cards = result.covariance.to_columns()
                for name, column in columns.items():
                    table[name] = column
                table.meta["FCALCOV"] = cards
            table.meta["comments"] = ["kspec_fluxcal calibration product (combined vector); "
                                      "SUMMARY holds the summary and provenance (JSON)"]
            table.write(tmp, format="ascii.ecsv", overwrite=True)
        else:
            _product_hdulist(result).writeto(tmp, overwrite=True, checksum=True)
    log.info("wrote the calibration product %s", path)
    return path


def calibration_for_frame(result, counts_unit, exptime=None):
    """The calibration ``result`` in the unit a frame's counts need.

    A calibration per ct applies to counts in ct and one per (ct/s) to counts
    in ct/s. Across the two, the exposure times convert: a calibration per
    (ct/s) applied to a frame in ct is divided by the frame's exposure time;
    one per ct applied to a frame in ct/s is multiplied by the exposure time
    of the exposure it was derived on (``summary['provenance']['exptime']``).

    Parameters
    ----------
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        The calibration.
    counts_unit : `~astropy.units.Unit`
        Unit of the frame's counts.
    exptime : float, optional
        The frame's exposure time (s).

    Returns
    -------
    `~kspec_fluxcal.containers.FluxCalibrationResult`
        ``result`` itself when no conversion is needed, else a copy with the
        combined vector converted.

    Raises
    ------
    InputDataError
        The units do not combine into a flux density and the exposure time
        needed to convert is unknown.
    """
    vec = result.combined_vector
    counts_unit = u.Unit(counts_unit)
    if (counts_unit * vec.unit).is_equivalent(FLAM):
        return result
    cal_exptime = (result.summary.get("provenance") or {}).get("exptime")
    rate_unit = counts_unit / u.s
    if (rate_unit * vec.unit).is_equivalent(FLAM) and exptime:
        scale = 1.0 / (float(exptime) * u.s)  # per (ct/s) → per ct: divide by the frame's exposure time
    elif (counts_unit * u.s * vec.unit).is_equivalent(FLAM) and cal_exptime:
        scale = float(cal_exptime) * u.s  # per ct → per (ct/s): times the calibrated exposure's time
    else:
        raise InputDataError(
            f"the calibration is in '{vec.unit}' but the frame's counts are in '{counts_unit}', and the exposure "
            "time needed to convert is unknown (EXPTIME/EXPOSED); calibrate frames in the same counts unit."
        )
    factor = (vec.cal_factor * scale).to(FLAM / counts_unit)
    variance = (vec.cal_variance * scale**2).to(factor.unit**2)
    smooth = smooth_var = None
    if vec.smooth_factor is not None:
        smooth = (vec.smooth_factor * scale).to(factor.unit)
        smooth_var = (vec.smooth_variance * scale**2).to(factor.unit**2)
    converted = CalibrationVector(vec.wavelength, factor, variance, vec.mask, smooth, smooth_var, dict(vec.meta))
    log.info("calibration converted from '%s' to '%s' with the exposure time", vec.unit, factor.unit)
    return FluxCalibrationResult(converted, list(result.per_star_vectors), list(result.per_star_residuals),
                                 dict(result.summary), result.telluric, result.covariance)
