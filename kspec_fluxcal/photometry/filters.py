"""The filter registry: synphot bandpasses of the survey bands and your own.

Built-in bands come from the transmission curves speclite ships (Pan-STARRS1,
Gaia DR2/DR3, 2MASS, SDSS); each family's Vega → AB offsets are published
constants cited beside the numbers. Curves tabulated in vacuum are converted
to air with `~kspec_fluxcal.wavelength.vacuum_to_air` when they are
registered.

A built-in curve is read from speclite once: its air-wavelength arrays are
kept in the package cache (`kspec_fluxcal.cache`, keyed by the speclite
version), so the calibration of a later process needs neither speclite nor
synphot (`band_arrays`, `band_vega_to_ab`).
"""

import functools
import logging
from pathlib import Path

import numpy as np
from astropy import units as u

from ..cache import cache_dir, fingerprint, installed_version, load_arrays, save_arrays
from ..containers import FilterCurve
from ..exceptions import CacheError, InputDataError, UnknownBandError
from ..io.text import read_columns
from ..wavelength import as_wavelength_quantity, vacuum_to_air
from .ab import C_AA_PER_S

__all__ = [
    "REGISTERED_BANDS",
    "registered_bands",
    "load_filter_curve",
    "load_filter_curves",
    "register_filter",
    "unregister_filter",
    "band_support",
    "band_vega_to_ab",
]

log = logging.getLogger(__name__)


# Vega → AB offsets, m_AB − m_Vega (mag), one source per number.
# Gaia: offset = ZP_AB − ZP_Vega of the zero points published with each passband set.
GAIA_DR2_VEGA_TO_AB = {
    # Revised DR2 passbands and zero points (Maíz Apellániz & Weiler 2018), ESA page
    # https://www.cosmos.esa.int/web/gaia/iow_20180316 — the curves speclite ships as gaiadr2-*.
    "G": 25.7916 - 25.6914,  # ZP_AB 25.7916, ZP_Vega 25.6914 → +0.1002
    "BP": 25.3862 - 25.3488,  # ZP_AB 25.3862, ZP_Vega 25.3488 → +0.0374
    "RP": 25.1162 - 24.7627,  # ZP_AB 25.1162, ZP_Vega 24.7627 → +0.3535
}

GAIA_DR3_VEGA_TO_AB = {
    # Gaia (E)DR3 passbands: Riello et al. 2021, A&A 649, A3, Table 3 (zero points).
    "G": 25.8010 - 25.6874,  # → +0.1136
    "BP": 25.3540 - 25.3385,  # → +0.0155
    "RP": 25.1040 - 24.7479,  # → +0.3561
}

TWOMASS_VEGA_TO_AB = {
    # Blanton & Roweis 2007, AJ 133, 734, Table 1 (m_AB − m_Vega).
    "J": 0.91,
    "H": 1.39,
    "Ks": 1.85,
}

SDSS_AB_NOTE = (
    "SDSS magnitudes are close to AB; per the SDSS DR documentation (Fukugita et al. 1996 "
    "system) u_AB = u_SDSS − 0.04 and z_AB = z_SDSS + 0.02 — apply these to catalogue "
    "u and z yourself; the registry keeps system 'AB' with vega_to_ab = 0."
)

_FAMILIES = {
    # name prefix: (speclite group, bands, system, offsets, medium, source)
    "ps1": (
        "panstarrs",
        ("g", "r", "i", "z", "y"),
        "AB",
        None,
        "vacuum",
        "Pan-STARRS1 (Tonry et al. 2012, ApJ 750, 99) via speclite panstarrs-*; AB system; "
        "tabulated wavelengths taken as vacuum and converted to air.",
    ),
    "gaia": (
        "gaiadr2",
        ("G", "BP", "RP"),
        "Vega",
        GAIA_DR2_VEGA_TO_AB,
        "vacuum",
        "Gaia DR2 revised passbands (Maíz Apellániz & Weiler 2018; ESA iow_20180316) via "
        "speclite gaiadr2-*; Vega system, m_AB − m_Vega = ZP_AB − ZP_Vega from the same page; "
        "vacuum converted to air.",
    ),
    "gaia3": (
        "gaiadr3",
        ("G", "BP", "RP"),
        "Vega",
        GAIA_DR3_VEGA_TO_AB,
        "vacuum",
        "Gaia (E)DR3 passbands (Riello et al. 2021, A&A 649, A3) via speclite gaiadr3-*; Vega "
        "system, m_AB − m_Vega = ZP_AB − ZP_Vega (Riello et al. 2021 Table 3); vacuum converted "
        "to air.",
    ),
    "2mass": (
        "twomass",
        ("J", "H", "Ks"),
        "Vega",
        TWOMASS_VEGA_TO_AB,
        "vacuum",
        "2MASS relative spectral responses (Cohen, Wheaton & Megeath 2003) via speclite "
        "twomass-*, used as photon-counting curves; Vega system, m_AB − m_Vega from Blanton & "
        "Roweis 2007; vacuum converted to air.",
    ),
    "sdss": (
        "sdss2010",
        ("u", "g", "r", "i", "z"),
        "AB",
        None,
        "vacuum",
        "SDSS 2.5 m responses at airmass 1.3 (Doi et al. 2010, AJ 139, 1628) via speclite "
        "sdss2010-*; taken as vacuum and converted to air. " + SDSS_AB_NOTE,
    ),
}


