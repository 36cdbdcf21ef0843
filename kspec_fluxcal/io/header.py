"""FITS header cards of calibrated frames and calibration products: one writer for each card."""

from collections import defaultdict

import numpy as np
from astropy.io import fits

HEADER_STATE = frozenset({"_cards", "_keyword_indices", "_rvkc_indices", "_modified"})
"""The instance attributes of an `astropy.io.fits.Header` in the astropy releases `copy_header` was written for."""

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


def copy_header(header):
    """A copy of ``header``, equal to ``header.copy()``, at a third of its cost.

    `~astropy.io.fits.Header.copy` copies each card and appends it again,
    re-checking what the header already guarantees; a frame's fibers each
    carry a copy of one header, so for 1000 fibers that is most of the
    bookkeeping. Here each card is copied as `copy.copy` would (its
    attributes are strings and numbers) and the keyword indices are copied
    as they are. A header of another class or of another astropy release's
    internal state is copied by ``header.copy()``.

    Examples
    --------
    >>> from astropy.io import fits
    >>> header = fits.Header([("BUNIT", "ct"), ("EXPTIME", 900.0)])
    >>> copy = copy_header(header)
    >>> copy["BUNIT"] = "erg / (Angstrom s cm2)"
    >>> header["BUNIT"], copy == header
    ('ct', False)
    """
    if type(header) is not fits.Header or set(vars(header)) != HEADER_STATE:
        return header.copy()
    cards = header._cards
    if not all(type(card) is fits.Card for card in cards):
        return header.copy()
    new = fits.Header.__new__(fits.Header)
    new._cards = []
    for card in cards:
        clone = fits.Card.__new__(fits.Card)
        clone.__dict__.update(card.__dict__)
        new._cards.append(clone)
    new._keyword_indices = defaultdict(list, {key: list(at) for key, at in header._keyword_indices.items()})
    new._rvkc_indices = defaultdict(list, {key: list(at) for key, at in header._rvkc_indices.items()})
    new._modified = header._modified
    return new


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
