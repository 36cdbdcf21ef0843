"""AB magnitudes, the filter registry, synthetic photometry and Teff from colour.

Conventions
-----------
* Wavelengths inside the package are in Å **in air** (IAU convention: air
  above 2000 Å, vacuum below). Filter curves tabulated in vacuum are
  converted explicitly with `vacuum_to_air` when they are registered.
* Synthetic magnitudes are **photon-counting AB magnitudes** (plain floats):

  .. math:: f_\\nu = \\frac{\\int f_\\lambda\\,T\\,\\lambda\\,d\\lambda}{\\int T\\,(c/\\lambda)\\,d\\lambda},
            \\qquad m_{AB} = -2.5\\log_{10} f_\\nu - 48.60

  with f_ν in erg s⁻¹ cm⁻² Hz⁻¹ and f_λ in erg s⁻¹ cm⁻² Å⁻¹.
* A spectrum that does not cover the whole non-zero part of a band gives NaN
  (with a `~kspec_fluxcal.PartialBandpassWarning`), never a partial integral.

Air or vacuum, family by family (the registry converts every vacuum curve):

* Gaia DR2/DR3: measured in space, tabulated in vacuum → converted.
* 2MASS (Cohen, Wheaton & Megeath 2003): infrared curves are tabulated in
  vacuum by convention → converted (shift ≈ 3–6 Å, < 0.3 mmag for stars).
* Pan-STARRS1 (Tonry et al. 2012) and SDSS (Doi et al. 2010): the papers do not
  state the medium explicitly; we follow the survey conventions (SDSS uses
  vacuum wavelengths throughout, PS1 was calibrated on vacuum CALSPEC spectra)
  and treat them as vacuum. The choice shifts the curves by 1–3 Å, which
  changes the synthetic magnitude of an F/G star by well under 1 mmag.
"""

import functools
import logging
import math
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u

from .containers import FLAM, FilterCurve, Photometry, _as_wavelength, validate_spectrum
from .exceptions import InputDataError, PartialBandpassWarning

__all__ = [
    "ab_mag_to_fnu",
    "fnu_to_ab_mag",
    "ab_mag_to_flam",
    "vacuum_to_air",
    "air_to_vacuum",
    "REGISTERED_BANDS",
    "registered_bands",
    "load_filter_curve",
    "load_filter_curves",
    "register_filter",
    "unregister_filter",
    "band_support",
    "band_flux_weights",
    "band_flux_matrix",
    "synthetic_photometry",
    "synthetic_color",
    "estimate_teff_from_color",
    "color_teff_table",
]

log = logging.getLogger(__name__)

C_AA_PER_S = 2.99792458e18
"""Speed of light in Å s⁻¹."""

AB_ZERO_POINT = 48.60
"""m_AB = -2.5 log10(f_ν / erg s⁻¹ cm⁻² Hz⁻¹) - 48.60 (Oke & Gunn 1983)."""

FNU = u.erg / (u.s * u.cm**2 * u.Hz)

AIR_VACUUM_LIMIT = 2000.0
"""Below this wavelength (Å) air and vacuum wavelengths are the same (IAU convention)."""

# ---------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------
# magnitudes and flux densities


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
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(f > 0, -2.5 * np.log10(np.where(f > 0, f, 1.0)) - AB_ZERO_POINT, np.nan)
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


# ---------------------------------------------------------------------------
# air and vacuum


def _wave_quantity(wavelength, name):
    if isinstance(wavelength, u.Quantity):
        if wavelength.unit.physical_type != "length":
            raise InputDataError(f"{name} has unit '{wavelength.unit}', which is not a wavelength.")
        return wavelength
    return np.asarray(wavelength, dtype=float) * u.AA


def _refraction_index(vac_aa):
    from specutils.utils.wcs_utils import refraction_index

    return refraction_index(vac_aa * u.AA, method="Morton2000")


