"""FITS units as astronomers write them: one parser for every reader.

Reductions write ``BUNIT = 'counts'``, ``'Counts'``, ``'e-/s'``, ``'ADU'``,
and wavelength units such as ``'Angstroms'`` or ``'A'`` — none of which the
FITS standard (or astropy's FITS unit parser) accepts. `parse_unit` reads
them all: each word of the string is looked up, case-insensitively, in a
table of spellings (`UNIT_ALIASES`, and `WAVELENGTH_ALIASES` when the
unit is a wavelength), and what remains is parsed by astropy. ``'A'`` means
Ångström only for wavelengths; elsewhere it stays the ampere.

`header_unit` reads a header's ``BUNIT`` with a default for a missing one
(and warns once with `~kspec_fluxcal.MissingUnitWarning`), and
`read_fits_table` reads a FITS table whose ``TUNITn`` use such spellings
(e.g. ``'micron'`` for focal-plane positions) without astropy's
``UnitsWarning``.
"""

import re
import warnings

from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from ..exceptions import InputDataError, MissingUnitWarning

__all__ = [
    "UNIT_ALIASES",
    "WAVELENGTH_ALIASES",
    "COUNTING_UNITS",
    "parse_unit",
    "header_unit",
    "counting_unit",
    "read_fits_table",
    "fits_unit_string",
    "table_to_fits_hdu",
]

UNIT_ALIASES = {
    "counts": "ct",
    "count": "ct",
    "cts": "ct",
    "ct": "ct",
    "electrons": "electron",
    "electron": "electron",
    "e-": "electron",
    "e": "electron",
    "adu": "adu",
    "adus": "adu",
    "dn": "DN",
    "photons": "ph",
    "photon": "ph",
    "micron": "um",
    "microns": "um",
    "sec": "s",
}
"""Spellings (lower case) of counting units, micron and sec → the astropy unit string; used for every unit."""

WAVELENGTH_ALIASES = {
    "angstrom": "Angstrom",
    "angstroms": "Angstrom",
    "a": "Angstrom",
    "aa": "Angstrom",
    "nm": "nm",
    "nanometer": "nm",
    "nanometers": "nm",
    "um": "um",
    "micron": "um",
    "microns": "um",
    "micrometer": "um",
    "micrometers": "um",
}
"""Spellings (lower case) of wavelength units → the astropy unit string; used when a wavelength is expected."""

COUNTING_UNITS = (u.ct, u.electron, u.adu, u.DN, u.ph)
"""The units a frame's counts may be in (each alone or per second)."""

_WORD = re.compile(r"[A-Za-z]+-?(?![0-9])")
"""A unit word: letters, with the trailing '-' of 'e-' but not the minus of an exponent ('s-1')."""


def parse_unit(text, kind=None, name="unit"):
    """Read a unit string as written in FITS headers in the wild.

    Parameters
    ----------
    text : str or `~astropy.units.UnitBase`
        The unit, e.g. ``'counts'``, ``'e-/s'``, ``'ADU'``, ``'Angstroms'``,
        ``'erg / (Angstrom s cm2)'``. A unit object is returned as it is.
    kind : {None, 'wavelength', 'counts'}, optional
        What the unit must be: ``'wavelength'`` also reads ``'A'`` as Ångström
        and requires a length; ``'counts'`` requires one of `COUNTING_UNITS`,
        alone or per second.
    name : str
        What the unit belongs to (e.g. ``"PRIMARY BUNIT"``), for messages.

    Returns
    -------
    `~astropy.units.UnitBase`

    Raises
    ------
    InputDataError
        The string is empty or unreadable, or the unit is not of ``kind``.
    """
    if isinstance(text, u.UnitBase):
        unit = text
    else:
        text = str(text).strip()
        if not text:
            raise InputDataError(f"{name} is empty; write the unit, e.g. 'ct', 'electron / s' or 'Angstrom'.")
        aliases = {**UNIT_ALIASES, **WAVELENGTH_ALIASES} if kind == "wavelength" else UNIT_ALIASES
        spelled = _WORD.sub(lambda m: aliases.get(m.group(0).lower(), m.group(0)), text)
        try:
            unit = u.Unit(spelled)
        except ValueError as exc:
            raise InputDataError(
                f"{name} '{text}' is not a unit kspec_fluxcal reads; write it as astropy does, e.g. 'ct', "
                "'ct / s', 'electron', 'adu' or 'Angstrom'."
            ) from exc
    if kind == "wavelength" and unit.physical_type != "length":
        raise InputDataError(f"{name} '{text}' is not a wavelength unit; use Angstrom, nm or um.")
    if kind == "counts":
        counting_unit(unit, name=name)
    return unit


