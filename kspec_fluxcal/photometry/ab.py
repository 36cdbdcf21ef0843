"""AB magnitudes and flux densities.

.. math:: m_{AB} = -2.5\\log_{10} f_\\nu - 48.60

with f_ν in erg s⁻¹ cm⁻² Hz⁻¹ (Oke & Gunn 1983); f_λ in erg s⁻¹ cm⁻² Å⁻¹.
"""

import math

import numpy as np
from astropy import units as u

from ..containers import FLAM
from ..exceptions import InputDataError

__all__ = ["ab_mag_to_fnu", "fnu_to_ab_mag", "ab_mag_to_flam"]

C_AA_PER_S = 2.99792458e18
"""Speed of light in Å s⁻¹."""

AB_ZERO_POINT = 48.60
"""m_AB = -2.5 log10(f_ν / erg s⁻¹ cm⁻² Hz⁻¹) - 48.60 (Oke & Gunn 1983)."""

FNU = u.erg / (u.s * u.cm**2 * u.Hz)


def _mag_value(mag, name):
    if isinstance(mag, u.Quantity):
        if mag.unit in (u.mag, u.ABmag, u.dimensionless_unscaled):
            return np.asarray(mag.value, dtype=float)
        raise InputDataError(f"{name} has unit '{mag.unit}'; give AB magnitudes (u.ABmag, u.mag or floats).")
    return np.asarray(mag, dtype=float)


def _fnu_value(fnu, name):
    if not isinstance(fnu, u.Quantity):
        raise InputDataError(f"{name} needs a unit; give a Quantity in erg s⁻¹ cm⁻² Hz⁻¹ or Jy.")
    try:
        return np.asarray(fnu.to_value(FNU), dtype=float)
    except u.UnitConversionError as exc:
        raise InputDataError(
            f"{name} has unit '{fnu.unit}', which is not a frequency flux density (erg s⁻¹ cm⁻² Hz⁻¹, Jy)."
        ) from exc


def ab_mag_to_fnu(mag, mag_err=None):
    """AB magnitude → f_ν.

    Parameters
    ----------
    mag : float, array_like or `~astropy.units.Quantity` (mag or ABmag)
        AB magnitude(s).
    mag_err : same as ``mag``, optional
        1σ magnitude error(s).

    Returns
    -------
    fnu : `~astropy.units.Quantity`
        Flux density in erg s⁻¹ cm⁻² Hz⁻¹; with ``mag_err`` a tuple
        ``(fnu, fnu_err)``, the error propagated to first order,
        σ_f = 0.4 ln(10) f σ_m.

    Examples
    --------
    >>> f = ab_mag_to_fnu(0.0)
    >>> round(f.to_value(u.Jy))
    3631
    """
    m = _mag_value(mag, "mag")
    fnu = 10.0 ** (-0.4 * (m + AB_ZERO_POINT)) * FNU
    if mag_err is None:
        return fnu
    err = _mag_value(mag_err, "mag_err")
    return fnu, 0.4 * math.log(10.0) * fnu * err


def ab_mag_of_fnu_values(fnu):
    """AB magnitudes of plain f_ν values in erg s⁻¹ cm⁻² Hz⁻¹ (NaN where f_ν ≤ 0), for hot loops.

    Examples
    --------
    >>> print(f"{ab_mag_of_fnu_values(1e-23):.3f}")
    8.900
    """
    f = np.asarray(fnu, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, -2.5 * np.log10(np.where(f > 0, f, 1.0)) - AB_ZERO_POINT, np.nan)


def fnu_to_ab_mag(fnu, fnu_err=None):
    """f_ν → AB magnitude.

    Parameters
    ----------
    fnu : `~astropy.units.Quantity`
        Flux density in any f_ν unit (erg s⁻¹ cm⁻² Hz⁻¹, Jy, …).
    fnu_err : `~astropy.units.Quantity`, optional
        1σ error of ``fnu``.

    Returns
    -------
    mag : `~astropy.units.Quantity`
        AB magnitude (unit ``u.ABmag``; NaN where f_ν ≤ 0); with ``fnu_err`` a
        tuple ``(mag, mag_err)``, ``mag_err`` in ``u.mag``,
        σ_m = 2.5/ln(10) σ_f / f.

    Examples
    --------
    >>> print(f"{fnu_to_ab_mag(1 * u.Jy).value:.3f}")
    8.900
    """
    f = _fnu_value(fnu, "fnu")
    mag = ab_mag_of_fnu_values(f)
    with np.errstate(divide="ignore", invalid="ignore"):
        if fnu_err is None:
            return mag * u.ABmag
        err = _fnu_value(fnu_err, "fnu_err")
        return mag * u.ABmag, np.where(f > 0, 2.5 / math.log(10.0) * err / f, np.nan) * u.mag


def ab_mag_to_flam(mag, wavelength, mag_err=None):
    """AB magnitude → f_λ at ``wavelength``.

    Parameters
    ----------
    mag : float, array_like or `~astropy.units.Quantity`
        AB magnitude(s).
    wavelength : `~astropy.units.Quantity` or array_like
        Wavelength(s) (plain numbers are Å).
    mag_err : optional
        1σ magnitude error(s).

    Returns
    -------
    flam : `~astropy.units.Quantity`
        f_λ = f_ν c / λ² in erg s⁻¹ cm⁻² Å⁻¹; with ``mag_err`` a tuple
        ``(flam, flam_err)``.

    Examples
    --------
    >>> ab_mag_to_flam(0.0, 5500 * u.AA)
    <Quantity 3.598...e-09 erg / (Angstrom s cm2)>
    """
    wave = wavelength.to_value(u.AA) if isinstance(wavelength, u.Quantity) else np.asarray(wavelength, float)
    factor = C_AA_PER_S / wave**2 * (FLAM / FNU)
    if mag_err is None:
        return (ab_mag_to_fnu(mag) * factor).to(FLAM)
    fnu, err = ab_mag_to_fnu(mag, mag_err)
    return (fnu * factor).to(FLAM), (err * factor).to(FLAM)
