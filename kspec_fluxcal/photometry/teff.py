"""Effective temperature windows from colours (Gaia BP−RP, PS1 g−r).
"""

import functools
import logging
import math
from pathlib import Path

import numpy as np
from astropy import units as u

from ..containers import Photometry
from ..exceptions import InputDataError
from .filters import band_vega_to_ab, load_filter_curve
from .synthetic import band_flux_matrix

__all__ = ["estimate_teff_from_color", "color_teff_table"]

log = logging.getLogger(__name__)


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
    return mag - band_vega_to_ab(name), err


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

    table = Table.read(Path(__file__).parents[1] / "data" / _G_R_TABLE, format="ascii.ecsv")
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
    from ..extinction import extinction_per_ebv

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