def vacuum_to_air(wavelength):
    """Vacuum → air wavelengths (Morton 2000, ApJS 130, 403, eq. 8, via specutils).

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
    wave = _wave_quantity(wavelength, "wavelength")
    vac = np.atleast_1d(wave.to_value(u.AA)).astype(float)
    air = vac.copy()
    sel = np.isfinite(vac) & (vac >= AIR_VACUUM_LIMIT)
    if np.any(sel):
        air[sel] = vac[sel] / _refraction_index(vac[sel])
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
    wave = _wave_quantity(wavelength, "wavelength")
    air = np.atleast_1d(wave.to_value(u.AA)).astype(float)
    vac = air.copy()
    sel = np.isfinite(air) & (air >= AIR_VACUUM_LIMIT / 1.001)
    if np.any(sel):
        guess = air[sel] * _refraction_index(air[sel])
        for _ in range(4):
            guess = air[sel] * _refraction_index(guess)
        vac[sel] = np.where(guess >= AIR_VACUUM_LIMIT, guess, air[sel])
    vac = vac.reshape(np.shape(wave.value))
    return (vac * u.AA).to(wave.unit)


# ---------------------------------------------------------------------------
# filter registry


def _taper(wave, trans, name):
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
    wave_aa, trans = _taper(wave_aa, trans, name)
    if medium == "vacuum":
        wave_aa = vacuum_to_air(wave_aa * u.AA).to_value(u.AA)
    bandpass = SpectralElement(Empirical1D, points=wave_aa * u.AA, lookup_table=trans, fill_value=0.0)
    return FilterCurve(name=name, bandpass=bandpass, system=system, vega_to_ab=vega_to_ab, source=source)


def _load_builtin(name):
    import speclite.filters

    spec = _BUILTIN[name]
    response = speclite.filters.load_filter(spec["speclite"])
    wave = np.asarray(u.Quantity(response.wavelength, u.AA).to_value(u.AA), dtype=float)
    return _make_curve(
        name, wave, response.response, spec["medium"], spec["system"], spec["vega_to_ab"], spec["source"]
    )


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
    KeyError
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
        raise KeyError(
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
    try:
        data = np.loadtxt(path, comments="#", ndmin=2, dtype=float)
    except (OSError, ValueError) as exc:
        raise InputDataError(
            f"cannot read filter file {path} ({exc}); it must hold two numeric columns "
            "(wavelength, transmission) with '#' comments."
        ) from exc
    if data.shape[1] < 2:
        raise InputDataError(f"filter file {path} has {data.shape[1]} column(s); it needs wavelength and transmission.")
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
        wave = _wave_quantity(
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
    KeyError
        ``name`` is not a custom registration (built-in bands cannot be removed).
    """
    if name not in _CUSTOM:
        raise KeyError(f"{name!r} is not a custom band; custom bands: {', '.join(_CUSTOM) or 'none'}.")
    del _CUSTOM[name]
    _CURVES.pop(name, None)
    _band_arrays_by_name.cache_clear()


# ---------------------------------------------------------------------------
# band integrals


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
    wave, trans = _taper(wave, trans, "bandpass")
    return wave, trans, C_AA_PER_S * np.trapezoid(trans / wave, wave)


@functools.lru_cache(maxsize=256)
def _band_arrays_by_name(name):
    return _element_arrays(load_filter_curve(name).bandpass)


def _band_arrays(band):
    """(wavelength Å air, transmission, c ∫T/λ dλ) of a band name, FilterCurve or SpectralElement."""
    from synphot import SpectralElement

    if isinstance(band, str):
        return _band_arrays_by_name(band)
    if isinstance(band, FilterCurve):
        return _element_arrays(band.bandpass)
    if isinstance(band, SpectralElement):
        return _element_arrays(band)
    raise InputDataError(
        f"band must be a registered name, a FilterCurve or a synphot SpectralElement; got {type(band).__name__}."
    )


def _band_label(band):
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
    wave = _band_arrays(band)[0]
    return u.Quantity([wave[0], wave[-1]], u.AA)


def _covers(wave, band_wave):
    lo, hi = band_wave[0], band_wave[-1]
    tol = 1e-9 * hi
    return wave[0] <= lo + tol and wave[-1] >= hi - tol


def _weights(wave, band_wave, band_trans, denom):
    """Linear map from f_λ samples on ``wave`` to the photon-counting mean f_ν."""
    lo, hi = band_wave[0], band_wave[-1]
    inside = wave[(wave > lo) & (wave < hi)]
    x = np.union1d(band_wave, inside)
    trans = np.interp(x, band_wave, band_trans)
    dx = np.diff(x)
    trap = np.zeros_like(x)
    trap[:-1] += 0.5 * dx
    trap[1:] += 0.5 * dx
    g = trap * trans * x
    j = np.clip(np.searchsorted(wave, x, side="right") - 1, 0, wave.size - 2)
    t = np.clip((x - wave[j]) / (wave[j + 1] - wave[j]), 0.0, 1.0)
    weights = np.zeros(wave.size)
    np.add.at(weights, j, g * (1.0 - t))
    np.add.at(weights, j + 1, g * t)
    return weights / denom


