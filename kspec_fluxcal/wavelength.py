"""Wavelengths: validation, air ↔ vacuum, and grids uniform in ln λ.

Inside the package wavelengths are in Å **in air** (IAU convention: air
above 2000 Å, vacuum below). Vacuum inputs (CALSPEC spectra, filter curves)
are converted explicitly with `vacuum_to_air`, never silently.
"""

import numpy as np
from astropy import units as u

from .exceptions import InputDataError

__all__ = [
    "as_wavelength",
    "vacuum_to_air",
    "air_to_vacuum",
    "refraction_index",
    "log_uniform_grid",
    "common_log_grid",
    "interpolate_masked",
]


def as_wavelength(value, name="wavelength"):
    """Return ``value`` as a float64 array in Å, checking it is an increasing 1-D wavelength grid.

    Plain arrays are taken as Å. nm and µm are converted; pixels, frequencies
    and other units raise `~kspec_fluxcal.InputDataError`.
    """
    if isinstance(value, u.Quantity):
        if value.unit == u.pix or value.unit.physical_type != "length":
            raise InputDataError(
                f"{name} has unit '{value.unit}', which is not a wavelength; "
                "give wavelengths in Å, nm or µm (a pixel axis needs a wavelength "
                "solution first)."
            )
        value = value.to_value(u.AA)
    arr = np.asarray(value, dtype=float)
    if arr.ndim != 1 or arr.size < 2:
        raise InputDataError(
            f"{name} must be a 1-D array of at least 2 wavelengths; got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise InputDataError(
            f"{name} holds {np.count_nonzero(~np.isfinite(arr))} non-finite values; "
            "every wavelength must be finite."
        )
    if np.any(np.diff(arr) <= 0):
        raise InputDataError(
            f"{name} must increase strictly; reverse decreasing arrays (and their "
            "fluxes) before building the spectrum."
        )
    return arr


def as_wavelength_quantity(value, name="wavelength"):
    """``value`` as a wavelength `~astropy.units.Quantity` of any shape (plain numbers are Å)."""
    if isinstance(value, u.Quantity):
        if value.unit.physical_type != "length":
            raise InputDataError(f"{name} has unit '{value.unit}', which is not a wavelength.")
        return value
    return np.asarray(value, dtype=float) * u.AA


AIR_VACUUM_LIMIT = 2000.0
"""Below this wavelength (Å) air and vacuum wavelengths are the same (IAU convention)."""


def refraction_index(vac_aa):
    """Refractive index of standard dry air at vacuum wavelengths ``vac_aa`` (Å; Morton 2000, ApJS 130, 403, eq. 8).

    The formula of ``specutils.utils.wcs_utils.refraction_index(method='Morton2000')``, written out so that
    converting wavelengths does not import specutils.
    """
    sigma2 = (1e4 / np.asarray(vac_aa, dtype=float)) ** 2  # (1/µm)²
    return 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - sigma2) + 1.5998e-4 / (38.9 - sigma2)


def vacuum_to_air(wavelength):
    """Vacuum → air wavelengths (Morton 2000, ApJS 130, 403, eq. 8, as in specutils).

    Wavelengths below 2000 Å are returned unchanged (IAU convention). A grid
    crossing 2000 Å therefore steps back by ≈0.65 Å there and may stop
    increasing; trim such grids to ≥ 2000 Å first.

    Parameters
    ----------
    wavelength : `~astropy.units.Quantity` or array_like
        Vacuum wavelengths (plain numbers are Å).

    Returns
    -------
    `~astropy.units.Quantity`
        Air wavelengths in the unit of the input (Å for plain numbers).

    Examples
    --------
    >>> vacuum_to_air(6564.61 * u.AA)  # Hα
    <Quantity 6562.79... Angstrom>
    """
    wave = as_wavelength_quantity(wavelength, "wavelength")
    vac = np.atleast_1d(wave.to_value(u.AA)).astype(float)
    air = vac.copy()
    sel = np.isfinite(vac) & (vac >= AIR_VACUUM_LIMIT)
    if np.any(sel):
        air[sel] = vac[sel] / refraction_index(vac[sel])
    air = air.reshape(np.shape(wave.value))
    return (air * u.AA).to(wave.unit)