def _builtin_specs():
    specs = {}
    for prefix, (group, bands, system, offsets, medium, source) in _FAMILIES.items():
        for band in bands:
            name = f"{prefix}_{band.lower()}"
            specs[name] = {
                "speclite": f"{group}-{band}",
                "system": system,
                "vega_to_ab": 0.0 if offsets is None else offsets[band],
                "medium": medium,
                "source": source,
            }
    return specs


_BUILTIN = _builtin_specs()

REGISTERED_BANDS = tuple(_BUILTIN)
"""Names of the built-in bands: PS1 grizy, Gaia DR2 and DR3 G/BP/RP, 2MASS JHKs, SDSS ugriz."""

_CUSTOM = {}

_CURVES = {}


def _taper_band_edges(wave, trans, name):
    """Trim a transmission curve to its non-zero part with one zero point at each end."""
    wave = np.asarray(wave, dtype=float)
    trans = np.asarray(trans, dtype=float)
    if wave.ndim != 1 or wave.shape != trans.shape or wave.size < 2:
        raise InputDataError(f"filter '{name}': wavelength and transmission must be 1-D arrays of equal length.")
    if not (np.all(np.isfinite(wave)) and np.all(np.isfinite(trans))):
        raise InputDataError(f"filter '{name}' holds non-finite values; remove them.")
    order = np.argsort(wave, kind="stable")
    wave, trans = wave[order], trans[order]
    if np.any(np.diff(wave) <= 0):
        raise InputDataError(f"filter '{name}' has repeated wavelengths; each wavelength must appear once.")
    if np.any(trans < 0):
        raise InputDataError(f"filter '{name}' has negative transmission; give values between 0 and 1.")
    nonzero = np.flatnonzero(trans > 0)
    if nonzero.size == 0:
        raise InputDataError(f"filter '{name}' has zero transmission everywhere.")
    first, last = nonzero[0], nonzero[-1]
    lo, hi = max(first - 1, 0), min(last + 1, wave.size - 1)
    wave, trans = wave[lo : hi + 1], trans[lo : hi + 1]
    if trans[0] != 0:
        step = wave[1] - wave[0] if wave.size > 1 else 1.0
        wave, trans = np.r_[wave[0] - step, wave], np.r_[0.0, trans]
    if trans[-1] != 0:
        step = wave[-1] - wave[-2] if wave.size > 1 else 1.0
        wave, trans = np.r_[wave, wave[-1] + step], np.r_[trans, 0.0]
    return wave, trans


def _make_curve(name, wave_aa, trans, medium, system, vega_to_ab, source):
    from synphot import SpectralElement
    from synphot.models import Empirical1D

    if medium not in ("air", "vacuum"):
        raise InputDataError(f"filter '{name}': medium must be 'air' or 'vacuum'; got {medium!r}.")
    wave_aa, trans = _taper_band_edges(wave_aa, trans, name)
    if medium == "vacuum":
        wave_aa = vacuum_to_air(wave_aa * u.AA).to_value(u.AA)
    bandpass = SpectralElement(Empirical1D, points=wave_aa * u.AA, lookup_table=trans, fill_value=0.0)
    return FilterCurve(name=name, bandpass=bandpass, system=system, vega_to_ab=vega_to_ab, source=source)


_CURVE_CACHE_VERSION = 1
"""Bump when what `_builtin_arrays` keeps of a speclite curve changes."""


def _speclite_arrays(name):
    """(wavelength Å air, transmission) of a built-in band read from speclite, tapered and converted to air."""
    import speclite.filters

    spec = _BUILTIN[name]
    response = speclite.filters.load_filter(spec["speclite"])
    wave = np.asarray(u.Quantity(response.wavelength, u.AA).to_value(u.AA), dtype=float)
    wave, trans = _taper_band_edges(wave, response.response, name)
    if spec["medium"] == "vacuum":
        wave = vacuum_to_air(wave * u.AA).to_value(u.AA)
    return wave, trans