def band_flux_weights(wavelength, name):
    """Weights w with ``f_lambda @ w`` = the band's photon-counting mean f_ν.

    f_λ is taken as linear between the samples (as synphot does) and the
    integrals ∫ f_λ T λ dλ / ∫ T (c/λ) dλ are done exactly for that
    interpolant on the union of the spectrum and filter grids, so the result
    agrees with `synthetic_photometry` to rounding.

    Parameters
    ----------
    wavelength : `~astropy.units.Quantity` or array_like
        Strictly increasing wavelengths (Å, air; plain numbers are Å).
    name : str, `~kspec_fluxcal.containers.FilterCurve` or `synphot.SpectralElement`
        The band.

    Returns
    -------
    numpy.ndarray or None
        Plain float weights, one per wavelength, in Hz⁻¹ Å (f_λ in
        erg s⁻¹ cm⁻² Å⁻¹ gives f_ν in erg s⁻¹ cm⁻² Hz⁻¹); None when
        ``wavelength`` does not cover the whole non-zero band.

    Examples
    --------
    >>> wave = np.linspace(3000, 11000, 8001)
    >>> flam = 3631e-23 * 2.99792458e18 / wave**2      # f_nu = 3631 Jy
    >>> w = band_flux_weights(wave, "ps1_r")
    >>> print(f"{-2.5 * np.log10(flam @ w) - 48.60:.3f}")
    -0.000
    """
    wave = _as_wavelength(wavelength, "wavelength")
    band_wave, band_trans, denom = _band_arrays(name)
    if not _covers(wave, band_wave):
        return None
    return _weights(wave, band_wave, band_trans, denom)


def band_flux_matrix(wavelength, names):
    """Stack of `band_flux_weights` rows, shape (n_bands, n_wave).

    ``flux @ matrix.T`` gives the f_ν of many spectra (rows of ``flux``, f_λ in
    erg s⁻¹ cm⁻² Å⁻¹) in all bands at once. Rows of bands that ``wavelength``
    does not cover are NaN.
    """
    wave = _as_wavelength(wavelength, "wavelength")
    matrix = np.full((len(names), wave.size), np.nan)
    for i, name in enumerate(names):
        weights = band_flux_weights(wave, name)
        if weights is not None:
            matrix[i] = weights
    return matrix


# ---------------------------------------------------------------------------
# synthetic photometry


def _spectrum_flam(spectrum):
    """(wavelength Å, f_λ in FLAM) of the good pixels of a spectrum."""
    spectrum = validate_spectrum(spectrum)
    wave = spectrum.spectral_axis.to_value(u.AA)
    try:
        flam = spectrum.flux.to_value(FLAM, equivalencies=u.spectral_density(wave * u.AA))
    except u.UnitConversionError as exc:
        raise InputDataError(
            f"spectrum flux has unit '{spectrum.flux.unit}', which is not a spectral flux density; "
            "calibrate it (f_λ or f_ν) before synthetic photometry."
        ) from exc
    good = np.isfinite(flam) & ~np.asarray(spectrum.mask, dtype=bool)
    if np.count_nonzero(good) < 2:
        raise InputDataError("spectrum has fewer than 2 good pixels; nothing to integrate.")
    return wave[good], flam[good]


def _one_magnitude(wave, flam, band, strict):
    from synphot import Observation, SourceSpectrum, SpectralElement
    from synphot.models import Empirical1D

    band_wave, band_trans, _ = _band_arrays(band)
    if not _covers(wave, band_wave):
        message = (
            f"spectrum ({wave[0]:.1f}–{wave[-1]:.1f} Å) does not cover band {_band_label(band)} "
            f"({band_wave[0]:.1f}–{band_wave[-1]:.1f} Å); its magnitude is NaN. Extend the spectrum "
            "or drop the band."
        )
        if strict:
            raise InputDataError(message)
        warnings.warn(message, PartialBandpassWarning, stacklevel=3)
        return np.nan
    source = SourceSpectrum(Empirical1D, points=wave * u.AA, lookup_table=flam * FLAM, keep_neg=True)
    bandpass = SpectralElement(Empirical1D, points=band_wave * u.AA, lookup_table=band_trans, fill_value=0.0)
    fnu = Observation(source, bandpass, force="none").effstim(FNU).value
    if not fnu > 0:
        log.debug("band %s: mean flux %g is not positive; magnitude NaN", _band_label(band), fnu)
        return np.nan
    return -2.5 * math.log10(fnu) - AB_ZERO_POINT