def air_to_vacuum(wavelength):
    """Air → vacuum wavelengths, the inverse of `vacuum_to_air` to ≲1e-12.

    Solves λ_vac = λ_air · n(λ_vac) by fixed-point iteration with the Morton
    (2000) index; results below 2000 Å (vacuum) are left unchanged.

    Parameters
    ----------
    wavelength : `~astropy.units.Quantity` or array_like
        Air wavelengths (plain numbers are Å).

    Returns
    -------
    `~astropy.units.Quantity`
        Vacuum wavelengths in the unit of the input (Å for plain numbers).

    Examples
    --------
    >>> air_to_vacuum(6562.79 * u.AA)
    <Quantity 6564.60... Angstrom>
    """
    wave = as_wavelength_quantity(wavelength, "wavelength")
    air = np.atleast_1d(wave.to_value(u.AA)).astype(float)
    vac = air.copy()
    sel = np.isfinite(air) & (air >= AIR_VACUUM_LIMIT / 1.001)
    if np.any(sel):
        guess = air[sel] * refraction_index(air[sel])
        for _ in range(4):
            guess = air[sel] * refraction_index(guess)
        vac[sel] = np.where(guess >= AIR_VACUUM_LIMIT, guess, air[sel])
    vac = vac.reshape(np.shape(wave.value))
    return (vac * u.AA).to(wave.unit)


def log_uniform_grid(start, stop, step, include_stop=False):
    """Wavelengths (Å) uniform in ln λ from ``start`` towards ``stop``.

    Parameters
    ----------
    start, stop : float
        First wavelength and the upper end (Å).
    step : float
        Step in ln λ.
    include_stop : bool, optional
        False: the step is exactly ``step`` and the grid ends at the last
        point ≤ ``stop``. True: the grid runs from ``start`` to ``stop``
        inclusive with the fewest points whose step does not exceed ``step``.

    Examples
    --------
    >>> log_uniform_grid(4000.0, 4001.0, 1e-4).round(3).tolist()
    [4000.0, 4000.4, 4000.8]
    >>> log_uniform_grid(4000.0, 4001.0, 1e-4, include_stop=True).size
    4
    """
    span = np.log(stop / start)
    if include_stop:
        return np.exp(np.linspace(np.log(start), np.log(stop), int(np.ceil(span / step - 1e-9)) + 1))
    return start * np.exp(step * np.arange(int(np.floor(span / step + 1e-9)) + 1))


def common_log_grid(wavelengths):
    """A grid uniform in ln λ spanning every row of ``wavelengths`` (Å) with their median ln λ step.

    ``wavelengths`` is a sequence of increasing arrays (fibers of a frame,
    frames of a night); the grid runs from the smallest first to the largest
    last wavelength.
    """
    rows = [np.asarray(w, dtype=float) for w in wavelengths]
    step = float(np.median(np.concatenate([np.diff(np.log(w)) for w in rows])))
    return log_uniform_grid(min(w[0] for w in rows), max(w[-1] for w in rows), step, include_stop=True)


def interpolate_masked(wave_out, wave_in, arrays, bad):
    """Linear interpolation of masked samples onto other wavelengths.

    Parameters
    ----------
    wave_out : array_like
        Target wavelengths (Å), any shape.
    wave_in : ndarray, shape (n,)
        Increasing sample wavelengths (Å).
    arrays : sequence of ndarray, shape (n,)
        Values at ``wave_in``.
    bad : ndarray of bool, shape (n,)
        Bad samples (True = bad); non-finite values count as bad too.

    Returns
    -------
    values : list of ndarray
        The interpolated arrays, shaped as ``wave_out`` (meaningful where not ``out_bad``).
    out_bad : ndarray of bool
        Targets that touch a bad sample, lie outside ``wave_in`` or are not finite.

    Examples
    --------
    >>> (y,), out_bad = interpolate_masked([1.5, 2.5, 4.0], np.array([1.0, 2.0, 3.0]),
    ...                                    [np.array([1.0, 2.0, 3.0])], np.array([False, False, True]))
    >>> y[0], out_bad.tolist()
    (np.float64(1.5), [False, True, True])
    """
    wave_out = np.asarray(wave_out, dtype=float)
    flat = wave_out.ravel()
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    bad = np.asarray(bad, dtype=bool) | np.any([~np.isfinite(a) for a in arrays], axis=0)
    with np.errstate(invalid="ignore"):
        values = [np.interp(flat, wave_in, np.where(bad, 0.0, a)).reshape(wave_out.shape) for a in arrays]
        out_bad = np.interp(flat, wave_in, bad.astype(float)) > 0
    out_bad |= (flat < wave_in[0]) | (flat > wave_in[-1]) | ~np.isfinite(flat)
    return values, out_bad.reshape(wave_out.shape)
