"""Calibration products read back: `load_calibration`, and the header keys a product and a RED file share.

`kspec_fluxcal.products` writes products; this module reads them (and the
calibration stored in a calibrated RED file), so that the readers of the
``io`` layer (`kspec_fluxcal.io.specutils_formats`) need nothing above it.
"""

import json
import logging
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from ..containers import CalibrationVector, FluxCalibrationResult
from ..exceptions import InputDataError

log = logging.getLogger(__name__)

__all__ = ["PROVENANCE_KEYWORDS", "EXPTIME_KEYWORDS", "header_exptime", "load_calibration"]

PROVENANCE_KEYWORDS = {
    "FCALPROD": ("kind", "product kind: exposure or night"),
    "FCALVER": ("package_version", "kspec_fluxcal version"),
    "FCALDATE": ("created", "UTC time the calibration was made"),
    "FCALRED": ("red_file", "RED file the calibration was derived from"),
    "FCALRSHA": ("red_sha256", "SHA-256 of that RED file as read"),
    "FCALRCHK": ("red_checksum", "FITS CHECKSUM of that RED file's primary HDU"),
    "DATE-OBS": ("date_obs", "DATE-OBS of that RED file"),
    "EXPTIME": ("exptime", "[s] exposure time of that RED file"),
    "AIRMASS": ("airmass", "airmass of that RED file"),
    "FCALTPL": ("template_library", "template library folder"),
    "FCALTFP": ("template_fingerprint", "template library fingerprint"),
    "FCALNEXP": ("n_exposures", "exposures combined (nightly product)"),
}
"""Primary-header keywords of a FITS product: keyword → (provenance key, comment)."""

EXPTIME_KEYWORDS = ("EXPTIME", "EXPOSED")
"""Header keywords read (in this order) for a RED file's exposure time in s (2dF writes ``EXPOSED``)."""

def header_exptime(header):
    """Exposure time (s) from ``EXPTIME`` or ``EXPOSED``, or None when absent or not a positive number."""
    for key in EXPTIME_KEYWORDS:
        value = header.get(key)
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if np.isfinite(value) and value > 0:
            return value
    return None


def _provenance_from_header(header, path):
    """Provenance of a file without ``summary['provenance']`` (a calibrated RED file)."""
    prov = {name: header.get(key) for key, (name, _) in PROVENANCE_KEYWORDS.items()}
    prov["kind"] = prov.get("kind") or "exposure"
    if prov.get("exptime") is None:
        prov["exptime"] = header_exptime(header)
    prov["red_file"] = prov.get("red_file") or Path(path).name
    return prov


def load_calibration(path):
    """Read a calibration product, or the calibration stored in a calibrated RED file.

    Parameters
    ----------
    path : str or Path
        A FITS product, an ECSV product or a calibrated RED file.

    Returns
    -------
    `~kspec_fluxcal.containers.FluxCalibrationResult`
        Its ``summary['provenance']`` is always filled (from the header of a
        calibrated RED file written before products existed). An ECSV product
        gives the combined vector and its covariance (no per-star vectors).

    Raises
    ------
    InputDataError
        The file does not exist or holds no kspec_fluxcal calibration.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"calibration product {path} does not exist.")
    if path.name.lower().endswith(".ecsv"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", u.UnitsWarning)
                table = Table.read(path, format="ascii.ecsv")
            vector = CalibrationVector.from_table(table)
            summary = json.loads(table.meta.get("SUMMARY", "{}"))
            covariance = None
            if "FCALCOV" in table.meta:
                from ..covariance import CalibrationCovariance

                covariance = CalibrationCovariance.from_columns(table, table.meta["FCALCOV"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputDataError(f"{path.name} is not a readable kspec_fluxcal ECSV calibration ({exc}).") from exc
        summary.setdefault("provenance", {"kind": "exposure", "red_file": None})
        if covariance is None:
            log.warning("%s holds no calibration covariance (written by an older version): band fluxes of spectra "
                        "calibrated with it raise MissingCovarianceError; recalibrate to write one.", path.name)
        return FluxCalibrationResult(vector, summary=summary, covariance=covariance)
    try:
        with fits.open(path, memmap=False) as hdul:
            hdus = fits.HDUList([h.copy() for h in hdul])
    except (OSError, ValueError, TypeError) as exc:
        raise InputDataError(f"{path.name} is not a readable FITS file ({exc}).") from exc
    try:
        result = FluxCalibrationResult.from_hdulist(hdus)
    except (KeyError, ValueError, TypeError) as exc:
        raise InputDataError(f"{path.name} holds no usable kspec_fluxcal calibration ({exc}).") from exc
    if not result.summary.get("provenance"):
        result.summary["provenance"] = _provenance_from_header(hdus[0].header, path)
    return result