def synthetic_photometry(spectrum, band, strict=False):
    """Photon-counting AB magnitude(s) of a spectrum, computed with synphot.

    Parameters
    ----------
    spectrum : `~specutils.Spectrum`
        Spectral axis in Å (air); flux in any spectral flux-density unit
        (f_λ or f_ν). Masked and non-finite pixels are skipped (the flux is
        interpolated linearly across them).
    band : str, `~kspec_fluxcal.containers.FilterCurve`, `synphot.SpectralElement` or list
        A band, or a list of them.
    strict : bool
        Raise `~kspec_fluxcal.InputDataError` instead of returning NaN when the
        spectrum does not cover a band.

    Returns
    -------
    `~astropy.units.Magnitude`
        AB magnitude(s) in ``u.ABmag`` (like `fnu_to_ab_mag`), a scalar for
        one band, an array for a list; ``.value`` gives plain floats. NaN for
        a band the spectrum does not cover (with a
        `~kspec_fluxcal.PartialBandpassWarning`) or where the band flux is not
        positive.
    """
    wave, flam = _spectrum_flam(spectrum)
    if isinstance(band, (list, tuple)):
        return np.array([_one_magnitude(wave, flam, b, strict) for b in band]) * u.ABmag
    return _one_magnitude(wave, flam, band, strict) * u.ABmag


def synthetic_color(spectrum, band1, band2, strict=False):
    """Synthetic AB colour ``band1 − band2`` of a spectrum, a Quantity in ``u.mag``; NaN if a band is not covered."""
    mags = synthetic_photometry(spectrum, [band1, band2], strict=strict).value
    return float(mags[0] - mags[1]) * u.mag


# ---------------------------------------------------------------------------
# Teff from colour

# Mucciarelli, Bellazzini & Massari 2021, A&A 653, A90, Table 1, dwarfs, (BP−RP)_0 in
# Gaia EDR3 (Vega) magnitudes: θ = 5040/Teff = b0 + b1 C + b2 C² + b3 [Fe/H] + b4 [Fe/H]² + b5 [Fe/H] C,
# valid for 0.39 ≤ C ≤ 1.50, dispersion 61 K.
_MBM21_BPRP_DWARF = (0.4929, 0.5092, -0.0353, 0.0192, -0.0020, -0.0395)
_MBM21_RANGE = (0.39, 1.50)
_MBM21_SIGMA_K = 61.0
# E(BP−RP) per unit E(B−V) for F/G stars: A_BP/A_V − A_RP/A_V ≈ 1.08 − 0.63 (Casagrande &
# VandenBerg 2018, MNRAS 479, L102, for Teff ≈ 5500–6500 K) with A_V = 3.1 E(B−V) → ≈ 1.39.
_EBPRP_PER_EBV = 1.39
# DR2 versus (E)DR3 BP−RP differ by up to ≈0.02 mag for F/G stars (Riello et al. 2021, Sect. 8);
# allowed for as an extra colour uncertainty when only DR2 colours are at hand.
_DR2_COLOR_SYSTEMATIC = 0.02


def _vega_mag(photometry, name):
    if name not in photometry.filter_names:
        return None
    mag, err = photometry[name]
    if not (np.isfinite(mag) and np.isfinite(err)):
        return None
    return mag - load_filter_curve(name).vega_to_ab, err


def _theta_mbm21(color, feh):
    b0, b1, b2, b3, b4, b5 = _MBM21_BPRP_DWARF
    return b0 + b1 * color + b2 * color**2 + b3 * feh + b4 * feh**2 + b5 * feh * color


