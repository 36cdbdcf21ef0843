"""FITS header cards of calibrated frames and calibration products: one writer for each card."""

import numpy as np

CALIBRATED_BUNIT = "erg / (Angstrom s cm2)"
"""``BUNIT`` of a calibrated frame (erg s⁻¹ cm⁻² Å⁻¹)."""


def set_card(header, key, value, comment=""):
    """Set ``header[key]``, shortening (or dropping) the comment so the card fits in 80 characters.

    Strings longer than 68 characters become long-string (``CONTINUE``) cards.

    Examples
    --------
    >>> from astropy.io import fits
    >>> header = fits.Header()
    >>> set_card(header, "FCALSRC", "night_2026-11-29_fluxcal.fits", "calibration product applied")
    >>> len(header.cards["FCALSRC"].image)
    80
    """
    if isinstance(value, str) and len(value) <= 68:
        room = 80 - 10 - max(len(value.replace("'", "''")) + 2, 20) - 3
        comment = comment[:room] if room > 0 else ""
    header[key] = (value, comment)


def write_summary_cards(header, summary):
    """``FCALNSTR``, ``FCALRMS`` and ``FCALFORM`` from a calibration's summary dict."""
    header["FCALNSTR"] = (int(summary.get("n_stars_used", 0)), "standard stars used")
    rms = summary.get("rms_scatter")
    header["FCALRMS"] = (float(rms) if rms is not None and np.isfinite(rms) else -1.0,
                         "rms scatter between standards (-1: one)")
    header["FCALFORM"] = (summary.get("representation", "pixel"), "form of the applied vector")
    return header


def update_calibration_header(header, calibration):
    """Mark a header as flux calibrated (``FLUXCAL``, ``BUNIT``) and add the calibration's summary cards.

    ``calibration`` is a `~kspec_fluxcal.containers.FluxCalibrationResult`
    (its summary cards are written) or a bare
    `~kspec_fluxcal.containers.CalibrationVector` (no summary to write).
    """
    header["FLUXCAL"] = (True, "flux calibrated by kspec_fluxcal")
    header["BUNIT"] = (CALIBRATED_BUNIT, "calibrated flux density")
    summary = getattr(calibration, "summary", None)
    if summary is not None:
        write_summary_cards(header, summary)
    return header
