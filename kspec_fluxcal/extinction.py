"""Interstellar reddening laws, through the `dust_extinction` package.

`dust_extinction` is the astropy-affiliated standard for extinction curves;
the package uses Fitzpatrick (1999) with R_V = 3.1 by default, the law behind
the Schlafly & Finkbeiner (2011) recalibration of SFD reddening.

Each law is tabulated once and the table kept in the package cache
(`kspec_fluxcal.cache`, keyed by the `dust_extinction` version), so a later
process reads 20 000 numbers instead of importing `dust_extinction` and
astropy's modeling.
"""

import functools
import logging

import numpy as np
from astropy import units as u

from .cache import cache_dir, fingerprint, installed_version, load_arrays, save_arrays
from .exceptions import CacheError, InputDataError

__all__ = ["EXTINCTION_LAWS", "extinction_per_ebv", "reddening_factor"]

log = logging.getLogger(__name__)

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
    wave = np.asarray(u.Quantity(wavelength, u.AA).to_value(u.AA), dtype=float)
    ln_wave, curve = _tabulated(law, float(r_v))
    return np.interp(np.log(wave), ln_wave, curve)


_TABLE_VERSION = 1
"""Bump when the tabulation of `_law_table` changes."""


def _law_table(law, r_v):
    """The law on 20 000 points uniform in ln λ over 500 Å–50 µm (interpolation error < 1e-6)."""
    model = _law(law, r_v)
    x_lo, x_hi = model.x_range
    ln_wave = np.linspace(np.log(500.0), np.log(5e5), 20000)
    x = np.clip(1e4 / np.exp(ln_wave), x_lo, x_hi)
    return ln_wave, np.asarray(model(x / u.micron), dtype=float) * r_v


@functools.lru_cache(maxsize=16)
def _tabulated(law, r_v):
    """`_law_table`, read from the package cache when an earlier process tabulated it.

    Evaluating the astropy model costs milliseconds per call; the calibration
    of every star needs it on its own pixels, so it is tabulated once, and
    the table is kept on disk so that a new process imports no model.
    """
    if law not in EXTINCTION_LAWS:
        _law(law, r_v)  # raises the package's error for an unknown law
    folder = cache_dir("extinction", fingerprint(_TABLE_VERSION, installed_version("dust_extinction"), law, r_v))
    try:
        arrays, _ = load_arrays(folder, mmap=False)
        return arrays["ln_wave"], arrays["curve"]
    except (CacheError, KeyError):
        pass
    ln_wave, curve = _law_table(law, r_v)
    try:
        save_arrays(folder, {"ln_wave": ln_wave, "curve": curve}, meta={"law": law, "r_v": r_v})
    except OSError as exc:  # a read-only cache: the next process tabulates again
        log.debug("cannot cache the %s extinction table: %s", law, exc)
    return ln_wave, curve


def reddening_factor(wavelength, ebv, law="F99", r_v=3.1):
    """Flux transmission 10^(−0.4·E(B−V)·A(λ)/E(B−V)); ``ebv`` may be an array (broadcast last)."""
    k = extinction_per_ebv(wavelength, law, r_v)
    ebv = np.asarray(ebv, dtype=float)
    return 10.0 ** (-0.4 * np.multiply.outer(ebv, k)) if ebv.ndim else 10.0 ** (-0.4 * ebv * k)