def estimate_teff_from_color(photometry, method="bp_rp", ebv_max=0.1, feh_range=(-1.0, 0.5), feh=0.0, nsigma=3.0):
    """Teff of an F/G/K dwarf and a window that should contain the truth.

    ``method='g_r'`` uses Pan-STARRS1 (g−r) in AB against Teff and [M/H] of
    log g = 4.5 dwarfs, computed through the registered PS1 bandpasses from
    the Castelli & Kurucz (2004) ATLAS9 models (the shipped table
    ``teff_g_r_ps1_ck04.ecsv``, made by `color_teff_table`; 5000–8000 K), with
    a model-systematic allowance of ``_G_R_SIGMA_K``; its hot side covers a
    colour dereddened by up to ``ebv_max`` (E(g−r)/E(B−V) from the extinction
    law at the bands' pivot wavelengths).

    ``method='bp_rp'`` uses the Gaia (BP−RP)₀ relation for dwarfs of
    Mucciarelli, Bellazzini & Massari (2021, A&A 653, A90, Table 1; 61 K
    scatter), defined in Vega magnitudes: the AB magnitudes of
    `~kspec_fluxcal.containers.Photometry` are converted back with the registry
    offsets. DR3 bands (``gaia3_bp``/``gaia3_rp``) are preferred; DR2 bands
    (``gaia_bp``/``gaia_rp``, as in Refcat2) get an extra 0.02 mag colour
    allowance for the DR2/DR3 difference.

    The window is the relation evaluated at colour ± nσ (colour error and
    DR2 allowance) over ``feh_range``, widened by nσ of the relation scatter;
    its hot side also covers a colour dereddened by up to ``ebv_max``
    (E(BP−RP) ≈ 1.39 E(B−V)).

    Parameters
    ----------
    photometry : `~kspec_fluxcal.containers.Photometry`
        AB magnitudes holding the two bands.
    method : {'bp_rp', 'g_r'}
        The colour relation.
    ebv_max : float
        Largest E(B−V) (mag) to allow for; the central value assumes none.
    feh_range : (float, float)
        [Fe/H] range spanned by the window.
    feh : float
        [Fe/H] of the central estimate.
    nsigma : float
        Width of the window in units of the combined uncertainty.

    Returns
    -------
    teff : float
        Central estimate (K), no reddening.
    (teff_low, teff_high) : tuple of float
        The window (K).

    Raises
    ------
    InputDataError
        A band is missing or NaN (the message names it), the colour is outside
        the relation's range (0.39–1.50 mag, with the window's reddening and
        error allowance), or the method is unknown.
    """
    _photometry_type_check(photometry)
    if method == "g_r":
        return _teff_from_g_r(photometry, ebv_max, feh_range, feh, nsigma)
    if method != "bp_rp":
        raise InputDataError(f"method must be 'bp_rp' or 'g_r'; got {method!r}.")
    pairs = (("gaia3_bp", "gaia3_rp", 0.0), ("gaia_bp", "gaia_rp", _DR2_COLOR_SYSTEMATIC))
    chosen = None
    for blue, red, systematic in pairs:
        mb, mr = _vega_mag(photometry, blue), _vega_mag(photometry, red)
        if mb is not None and mr is not None:
            chosen = (blue, red, mb, mr, systematic)
            break
    if chosen is None:
        missing = [n for n in ("gaia_bp", "gaia_rp") if _vega_mag(photometry, n) is None]
        raise InputDataError(
            f"estimate_teff_from_color(method='bp_rp') needs Gaia BP and RP; band(s) "
            f"{', '.join(missing)} missing or NaN (gaia3_bp/gaia3_rp also accepted)."
        )
    blue, red, (mb, eb), (mr, er), systematic = chosen
    color = mb - mr
    color_err = math.hypot(math.hypot(eb, er), systematic)
    lo_c, hi_c = _MBM21_RANGE
    bluest = color - nsigma * color_err - _EBPRP_PER_EBV * ebv_max
    reddest = color + nsigma * color_err
    if color < lo_c or color > hi_c:
        raise InputDataError(
            f"{blue}−{red} = {color:.3f} (Vega) is outside the {lo_c}–{hi_c} mag range of the "
            "Mucciarelli et al. (2021) dwarf relation; this is not an F/G/K dwarf colour."
        )
    bluest, reddest = max(bluest, lo_c), min(reddest, hi_c)
    teff = 5040.0 / _theta_mbm21(color, feh)
    fehs = np.linspace(feh_range[0], feh_range[1], 7)
    colors = np.linspace(bluest, reddest, 25)
    grid = 5040.0 / _theta_mbm21(colors[:, None], fehs[None, :])
    scatter = nsigma * _MBM21_SIGMA_K
    low = float(min(grid.min(), teff) - scatter)
    high = float(max(grid.max(), teff) + scatter)
    log.debug("Teff from %s-%s = %.3f±%.3f: %.0f K (%.0f–%.0f K)", blue, red, color, color_err, teff, low, high)
    return float(teff), (low, high)


_G_R_TABLE = "teff_g_r_ps1_ck04.ecsv"
_G_R_SIGMA_K = 100.0
"""Allowance (K, 1σ) for the model colours' systematic error against real dwarfs."""