@functools.cache
def _speclite_version():
    return installed_version("speclite")


@functools.lru_cache(maxsize=64)
def _builtin_arrays(name):
    """`_speclite_arrays` of a built-in band, kept in the package cache so that speclite is read once.

    The cache entry is keyed by the speclite version and the band's
    definition; a missing, stale or damaged entry is rebuilt from speclite.
    """
    spec = _BUILTIN[name]
    version = _speclite_version()
    folder = cache_dir("filters", fingerprint(_CURVE_CACHE_VERSION, version, spec["speclite"], spec["medium"]))
    try:
        arrays, _ = load_arrays(folder, mmap=False)
        return arrays["wave"], arrays["trans"]
    except (CacheError, KeyError):
        pass
    wave, trans = _speclite_arrays(name)
    try:
        save_arrays(folder, {"wave": wave, "trans": trans}, meta={"band": name, "speclite": version})
    except OSError as exc:  # a read-only cache: the next process reads speclite again
        log.debug("cannot cache the curve of %s: %s", name, exc)
    return wave, trans


def _load_builtin(name):
    spec = _BUILTIN[name]
    wave, trans = _builtin_arrays(name)
    return _make_curve(name, wave, trans, "air", spec["system"], spec["vega_to_ab"], spec["source"])


def band_vega_to_ab(name):
    """m_AB − m_Vega (mag) of a registered band, without loading its curve when it is built in.

    Raises
    ------
    UnknownBandError
        The name is not registered.

    Examples
    --------
    >>> round(band_vega_to_ab("2mass_j"), 2)
    0.91
    """
    if name in _CUSTOM or name not in _BUILTIN:
        return load_filter_curve(name).vega_to_ab
    return float(_BUILTIN[name]["vega_to_ab"])


def registered_bands():
    """Names of every registered band: the built-ins, then custom ones in registration order."""
    return REGISTERED_BANDS + tuple(n for n in _CUSTOM if n not in _BUILTIN)


def load_filter_curve(name):
    """The `~kspec_fluxcal.containers.FilterCurve` of a registered band (cached).

    Parameters
    ----------
    name : str
        A name from `registered_bands` (e.g. ``'ps1_g'``, ``'gaia_bp'``).

    Returns
    -------
    `~kspec_fluxcal.containers.FilterCurve`
        Bandpass on air wavelengths (Å), tapered to zero at both ends.

    Raises
    ------
    UnknownBandError
        The name is not registered; the message lists the known names.

    Examples
    --------
    >>> load_filter_curve("gaia_g").system
    'Vega'
    """
    if name in _CURVES:
        return _CURVES[name]
    if name in _CUSTOM:
        curve = _CUSTOM[name]
    elif name in _BUILTIN:
        curve = _load_builtin(name)
    else:
        raise UnknownBandError(
            f"unknown band {name!r}; known bands: {', '.join(registered_bands())}. "
            "Register others with kspec_fluxcal.photometry.register_filter."
        )
    _CURVES[name] = curve
    return curve


def load_filter_curves(names=None):
    """Several filter curves at once.

    Parameters
    ----------
    names : iterable of str, optional
        Band names; default `REGISTERED_BANDS`.

    Returns
    -------
    dict
        name → `~kspec_fluxcal.containers.FilterCurve`, in the order asked.
    """
    names = REGISTERED_BANDS if names is None else names
    return {name: load_filter_curve(name) for name in names}


def _read_filter_table(path, wavelength_unit):
    data = read_columns(path, "filter file", "two numeric columns, wavelength and transmission")
    return (data[:, 0] * u.Unit(wavelength_unit)).to_value(u.AA), data[:, 1]


