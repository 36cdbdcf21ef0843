"""Quantities at the public boundary: one helper that reads a Quantity or a bare number in its documented unit."""

import numpy as np
from astropy import units as u

from .exceptions import InputDataError

__all__ = ["value_in"]


def value_in(value, unit, name):
    """``value`` as a plain number (or array) in ``unit``.

    Parameters
    ----------
    value : `~astropy.units.Quantity`, float or array_like
        A Quantity (converted to ``unit``) or a bare number, taken to be in
        ``unit`` already (the documented unit of the parameter).
    unit : `~astropy.units.UnitBase` or str
        The parameter's documented unit, e.g. ``u.AA`` or ``u.arcsec``.
    name : str
        The parameter's name, for the message.

    Returns
    -------
    float or ndarray

    Raises
    ------
    InputDataError
        ``value`` is a Quantity whose unit does not convert to ``unit``.

    Examples
    --------
    >>> from astropy import units as u
    >>> value_in(0.05 * u.arcmin, u.arcsec, "max_sep"), value_in(2.5, u.AA, "fwhm")
    (3.0, 2.5)
    """
    unit = u.Unit(unit)
    if isinstance(value, u.Quantity):
        try:
            converted = value.to_value(unit)
        except u.UnitConversionError as exc:
            raise InputDataError(
                f"{name} is given in '{value.unit}', which does not convert to '{unit}'; give it in {unit} "
                f"(a bare number is taken as {unit})."
            ) from exc
        return float(converted) if np.ndim(converted) == 0 else converted
    return value
