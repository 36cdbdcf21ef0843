"""Interstellar reddening laws, through the `dust_extinction` package.

`dust_extinction` is the astropy-affiliated standard for extinction curves;
the package uses Fitzpatrick (1999) with R_V = 3.1 by default, the law behind
the Schlafly & Finkbeiner (2011) recalibration of SFD reddening.
"""

import functools

import numpy as np
from astropy import units as u

from .exceptions import InputDataError

__all__ = ["EXTINCTION_LAWS", "extinction_per_ebv", "reddening_factor"]

EXTINCTION_LAWS = ("F99", "G23", "CCM89", "O94", "F19")
"""Names of the `dust_extinction.parameter_averages` laws accepted here."""


@functools.lru_cache(maxsize=16)
def _law(name, r_v):
    from dust_extinction import parameter_averages

    if name not in EXTINCTION_LAWS:
        raise InputDataError(
            f"unknown extinction law {name!r}; choose one of {', '.join(EXTINCTION_LAWS)}."
        )
    return getattr(parameter_averages, name)(Rv=r_v)


def extinction_per_ebv(wavelength, law="F99", r_v=3.1):
    """A(λ)/E(B−V) = R_V · A(λ)/A(V) (mag per mag of colour excess).

    Parameters
    ----------
    wavelength : `~astropy.units.Quantity` or array_like
        Wavelengths (Å when plain). Outside the law's validity range the curve
        is held at its value at the nearest valid wavelength.
    law : str
        A law of `EXTINCTION_LAWS`.
    r_v : float
        Total-to-selective extinction ratio.

    Returns
    -------
    ndarray
        A(λ)/E(B−V), plain floats.

    Examples
    --------
    >>> round(float(extinction_per_ebv(5500.0)), 2)
    3.03
    """
    model = _law(law, float(r_v))
    wave = u.Quantity(wavelength, u.AA).to_value(u.AA)
    x_lo, x_hi = model.x_range
    x = np.clip(1e4 / np.asarray(wave, dtype=float), x_lo, x_hi)
    return np.asarray(model(x / u.micron), dtype=float) * float(r_v)


def reddening_factor(wavelength, ebv, law="F99", r_v=3.1):
    """Flux transmission 10^(−0.4·E(B−V)·A(λ)/E(B−V)); ``ebv`` may be an array (broadcast last)."""
    k = extinction_per_ebv(wavelength, law, r_v)
    ebv = np.asarray(ebv, dtype=float)
    return 10.0 ** (-0.4 * np.multiply.outer(ebv, k)) if ebv.ndim else 10.0 ** (-0.4 * ebv * k)