def color_teff_table(library, blue="ps1_g", red="ps1_r", logg=4.5):
    """Synthetic colour (AB) against Teff and [M/H] of a template library's dwarfs.

    Parameters
    ----------
    library : `~kspec_fluxcal.templates.TemplateLibrary`
        Models whose full spectra cover both bands.
    blue, red : str
        Registered band names.
    logg : float
        Surface gravity of the models used.

    Returns
    -------
    `~astropy.table.Table`
        Columns ``teff`` (K), ``feh``, and the colour ``<blue>-<red>`` (mag),
        sorted by [M/H] then Teff; its meta names the library and bands.
    """
    from astropy.table import Table

    entries = library.query(logg_range=(logg - 1e-6, logg + 1e-6), alpha_m=0.0)
    if len(entries) == 0:
        raise InputDataError(f"{library.path} has no log g = {logg} models with [α/M] = 0.")
    wave, flux, _, entries = library.load_grid(entries)
    fnu = np.asarray(flux, dtype=float) @ band_flux_matrix(wave.to_value(u.AA), [blue, red]).T
    table = Table({"teff": np.asarray(entries["teff"], float), "feh": np.asarray(entries["feh"], float),
                   "color": -2.5 * np.log10(fnu[:, 0] / fnu[:, 1])})
    table.sort(["feh", "teff"])
    table["teff"].unit = u.K
    table["color"].unit = u.mag
    table.meta.update(blue=blue, red=red, logg=logg, library=str(Path(library.path).name))
    return table


@functools.lru_cache(maxsize=1)
def _g_r_relation():
    """(fehs, teffs, colours (n_feh, n_teff)) of the shipped PS1 g−r table."""
    from astropy.table import Table

    table = Table.read(Path(__file__).with_name("data") / _G_R_TABLE, format="ascii.ecsv")
    fehs = np.unique(np.asarray(table["feh"], float))
    teffs = np.unique(np.asarray(table["teff"], float))
    colors = np.asarray(table["color"], float).reshape(fehs.size, teffs.size)
    return fehs, teffs, colors


def _teff_of_g_r(color, feh):
    """Teff (K) of a dwarf of AB colour ``color`` and [M/H] ``feh`` (table interpolation)."""
    fehs, teffs, colors = _g_r_relation()
    at_feh = np.array([np.interp(feh, fehs, colors[:, k]) for k in range(teffs.size)])
    return float(np.interp(color, at_feh[::-1], teffs[::-1]))  # colour decreases with Teff


def _teff_from_g_r(photometry, ebv_max, feh_range, feh, nsigma):
    from .extinction import extinction_per_ebv

    bands = ("ps1_g", "ps1_r")
    values = {}
    for name in bands:
        if name not in photometry.filter_names or not photometry.valid[photometry.filter_names.index(name)]:
            raise InputDataError(
                f"estimate_teff_from_color(method='g_r') needs PS1 g and r; band {name} is missing or NaN."
            )
        values[name] = photometry[name]
    color = values["ps1_g"][0] - values["ps1_r"][0]
    color_err = math.hypot(values["ps1_g"][1], values["ps1_r"][1])
    fehs, _, colors = _g_r_relation()
    reddest, bluest = colors.max(), colors.min()
    if not bluest - 0.05 <= color <= reddest + 0.05:
        raise InputDataError(
            f"ps1_g−ps1_r = {color:.3f} (AB) is outside the {bluest:.2f}–{reddest:.2f} mag range of the "
            "5000–8000 K dwarf models; this is not an F/G dwarf colour."
        )
    pivots = [load_filter_curve(n).pivot_wavelength.to_value(u.AA) for n in bands]
    e_gr = float(np.subtract(*extinction_per_ebv(pivots)))
    teff = _teff_of_g_r(color, feh)
    trial_colors = np.linspace(color - nsigma * color_err - e_gr * ebv_max, color + nsigma * color_err, 15)
    trial_fehs = np.linspace(max(feh_range[0], fehs[0]), min(feh_range[1], fehs[-1]), 5)
    trial = [_teff_of_g_r(c, f) for c in trial_colors for f in trial_fehs]
    allowance = nsigma * _G_R_SIGMA_K
    return float(teff), (float(min(min(trial), teff) - allowance), float(max(max(trial), teff) + allowance))


def _photometry_type_check(photometry):
    if not isinstance(photometry, Photometry):
        raise InputDataError(f"photometry must be a Photometry; got {type(photometry).__name__}.")