def counting_unit(unit, name="unit"):
    """Split a counts unit into its counting unit and whether it is a rate.

    Parameters
    ----------
    unit : `~astropy.units.UnitBase`
        E.g. ``ct``, ``electron / s``, ``adu``.
    name : str
        What the unit belongs to, for messages.

    Returns
    -------
    base : `~astropy.units.UnitBase`
        One of `COUNTING_UNITS`.
    rate : bool
        True for a unit per second.

    Raises
    ------
    InputDataError
        ``unit`` is neither a counting unit nor one per second.
    """
    unit = u.Unit(unit)
    for base in COUNTING_UNITS:
        if unit.is_equivalent(base):
            return base, False
        if unit.is_equivalent(base / u.s):
            return base, True
    raise InputDataError(
        f"{name} '{unit}' is not a number of counts (ct, electron, adu, DN, ph) nor counts per second; "
        "the frame must hold uncalibrated counts."
    )


def header_unit(header, key="BUNIT", default=None, kind=None, name=None):
    """The unit in ``header[key]``, or ``default`` (with a warning) when the key is absent or blank.

    Parameters
    ----------
    header : `~astropy.io.fits.Header` or dict
        The header.
    key : str
        The keyword holding the unit.
    default : str or `~astropy.units.UnitBase`, optional
        Assumed when the keyword is missing; None makes a missing unit an error.
    kind : {None, 'wavelength', 'counts'}
        See `parse_unit`.
    name : str, optional
        What the header belongs to (e.g. ``"PRIMARY"``), for messages.

    Returns
    -------
    unit : `~astropy.units.UnitBase`
    assumed : bool
        True when ``default`` was used; a `~kspec_fluxcal.MissingUnitWarning`
        has been issued then.
    """
    label = f"{name} {key}" if name else key
    value = header.get(key)
    if value is None or not str(value).strip():
        if default is None:
            raise InputDataError(f"{label} is missing; write the unit of the data into it.")
        unit = parse_unit(default, kind=kind, name=label)
        warnings.warn(
            MissingUnitWarning(f"{label} is missing; '{unit}' is assumed (write {key} to silence this)."),
            stacklevel=2,
        )
        return unit, True
    return parse_unit(value, kind=kind, name=label), False


def read_fits_table(hdu):
    """A FITS table HDU as an `~astropy.table.Table`, its ``TUNITn`` read with `parse_unit`.

    Spellings that the FITS standard lacks (``'micron'``, ``'counts'``) become
    units without astropy's ``UnitsWarning``; a column unit that is still
    unreadable is dropped with a `~kspec_fluxcal.MissingUnitWarning` naming it.
    """
    table = Table.read(hdu, unit_parse_strict="silent")
    for column in table.itercols():
        if isinstance(column.unit, u.UnrecognizedUnit):
            try:
                column.unit = parse_unit(column.unit.to_string(), name=f"column {column.name} unit")
            except InputDataError as exc:
                column.unit = None
                warnings.warn(MissingUnitWarning(f"{exc} The column is read without a unit."), stacklevel=2)
    return table


def fits_unit_string(unit):
    """A unit as a FITS header string: its FITS spelling when it has one, else astropy's generic one.

    Units the FITS standard lacks (``electron``, ``DN``) are written in the
    generic form, which `parse_unit` (and so every reader of this package)
    reads back.
    """
    unit = u.Unit(unit)
    try:
        return unit.to_string("fits")
    except ValueError:
        return unit.to_string()


def table_to_fits_hdu(table, name=None):
    """A table as a `~astropy.io.fits.BinTableHDU` whose ``TUNITn`` are written with `fits_unit_string`.

    Unlike `astropy.io.fits.table_to_hdu`, a unit without a FITS spelling
    (e.g. erg s⁻¹ cm⁻² Å⁻¹ per electron) is kept, not dropped with a warning;
    read such tables with `read_fits_table`.
    """
    plain = table.copy(copy_data=False)
    units = {}
    for column in plain.itercols():
        if column.unit is not None:
            units[column.name] = column.unit
            column.unit = None
    hdu = fits.table_to_hdu(plain)
    for i, colname in enumerate(plain.colnames, start=1):
        if colname in units:
            hdu.header[f"TUNIT{i}"] = fits_unit_string(units[colname])
    if name:
        hdu.name = name
    return hdu
