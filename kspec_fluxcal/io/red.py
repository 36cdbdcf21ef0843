"""KSPEC RED files read into memory: `read_red_frame` and `RedFrame`.

A RED file holds the PRIMARY counts, ``VARIANCE``, ``WAVELA`` and ``FIBRES``
(see the formats page). `read_red_frame` validates it and converts the
wavelengths to Å; `kspec_fluxcal.pipeline` calibrates it and
`kspec_fluxcal.io.specutils_formats` turns it into specutils spectra.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning

from ..exceptions import InputDataError, KspecFluxcalError, RedFileError
from .units import header_unit, parse_unit, read_fits_table

__all__ = ["RedFrame", "read_red_frame", "PLAUSIBLE_WAVELENGTHS"]


@dataclass
class RedFrame:
    """A RED frame in memory (plain arrays; wavelengths in Å, air)."""

    counts: np.ndarray
    variance: np.ndarray
    wavelength: np.ndarray
    fibres: Table
    header: fits.Header
    counts_unit: u.Unit
    unit_assumed: bool = False


PLAUSIBLE_WAVELENGTHS = (1000.0, 30000.0)
"""Range (Å) that a RED frame's wavelengths must lie in once converted; outside it their unit is wrong."""

_DAMAGED_FITS = r"(?s).*(truncated|multiple of 2880)"
"""astropy's warnings about a truncated or damaged FITS file (it reads on regardless)."""


def _wavelength_unit(header, values):
    """Unit of WAVELA and where it came from: its ``BUNIT``/``CUNIT1``, else a guess from the median value."""
    unit = header.get("BUNIT") or header.get("CUNIT1")
    if unit:
        try:
            unit = parse_unit(unit, kind="wavelength", name="WAVELA unit")
        except InputDataError as exc:
            raise RedFileError(str(exc)) from exc
        return unit, "its header unit"
    finite = values[np.isfinite(values)]
    median = np.median(finite) if finite.size else np.nan
    if median < 10:
        return u.micron, "guessed from the values, as WAVELA has no BUNIT"
    if median < 2000:
        return u.nm, "guessed from the values, as WAVELA has no BUNIT"
    return u.AA, "the default, as WAVELA has no BUNIT"


def read_red_frame(path):
    """Read and validate a RED file.

    Wavelengths are converted to Å: ``WAVELA``'s ``BUNIT`` (or ``CUNIT1``)
    gives their unit (Angstrom, nm, um …); without one the unit is guessed
    from the median value — below 10 µm, below 2000 nm, else Å. Converted
    wavelengths must lie within `PLAUSIBLE_WAVELENGTHS` (1000–30 000 Å), so a
    wrong header unit is caught rather than calibrated.

    Units are read with `kspec_fluxcal.io.units.parse_unit`, so ``BUNIT`` may
    be written as reductions do ('counts', 'e-/s', 'ADU', …). An uncalibrated
    frame's ``BUNIT`` must be counts (ct, electron, adu, DN) or counts per
    second; a missing one is taken as ct with a
    `~kspec_fluxcal.MissingUnitWarning` (``RedFrame.unit_assumed``). A
    calibrated frame (``FLUXCAL = T``) is read in its own flux unit.

    Raises `~kspec_fluxcal.RedFileError` naming what is missing, damaged or
    inconsistent (a truncated file, a missing extension, shapes that disagree,
    wavelengths that are not finite, not increasing or implausible).
    """
    path = Path(path)
    if not path.is_file():
        raise RedFileError(f"RED file {path} does not exist.")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=_DAMAGED_FITS, category=AstropyUserWarning)
            # opened here so that the file is closed even when astropy fails halfway through fits.open
            with open(path, "rb") as handle, fits.open(handle, memmap=False) as hdul:
                names = [h.name for h in hdul]
                for ext in ("VARIANCE", "WAVELA", "FIBRES"):
                    if ext not in names:
                        raise RedFileError(
                            f"{path.name} has no {ext} extension; a RED file needs PRIMARY, VARIANCE, "
                            "WAVELA and FIBRES (see the RED format page)."
                        )
                if not isinstance(hdul["FIBRES"], (fits.BinTableHDU, fits.TableHDU)):
                    raise RedFileError(f"FIBRES of {path.name} is not a table; it must be a binary table of fibers.")
                header = hdul[0].header.copy()
                counts = _image(hdul[0], "PRIMARY", path)
                variance = _image(hdul["VARIANCE"], "VARIANCE", path)
                wave = np.asarray(hdul["WAVELA"].data, dtype=float)
                wave_unit, unit_source = _wavelength_unit(hdul["WAVELA"].header, wave)
                fibres = read_fits_table(hdul["FIBRES"])
    except KspecFluxcalError:
        raise
    except AstropyUserWarning as exc:
        raise RedFileError(
            f"{path.name} is truncated or damaged ({' '.join(str(exc).split())}); restore it from the reduction."
        ) from exc
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
    lo, hi = float(wave2d.min()), float(wave2d.max())
    if lo < PLAUSIBLE_WAVELENGTHS[0] or hi > PLAUSIBLE_WAVELENGTHS[1]:
        raise RedFileError(
            f"WAVELA spans {lo:.6g}–{hi:.6g} Å when read in {wave_unit} ({unit_source}), outside the plausible "
            f"{PLAUSIBLE_WAVELENGTHS[0]:.0f}–{PLAUSIBLE_WAVELENGTHS[1]:.0f} Å; set WAVELA's BUNIT to the unit of "
            "its values (Angstrom, nm or um)."
        )
    try:
        kind = None if header.get("FLUXCAL") else "counts"  # a calibrated frame is read in its flux unit
        counts_unit, assumed = header_unit(header, "BUNIT", default="ct", kind=kind, name="PRIMARY")
    except InputDataError as exc:
        raise RedFileError(f"{path.name}: {exc}") from exc
    return RedFrame(counts, variance, np.array(wave2d), fibres, header, counts_unit, unit_assumed=assumed)


def _image(hdu, name, path):
    if hdu.data is None:
        raise RedFileError(f"{name} of {path.name} holds no data.")
    return np.asarray(hdu.data, dtype=float)