def register_filter(
    name,
    path_or_table,
    system="AB",
    vega_to_ab=0.0,
    wavelength_unit="micron",
    medium="air",
    source="",
    overwrite=False,
):
    """Add a band to the registry.

    Parameters
    ----------
    name : str
        Registry name. An existing name needs ``overwrite=True`` (a custom
        band may shadow a built-in one; `unregister_filter` restores it).
    path_or_table : str, `~pathlib.Path` or (wavelength, transmission)
        A text file with two columns, wavelength and transmission (0–1),
        ``#`` comments; or a pair of arrays, the wavelength as a Quantity or
        plain numbers in ``wavelength_unit``.
    system : {'AB', 'Vega'}
        Native magnitude system of catalogue values in this band.
    vega_to_ab : float
        m_AB − m_Vega (mag) for Vega bands; 0 for AB bands.
    wavelength_unit : str or `~astropy.units.Unit`
        Unit of plain-number wavelengths; default µm (the ``data/filters/*.dat``
        format); ``'Angstrom'`` or ``'nm'`` also work.
    medium : {'air', 'vacuum'}
        Whether the wavelengths are in air or vacuum; vacuum ones are converted.
    source : str
        Provenance, kept on the curve.
    overwrite : bool
        Replace an existing registration.

    Returns
    -------
    `~kspec_fluxcal.containers.FilterCurve`
    """
    name = str(name)
    if not overwrite and (name in _CUSTOM or name in _BUILTIN):
        raise InputDataError(f"band {name!r} is registered already; pass overwrite=True to replace it.")
    if isinstance(path_or_table, (str, Path)):
        wave, trans = _read_filter_table(path_or_table, wavelength_unit)
        source = source or f"file {path_or_table}"
    else:
        try:
            wave, trans = path_or_table
        except (TypeError, ValueError) as exc:
            raise InputDataError("path_or_table must be a file path or a (wavelength, transmission) pair.") from exc
        wave = as_wavelength_quantity(
            wave if isinstance(wave, u.Quantity) else np.asarray(wave, float) * u.Unit(wavelength_unit), "wavelength"
        )
        wave = wave.to_value(u.AA)
        trans = np.asarray(getattr(trans, "value", trans), dtype=float)
    if np.nanmax(trans) > 1.0 + 1e-6:
        raise InputDataError(
            f"filter {name!r} has transmission up to {np.nanmax(trans):.3g}; give it as a fraction (0–1), not per cent."
        )
    curve = _make_curve(name, wave, trans, medium, system, vega_to_ab, source)
    _CUSTOM[name] = curve
    _CURVES.pop(name, None)
    _band_arrays_by_name.cache_clear()
    log.debug("registered band %s (%s, %s)", name, system, source)
    return curve


def unregister_filter(name):
    """Remove a custom band (a shadowed built-in band becomes visible again).

    Raises
    ------
    UnknownBandError
        ``name`` is not a custom registration (built-in bands cannot be removed).
    """
    if name not in _CUSTOM:
        raise UnknownBandError(f"{name!r} is not a custom band; custom bands: {', '.join(_CUSTOM) or 'none'}.")
    del _CUSTOM[name]
    _CURVES.pop(name, None)
    _band_arrays_by_name.cache_clear()


def _element_arrays(bandpass):
    from synphot.models import Empirical1D

    model = bandpass.model
    if isinstance(model, Empirical1D):
        wave = np.asarray(model.points[0], dtype=float)
        trans = np.asarray(model.lookup_table, dtype=float)
    else:
        waveset = bandpass.waveset
        if waveset is None:
            raise InputDataError("the bandpass has no tabulated wavelengths; sample it on a grid first.")
        wave = waveset.to_value(u.AA)
        trans = bandpass(waveset).value
    wave, trans = _taper_band_edges(wave, trans, "bandpass")
    return wave, trans, C_AA_PER_S * np.trapezoid(trans / wave, wave)


@functools.lru_cache(maxsize=256)
def _band_arrays_by_name(name):
    if name in _CUSTOM or name not in _BUILTIN:
        return _element_arrays(load_filter_curve(name).bandpass)
    wave, trans = _builtin_arrays(name)  # the curve's own arrays, without making its synphot bandpass
    return wave, trans, C_AA_PER_S * np.trapezoid(trans / wave, wave)


def band_arrays(band):
    """(wavelength Å air, transmission, c ∫T/λ dλ) of a band name, FilterCurve or SpectralElement."""
    if isinstance(band, str):
        return _band_arrays_by_name(band)
    if isinstance(band, FilterCurve):
        return _element_arrays(band.bandpass)
    from synphot import SpectralElement

    if isinstance(band, SpectralElement):
        return _element_arrays(band)
    raise InputDataError(
        f"band must be a registered name, a FilterCurve or a synphot SpectralElement; got {type(band).__name__}."
    )


def band_label(band):
    if isinstance(band, str):
        return band
    return getattr(band, "name", None) or type(band).__name__


def band_support(band):
    """(λ_min, λ_max) in Å (air) of the non-zero part of a band, as a Quantity.

    Examples
    --------
    >>> lo, hi = band_support("ps1_g")
    >>> bool(3800 < lo.value < 3900 and 5600 < hi.value < 5700)
    True
    """
    wave = band_arrays(band)[0]
    return u.Quantity([wave[0], wave[-1]], u.AA)
