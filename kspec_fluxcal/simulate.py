"""Simulated data with known truth: synthetic template grids and exposures.

Everything made here is SYNTHETIC. The stellar spectra come from a documented
analytic model, not from a model atmosphere: they are good for testing the
package end to end (file formats, interpolation, matching, synthetic
photometry) where the truth must be known exactly, and useless for science.
"""

import functools
import gzip
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy import constants as const
from astropy import units as u
from scipy.signal import oaconvolve
from scipy.special import expit

from .bosz import (
    BoszParameters,
    bosz_atmosphere,
    bosz_filename,
    bosz_vmicro,
    model_relpath,
    subgrid_parameters,
    wave_grid_filename,
)
from .calspec import read_calspec
from .exceptions import InputDataError
from .io.atomic import write_bytes_atomic
from .wavelength import log_uniform_grid

__all__ = [
    "SyntheticGrid",
    "synthetic_stellar_spectrum",
    "bosz_wave_grid",
    "write_bosz_grid",
    "make_compact_grid",
    "default_throughput",
    "SimulatedExposure",
    "write_refcat_csv",
    "make_exposure",
    "make_calspec_exposure",
]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Synthetic template grids
# ---------------------------------------------------------------------------
#
# The analytic stellar model (all wavelengths in Å, in air):
#
# * Continuum: the blackbody surface flux π B_λ(Teff) times a Balmer jump
#   (a smoothed step at 3646 Å of depth D(Teff, log g) dex, largest near
#   9500 K) and a mild H⁻-like bump around 1.6 µm (the H⁻ opacity minimum),
#   scaled by one constant per model so that the line-blanketed flux
#   integrates to σ Teff⁴ (blocked flux re-emerges in the continuum).
# * Lines, as optical depth τ(λ) with flux = continuum × (r + (1 − r) exp(−τ))
#   (r = 0.03: saturated cores keep a little flux, as real ones do), computed on
#   an internal log-λ grid (2.5 km/s steps, 2900–10300 Å) with an intrinsic
#   width of 10 km/s FWHM, then convolved with a Gaussian of FWHM = λ/R and
#   interpolated onto the requested wavelengths. Outside 2900–10300 Å the
#   spectrum is pure continuum.
#   - Balmer Hα…H10: a saturated Gaussian core plus Stark-like wings
#     τ ∝ |Δλ|^−5/2 whose width peaks at 9000 K and grows mildly with log g.
#   - Strong metal lines (Ca II H&K, Ca II triplet, Mg b, Na D): damping
#     profiles τ = x₁² / (Δλ² + γ²), x₁ growing with abundance (√10^[X/H]),
#     with decreasing Teff and, line by line, with or against log g.
#   - A deterministic forest of weak lines (fixed seed, density ∝ λ⁻³ over
#     3000–10000 Å) plus a CH G band at 4290–4320 Å, with τ ∝ 10^[M/H]
#     (×10^[α/M] for a third of them), stronger at lower Teff (neutral lines)
#     or nearly Teff-neutral and stronger at low log g (ionised lines).
# All strengths are smooth, monotonic functions of the parameters, so a model
# between grid nodes is close to the interpolation of its neighbours.

_H = const.h.cgs.value
_C = const.c.cgs.value
_K_B = const.k_B.cgs.value
_SIGMA_SB = const.sigma_sb.cgs.value
_C_KMS = const.c.to_value("km/s")
_HC_K_ANGSTROM = _H * _C / _K_B * 1e8  # second radiation constant, Å K

_BALMER_EDGE = 3646.0  # Å, air
_BALMER_EDGE_WIDTH = 12.0  # Å, smoothing of the jump
_HMINUS_PEAK = 16000.0  # Å

_INTERNAL_STEP_KMS = 2.5
_INTERNAL_RANGE = (2900.0, 10300.0)
_INTRINSIC_FWHM_KMS = 10.0
_FOREST_RANGE = (3000.0, 10000.0)
_FOREST_SEED = 20240917
_FOREST_LINES = 4000
_GBAND_LINES = 150
_THETA_REF = 5040.0 / 5800.0

# Balmer lines: air wavelength (Å), relative wing width, relative core depth.
_BALMER = (
    (6562.80, 1.00, 1.00),
    (4861.32, 0.85, 0.80),
    (4340.46, 0.72, 0.65),
    (4101.73, 0.62, 0.55),
    (3970.07, 0.52, 0.45),
    (3889.05, 0.44, 0.38),
    (3835.38, 0.37, 0.32),
    (3797.90, 0.31, 0.27),
)

# Strong metal lines: air wavelength (Å), damping width x₁ (Å) of the Sun-like
# reference star (5800 K, log g 4.5, solar), abundance-weight of [α/M],
# Teff exponent k (x₁ ∝ (θ/θ_ref)^k, θ = 5040/Teff) and gravity slope
# s (x₁ ∝ 10^(s (log g − 4.5))).
_STRONG_LINES = (
    (3933.66, 5.0, 1.0, 2.0, 0.10),  # Ca II K
    (3968.47, 3.6, 1.0, 2.0, 0.10),  # Ca II H
    (8498.02, 0.40, 1.0, 1.0, -0.10),  # Ca II triplet
    (8542.09, 1.05, 1.0, 1.0, -0.10),
    (8662.14, 0.80, 1.0, 1.0, -0.10),
    (5167.32, 0.28, 1.0, 3.0, 0.25),  # Mg b
    (5172.68, 0.38, 1.0, 3.0, 0.25),
    (5183.60, 0.48, 1.0, 3.0, 0.25),
    (5889.95, 0.24, 0.0, 4.0, 0.10),  # Na D
    (5895.92, 0.18, 0.0, 4.0, 0.10),
)
_STRONG_GAMMA = 0.05  # Å, core half width of the damping profiles
_RESIDUAL_FLUX = 0.03  # relative flux left at the core of a saturated line


def _planck_surface_flux(wavelength, teff):
    """Return π B_λ(Teff) in erg s⁻¹ cm⁻² Å⁻¹ at ``wavelength`` (Å)."""
    lam_cm = wavelength * 1e-8
    x = _HC_K_ANGSTROM / (wavelength * teff)
    boltz = np.exp(-x)
    return np.pi * 2.0 * _H * _C**2 / lam_cm**5 * boltz / -np.expm1(-x) * 1e-8


def _balmer_jump_dex(teff, logg):
    """Depth of the Balmer jump in dex (largest near 9500 K, deeper at low g)."""
    peak = math.exp(-(((math.log10(teff) - math.log10(9500.0)) / 0.12) ** 2))
    return 0.08 + 0.40 * peak * (1.0 + 0.15 * (4.0 - logg))


def _continuum_shape(wavelength, teff, logg):
    """Balmer jump and H⁻-like bump that multiply the blackbody (no unit)."""
    blocked = 1.0 - 10.0 ** (-_balmer_jump_dex(teff, logg))
    jump = 1.0 - blocked * expit((_BALMER_EDGE - wavelength) / _BALMER_EDGE_WIDTH)
    bump = 1.0 + 0.12 * (6000.0 / teff) ** 2 * np.exp(-((np.log(wavelength / _HMINUS_PEAK) / 0.45) ** 2))
    return jump * bump


@functools.lru_cache(maxsize=1)
def _reference_grid():
    """Fine log-λ grid (Å) on which the continuum integral is evaluated."""
    return log_uniform_grid(100.0, 1.0e7, math.log(1.0e5) / 20000, include_stop=True)


@functools.lru_cache(maxsize=1)
def _internal_grid():
    """Internal log-λ grid (Å) on which the lines are computed."""
    step = _INTERNAL_STEP_KMS / _C_KMS
    n = int(np.ceil(np.log(_INTERNAL_RANGE[1] / _INTERNAL_RANGE[0]) / step)) + 1
    return np.exp(np.log(_INTERNAL_RANGE[0]) + step * np.arange(n))


@functools.lru_cache(maxsize=1)
def _line_forest():
    """The fixed forest of weak lines (same for every model).

    Returns
    -------
    dict of numpy.ndarray
        ``wave`` (Å), ``log_tau`` (log10 central τ of the reference star),
        ``k_teff`` (d log τ / dθ), ``k_logg`` (d log τ / d log g), ``alpha``
        (weight of [α/M]).
    """
    rng = np.random.default_rng(_FOREST_SEED)
    lo, hi = _FOREST_RANGE
    u = rng.random(_FOREST_LINES)
    wave = (lo**-2 - u * (lo**-2 - hi**-2)) ** -0.5  # density ∝ λ⁻³
    log_tau = rng.uniform(-1.6, 1.0, _FOREST_LINES) - 0.8 * np.log10(wave / 4000.0)
    ionised = rng.random(_FOREST_LINES) < 0.25
    k_teff = np.where(ionised, rng.uniform(-0.3, 0.8, _FOREST_LINES), rng.uniform(1.5, 3.5, _FOREST_LINES))
    k_logg = np.where(ionised, rng.uniform(-0.4, -0.2, _FOREST_LINES), rng.uniform(-0.05, 0.1, _FOREST_LINES))
    alpha = (rng.random(_FOREST_LINES) < 0.33).astype(float)
    # CH G band: a dense cluster of molecular lines, very Teff-sensitive.
    g_wave = rng.uniform(4290.0, 4320.0, _GBAND_LINES)
    g_log_tau = rng.uniform(-1.0, 0.3, _GBAND_LINES)
    return {
        "wave": np.concatenate([wave, g_wave]),
        "log_tau": np.concatenate([log_tau, g_log_tau]),
        "k_teff": np.concatenate([k_teff, np.full(_GBAND_LINES, 6.0)]),
        "k_logg": np.concatenate([k_logg, np.full(_GBAND_LINES, -0.1)]),
        "alpha": np.concatenate([alpha, np.zeros(_GBAND_LINES)]),
    }


def _balmer_wing_width(teff, logg):
    """Stark wing width x_α (Å) of Hα; peaks at 9000 K, grows with log g."""
    peak = math.exp(-(((math.log10(teff) - math.log10(9000.0)) / 0.16) ** 2))
    return 4.2 * peak * 10.0 ** (0.1 * (logg - 4.0))


def _add_windowed(tau, lnwave, center, half_width, profile):
    """Add ``profile(Δλ)`` to ``tau`` within ±``half_width`` Å of ``center``."""
    lo, hi = np.searchsorted(lnwave, np.log([center - half_width, center + half_width]))
    dx = np.exp(lnwave[lo:hi]) - center
    taper = (1.0 - (dx / half_width) ** 2) ** 2
    tau[lo:hi] += profile(dx) * taper


def _line_opacity(teff, logg, feh, alpha_m):
    """Return τ on the internal grid for one model."""
    wave = _internal_grid()
    lnwave = np.log(wave)
    step = lnwave[1] - lnwave[0]
    theta = 5040.0 / teff
    tau = np.zeros_like(wave)

    # Weak-line forest: every line has the same Gaussian width in ln λ, so
    # all profiles are accumulated at once with a fixed pixel stencil.
    forest = _line_forest()
    log_tau = (
        forest["log_tau"]
        + feh
        + forest["alpha"] * alpha_m
        + forest["k_teff"] * (theta - _THETA_REF)
        + forest["k_logg"] * (logg - 4.5)
    )
    sigma = _INTRINSIC_FWHM_KMS / _C_KMS / (2.0 * math.sqrt(2.0 * math.log(2.0))) / step
    reach = int(math.ceil(4.0 * sigma))
    pos = (np.log(forest["wave"]) - lnwave[0]) / step
    base = np.floor(pos).astype(np.int64)
    offsets = np.arange(-reach, reach + 2)
    idx = base[:, None] + offsets[None, :]
    weights = 10.0 ** log_tau[:, None] * np.exp(-0.5 * ((idx - pos[:, None]) / sigma) ** 2)
    tau += np.bincount(idx.ravel(), weights.ravel(), minlength=wave.size)

    # Strong metal lines with damping wings.
    for center, x1_ref, alpha_weight, k, slope in _STRONG_LINES:
        abundance = 10.0 ** (0.5 * (feh + alpha_weight * alpha_m))
        x1 = x1_ref * abundance * (theta / _THETA_REF) ** k * 10.0 ** (slope * (logg - 4.5))
        _add_windowed(tau, lnwave, center, max(30.0 * x1, 2.0),
                      lambda dx, x1=x1: x1**2 / (dx**2 + _STRONG_GAMMA**2))

    # Balmer series: saturated core plus Stark-like wings.
    wing_alpha = _balmer_wing_width(teff, logg)
    core_alpha = 2.0 + 40.0 * wing_alpha / 4.2
    for center, wing_rel, core_rel in _BALMER:
        x_n = wing_alpha * wing_rel
        tau_core = core_alpha * core_rel
        core_sigma = center * 25.0 / _C_KMS / 2.3548

        def profile(dx, x_n=x_n, tau_core=tau_core, core_sigma=core_sigma):
            wings = (x_n**2 / (dx**2 + 0.1**2)) ** 1.25
            return wings + tau_core * np.exp(-0.5 * (dx / core_sigma) ** 2)

        _add_windowed(tau, lnwave, center, min(max(60.0 * x_n, 10.0 * core_sigma), 400.0), profile)
    return tau


def _gaussian_smooth(values, sigma):
    """Convolve a transmission with a Gaussian of ``sigma`` pixels (edges extended).

    Overlap-add FFT convolution: its cost hardly depends on the width, which
    matters at low resolving power (σ of hundreds of internal pixels).
    """
    half = int(math.ceil(4.0 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    padded = np.pad(values, half, mode="edge")
    # FFT round-off leaves ~1e-16 excursions; keep a transmission in [0, 1].
    return np.clip(oaconvolve(padded, kernel / kernel.sum(), mode="valid"), 0.0, 1.0)


def _check_parameters(teff, logg, feh, alpha_m, resolution):
    if not np.isfinite(teff) or not 2000.0 <= teff <= 50000.0:
        raise InputDataError(f"teff must be between 2000 and 50000 K, got {teff!r}")
    for name, value in (("logg", logg), ("feh", feh), ("alpha_m", alpha_m)):
        if not np.isfinite(value):
            raise InputDataError(f"{name} must be a finite number, got {value!r}")
    if resolution is not None and not (np.isfinite(resolution) and resolution > 0):
        raise InputDataError(f"resolution must be a positive resolving power or None, got {resolution!r}")


def synthetic_stellar_spectrum(wavelength, teff, logg, feh, alpha_m=0.0, resolution=None):
    """Return the SYNTHETIC analytic stellar spectrum of one star.

    The model (see the comment at the top of the ``Synthetic template
    grids`` section of this module) is a blackbody with a Balmer jump and a
    mild H⁻-like shape, scaled so that the flux integrates to σ Teff⁴, times
    the absorption 0.03 + 0.97 exp(−τ) of Balmer, strong metal and weak
    forest lines. It is an analytic
    stand-in for a model atmosphere, made for tests with known truth.

    Parameters
    ----------
    wavelength : array_like
        Wavelengths in Å (air), any order; lines are modelled within
        2900–10300 Å, elsewhere the spectrum is pure continuum.
    teff : float
        Effective temperature in K (2000–50000; tuned for 5000–8000).
    logg : float
        Surface gravity, log10 of g in cm s⁻².
    feh : float
        Metallicity [M/H] in dex.
    alpha_m : float, optional
        [α/M] in dex.
    resolution : float, optional
        Resolving power R: lines are convolved with a Gaussian of
        FWHM = λ/R (on top of their intrinsic 10 km/s). `None` keeps the
        intrinsic profiles, which need a grid finer than ~3 km/s.

    Returns
    -------
    flux : numpy.ndarray
        Surface flux F_λ in erg s⁻¹ cm⁻² Å⁻¹, shaped like ``wavelength``.
    continuum : numpy.ndarray
        The continuum F_λ in the same unit.

    Raises
    ------
    InputDataError
        If a parameter is out of range or a wavelength is not positive.
    """
    shape = np.shape(wavelength)
    wavelength = np.ravel(np.asarray(wavelength, dtype=float))
    if not np.all(wavelength > 0):
        raise InputDataError("wavelengths must be positive numbers in Å; found zero, negative or NaN values")
    _check_parameters(teff, logg, feh, alpha_m, resolution)

    wave_int = _internal_grid()
    tau = _line_opacity(teff, logg, feh, alpha_m)
    transmission = _RESIDUAL_FLUX + (1.0 - _RESIDUAL_FLUX) * np.exp(-tau)

    # Normalisation: σ Teff⁴ over the whole spectrum, with the flux the lines
    # block (integrated before convolution, which conserves it) removed.
    ref = _reference_grid()
    shaped = _planck_surface_flux(ref, teff) * _continuum_shape(ref, teff, logg)
    continuum_integral = np.trapezoid(shaped, ref)
    cont_int = _planck_surface_flux(wave_int, teff) * _continuum_shape(wave_int, teff, logg)
    blocked = np.trapezoid(cont_int * (1.0 - transmission), wave_int)
    scale = _SIGMA_SB * teff**4 / (continuum_integral - blocked)

    if resolution is not None:
        step = math.log(wave_int[1] / wave_int[0])
        sigma_pix = 1.0 / resolution / (2.0 * math.sqrt(2.0 * math.log(2.0))) / step
        transmission = _gaussian_smooth(transmission, sigma_pix)

    continuum = scale * _planck_surface_flux(wavelength, teff) * _continuum_shape(wavelength, teff, logg)
    inside = (wavelength >= wave_int[0]) & (wavelength <= wave_int[-1])
    line_factor = np.ones_like(wavelength)
    line_factor[inside] = np.interp(np.log(wavelength[inside]), np.log(wave_int), transmission)
    return (continuum * line_factor).reshape(shape), continuum.reshape(shape)


def bosz_wave_grid(resolution, wave_range=(500.0, 320000.0)):
    """Return a BOSZ 2024-style wavelength grid (Å), uniform in ln λ.

    BOSZ 2024 (Mészáros et al. 2024, Eqs. 3–4) samples every product of
    resolving power R with Δln λ = ln(640) / (15 R) ≈ 1 / (2.32 R) from
    500 Å, 15 R points up to (not including) 320 000 Å; this reproduces the
    published ``bosz2024_wave_r5000.txt`` (75 000 rows).

    Parameters
    ----------
    resolution : int
        Resolving power R.
    wave_range : (float, float), optional
        First wavelength and the (excluded) upper limit, in Å.

    Returns
    -------
    numpy.ndarray
        Wavelengths in Å.
    """
    lo, hi = (float(v) for v in wave_range)
    if not 0 < lo < hi:
        raise InputDataError(f"wave_range must be (min, max) with 0 < min < max in Å, got {wave_range!r}")
    step = math.log(640.0) / (15.0 * resolution)
    return log_uniform_grid(lo, hi * math.exp(-0.5 * step), step)


def _format_e(values, digits, out):
    """Write non-negative numbers like ``%.{digits}e``, vectorised.

    ``out`` is a (digits + 6, N) array of ASCII codes, one row per character
    position (rows are contiguous, which makes the writes fast). Values below
    1e-99 are written as zero.
    """
    values = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values >= 9.99e99):
        raise InputDataError("only finite values in [0, 1e100) can be written to a BOSZ-format file")
    zero = values < 1e-99
    safe = np.where(zero, 1.0, values)
    exponent = np.floor(np.log10(safe)).astype(np.int64)
    scale = 10**digits
    mantissa = np.rint(safe / 10.0 ** exponent.astype(float) * scale).astype(np.int64)
    low = mantissa < scale  # log10 rounded up: 0.99999… × 10^e
    exponent[low] -= 1
    mantissa[low] = np.rint(safe[low] / 10.0 ** exponent[low].astype(float) * scale).astype(np.int64)
    high = mantissa >= 10 * scale  # 9.99995 rounds up to 10.0000
    exponent[high] += 1
    mantissa[high] = scale
    mantissa[zero] = 0
    exponent[zero] = 0

    rest = mantissa
    for position in range(digits, -1, -1):
        rest, digit = np.divmod(rest, 10)
        out[position + 1 if position else 0] = digit + ord("0")
    out[1] = ord(".")
    out[digits + 2] = ord("e")
    out[digits + 3] = np.where(exponent < 0, ord("-"), ord("+"))
    magnitude = np.abs(exponent)
    out[digits + 4] = magnitude // 10 + ord("0")
    out[digits + 5] = magnitude % 10 + ord("0")


def _format_table(columns, digits):
    """Return the bytes of a space-separated table of ``%.{digits}e`` values."""
    width = digits + 6
    chars = np.empty((len(columns) * (width + 1), np.asarray(columns[0]).size), dtype=np.uint8)
    for i, column in enumerate(columns):
        start = i * (width + 1)
        _format_e(column, digits, chars[start : start + width])
        chars[start + width] = ord(" ") if i < len(columns) - 1 else ord("\n")
    return chars.T.tobytes()


_README = """SYNTHETIC stellar template grid -- NOT real BOSZ models
=======================================================

Every model in this folder was made by kspec_fluxcal.simulate.write_bosz_grid
from an analytic stellar model (a blackbody with a Balmer jump, scaled to
sigma Teff^4, times Balmer, strong-metal and weak-forest absorption lines).
It only imitates the BOSZ 2024 file format and naming (Meszaros et al. 2024)
so that the package can be tested with known truth. Do not use it for science.

resolution R = {resolution}
models      = {n_models}
wave grid   = {wave_file} ({n_wave} rows, Angstrom, air, uniform in ln lambda)
columns     = H_lambda = F_lambda / (4 pi) and its continuum,
              erg s-1 cm-2 A-1
"""


@dataclass
class SyntheticGrid:
    """Record of a SYNTHETIC BOSZ-format grid written by `write_bosz_grid`.

    Attributes
    ----------
    dest : pathlib.Path
        Root folder of the grid.
    wave_file : pathlib.Path
        The ``bosz2024_wave_r<R>.txt`` file.
    resolution : int
        Resolving power R.
    parameters : list of BoszParameters
        Parameters of every model, in the order of ``paths``.
    paths : list of pathlib.Path
        Model files.
    """

    dest: Path
    wave_file: Path
    resolution: int
    parameters: list = field(default_factory=list)
    paths: list = field(default_factory=list)

    @property
    def n_models(self):
        """Number of models written."""
        return len(self.paths)


def _grid_parameters(teffs, loggs, fehs, alpha_ms, subgrid):
    if subgrid:
        return subgrid_parameters()
    if teffs is None or loggs is None or fehs is None:
        raise InputDataError("give teffs, loggs and fehs (or subgrid=True for the 520-model BOSZ subgrid)")
    params = []
    for alpha_m in alpha_ms:
        for feh in fehs:
            for teff in teffs:
                atmos = bosz_atmosphere(teff)
                for logg in loggs:
                    vmicro = bosz_vmicro(teff, logg, atmos)
                    params.append(
                        BoszParameters(int(teff), float(logg), float(feh), float(alpha_m), 0.0, vmicro, atmos)
                    )
    if not params:
        raise InputDataError("the parameter lists are empty: give at least one Teff, log g, [M/H] and [α/M]")
    return params


def write_bosz_grid(
    dest,
    teffs=None,
    loggs=None,
    fehs=None,
    alpha_ms=(0.0,),
    resolution=10000,
    wave_range=(500.0, 320000.0),
    layout="mast",
    subgrid=False,
    workers=None,
):
    """Write a SYNTHETIC template grid in the BOSZ 2024 file format.

    One gzipped two-column text file per model (H_λ = F_λ/4π and its
    continuum, ``%.4e %.4e``, no header, rows matching the wave grid), named
    exactly like BOSZ 2024 files, plus the wave grid ``bosz2024_wave_r<R>.txt``
    and a README.txt saying the grid is synthetic. Spectra come from
    `synthetic_stellar_spectrum` at resolving power ``resolution``.

    Parameters
    ----------
    dest : str or os.PathLike
        Root folder (created if needed).
    teffs, loggs, fehs : sequence of float, optional
        Teff (K, whole numbers), log g and [M/H] of the grid; every
        combination is written for every ``alpha_ms``. Ignored when
        ``subgrid`` is true.
    alpha_ms : sequence of float, optional
        [α/M] values.
    resolution : int, optional
        Resolving power R of the products (sets the line widths and the
        wave-grid step Δln λ = ln(640) / (15 R)).
    wave_range : (float, float), optional
        Wavelength range of the wave grid in Å.
    layout : {"mast", "flat"}, optional
        ``"mast"``: models in ``r<R>/m<±X.XX>/`` and the wave grid in
        ``r<R>/`` (the layout `kspec_fluxcal.download_bosz` produces);
        ``"flat"``: everything in ``dest``.
    subgrid : bool, optional
        Write the 520-model BOSZ subgrid of `kspec_fluxcal.bosz.subgrid_parameters`.
    workers : int, optional
        Number of threads computing and compressing models (default: up to
        4, the number of CPUs permitting). The files do not depend on it.

    Returns
    -------
    SyntheticGrid
        Paths and parameters of what was written.

    Raises
    ------
    InputDataError
        If the layout or the parameters are invalid.
    """
    if layout not in ("mast", "flat"):
        raise InputDataError(f"layout must be 'mast' or 'flat', got {layout!r}")
    params = _grid_parameters(teffs, loggs, fehs, alpha_ms, subgrid)
    resolution = int(resolution)
    dest = Path(dest)
    res_dir = dest / f"r{resolution}" if layout == "mast" else dest
    res_dir.mkdir(parents=True, exist_ok=True)

    wave = bosz_wave_grid(resolution, wave_range)
    wave_file = res_dir / wave_grid_filename(resolution)
    write_bytes_atomic(wave_file, _format_table([wave], 7))

    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    if int(workers) != workers or workers < 1:
        raise InputDataError(f"workers must be a positive integer, got {workers!r}")
    paths = []
    for p in params:
        relpath = model_relpath(p, resolution) if layout == "mast" else bosz_filename(
            *p[:6], atmos=p.atmos, resolution=resolution)
        path = dest / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        paths.append(path)

    def write_model(p, path):
        flux, continuum = synthetic_stellar_spectrum(
            wave, p.teff, p.logg, p.feh, p.alpha_m, resolution=resolution
        )
        text = _format_table([flux / (4.0 * np.pi), continuum / (4.0 * np.pi)], 4)
        write_bytes_atomic(path, gzip.compress(text, compresslevel=1, mtime=0))

    with ThreadPoolExecutor(max_workers=int(workers)) as pool:
        for future in [pool.submit(write_model, p, path) for p, path in zip(params, paths)]:
            future.result()
    grid = SyntheticGrid(
        dest=dest, wave_file=wave_file, resolution=resolution, parameters=params, paths=paths
    )

    (dest / "README.txt").write_text(
        _README.format(resolution=resolution, n_models=grid.n_models, wave_file=wave_file.relative_to(dest),
                       n_wave=wave.size),
        encoding="utf-8",
    )
    log.info("wrote a SYNTHETIC BOSZ-format grid of %d models (R = %d, %d wavelengths) in %s",
             grid.n_models, resolution, wave.size, dest)
    return grid


def make_compact_grid(dest):
    """Write the small SYNTHETIC grid used by the demo and the tests.

    56 models: Teff 5000–8000 K in 500 K steps, log g 4.0 and 4.5,
    [M/H] −1.0, −0.5, 0.0, +0.5, [α/M] 0; R = 5000 over 3000–26 000 Å, in
    the MAST layout (``<dest>/r5000/m±X.XX/``). Takes a few seconds.

    Parameters
    ----------
    dest : str or os.PathLike
        Root folder (created if needed).

    Returns
    -------
    SyntheticGrid
        Paths and parameters of what was written.
    """
    return write_bosz_grid(
        dest,
        teffs=range(5000, 8001, 500),
        loggs=(4.0, 4.5),
        fehs=(-1.0, -0.5, 0.0, 0.5),
        resolution=5000,
        wave_range=(3000.0, 26000.0),
        layout="mast",
    )


# ---------------------------------------------------------------------------
# Simulated exposures
# ---------------------------------------------------------------------------
#
# An exposure is made the way the sky and the instrument make one: each
# star's flux at the telescope (scaled, reddened, Doppler-shifted, times the
# telluric transmission) is convolved with the instrument's Gaussian LSF,
# sampled on the fiber's own wavelengths, divided by the true calibration
# (the system response, erg s⁻¹ cm⁻² Å⁻¹ per count), times the fiber's gray
# aperture loss, plus Gaussian noise whose variance grows with the counts.
# The catalogue gives each star's photometry through the registered bands as
# Refcat2 reports it (Gaia and 2MASS in Vega), with realistic errors.

_REFCAT_COLUMNS = (
    "dstDegrees", "objid", "RA", "Dec", "plx", "dplx", "pmra", "dpmra", "pmdec", "dpmdec",
    "Gaia", "dGaia", "BP", "dBP", "RP", "dRP", "Teff", "AGaia", "dupvar", "Ag", "rp1", "r1",
    "r10", "g", "dg", "gchi", "gcontrib", "r", "dr", "rchi", "rcontrib", "i", "di", "ichi",
    "icontrib", "z", "dz", "zchi", "zcontrib", "nstat", "J", "dJ", "H", "dH", "K", "dK",
)
# Refcat2 column → (registry band, its error column, typical error in mag)
REFCAT_BANDS = {
    "g": ("ps1_g", "dg", 0.010), "r": ("ps1_r", "dr", 0.010), "i": ("ps1_i", "di", 0.010),
    "z": ("ps1_z", "dz", 0.012), "Gaia": ("gaia_g", "dGaia", 0.002), "BP": ("gaia_bp", "dBP", 0.004),
    "RP": ("gaia_rp", "dRP", 0.003), "J": ("2mass_j", "dJ", 0.025), "H": ("2mass_h", "dH", 0.030),
    "K": ("2mass_ks", "dK", 0.030),
}
_FIELD_CENTRE = (150.0, 2.0)  # deg, where simulated fields point


def default_throughput(wavelength):
    """The SYNTHETIC true calibration of simulated frames, erg s⁻¹ cm⁻² Å⁻¹ per ct.

    A smooth system efficiency (peaking near 6300 Å, with a gentle ripple
    from a dichroic-like term) turned into flux per count for a 1 m² × 600 s
    exposure and 1 Å pixels: Cal = h c / (A t Δλ λ η(λ)).
    """
    lam = np.asarray(u.Quantity(wavelength, u.AA).to_value(u.AA), dtype=float)
    ripple = 1 + 0.04 * np.sin(2 * np.pi * (lam - 3600.0) / 1900.0)
    eta = 0.32 * np.exp(-0.5 * ((lam - 6300.0) / 2600.0) ** 2) * ripple
    area_time = 1e4 * 600.0
    return _H * _C * 1e8 / (area_time * lam * eta)


@dataclass
class SimulatedExposure:
    """A simulated RED frame, its Refcat2 catalogue and the truth behind them.

    ``truth`` holds ``calibration`` (the true flux per count on
    ``wavelength``), per-fiber ``gray``, ``true_flux`` (NFIB, NPIX: the flux a
    perfect calibration returns, i.e. the fiber's flux divided by the median
    gray loss of the standards), and per-standard ``teff``, ``logg``, ``feh``,
    ``rv_kms``, ``ebv``.
    """

    hdulist: object
    catalog: object
    truth: dict = field(default_factory=dict)

    def write(self, directory, stem="sim"):
        """Write ``<stem>_red.fits`` and ``<stem>_refcat.csv``; return their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        red = directory / f"{stem}_red.fits"
        cat = directory / f"{stem}_refcat.csv"
        self.hdulist.writeto(red, overwrite=True)
        write_refcat_csv(self.catalog, cat)
        return red, cat


def write_refcat_csv(table, path):
    """Write a catalogue Table in the Refcat2 CSV layout (header names separated by a comma and a space)."""
    cols = [c for c in _REFCAT_COLUMNS if c in table.colnames]
    lines = [", ".join(cols)]
    for row in table:
        lines.append(",".join("" if _is_missing(row[c]) else f"{row[c]:.7g}" if isinstance(row[c], float | np.floating)
                              else str(row[c]) for c in cols))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _is_missing(value):
    return np.ma.is_masked(value) or (isinstance(value, float | np.floating) and not np.isfinite(value))


def _frame_wavelengths(rng, n_fib, wave_range, n_pix, jitter_pix):
    base = np.linspace(wave_range[0], wave_range[1], n_pix)
    step = base[1] - base[0]
    shifts = rng.uniform(-jitter_pix, jitter_pix, n_fib) * step
    return base, base[None, :] + shifts[:, None]


def _telluric_transmission(wavelength):
    """A SYNTHETIC telluric transmission: smooth troughs inside the default telluric regions.

    Each band of ``telluric_default`` gets 1 − d·sin²(π(λ − a)/(b − a)) over
    [a, b], so the absorption is confined to what the package masks.
    """
    from .masks import load_mask_regions

    lam = np.asarray(wavelength, float)
    depths = (0.3, 0.15, 0.6, 0.1, 0.25, 0.3)
    transmission = np.ones_like(lam)
    for k, (a, b) in enumerate(load_mask_regions("telluric_default").to_value(u.AA)):
        inside = (lam > a) & (lam < b)
        transmission[inside] *= 1 - depths[k % len(depths)] * np.sin(np.pi * (lam[inside] - a) / (b - a)) ** 2
    return transmission


def _observe(native_wave, arriving_flux, fiber_wave, fwhm, fwhm_poly, native_resolution, calibration, gray):
    """Counts of one fiber: LSF, sampling, calibration, gray loss (noise-free)."""
    from .templates import lsf_operator

    op = lsf_operator(native_wave, fiber_wave, fwhm, fwhm_poly_coeffs=fwhm_poly, native_resolution=native_resolution)
    return gray * (op @ arriving_flux) / calibration(fiber_wave)


def add_noise(rng, counts, snr, floor=0.01):
    """Counts plus Gaussian noise of variance k·(counts + floor·median).

    k makes the median S/N per pixel equal ``snr``; the floor stands for read
    noise and sky.
    """
    level = np.median(counts[counts > 0]) if np.any(counts > 0) else 1.0
    k = level / snr**2
    var = k * (np.clip(counts, 0, None) + floor * level)
    return counts + rng.normal(size=counts.shape) * np.sqrt(var), var


def _catalog_row(objid, ra, dec, mags_ab, rng, teff, sentinel_bands=()):
    from .photometry import load_filter_curve

    row = {c: np.nan for c in _REFCAT_COLUMNS}
    row.update(dstDegrees=0.0, objid=int(objid), RA=ra, Dec=dec, plx=1.0, dplx=0.05, pmra=0.0, dpmra=0.1,
               pmdec=0.0, dpmdec=0.1, Teff=teff + rng.normal(0, 150), AGaia=np.nan, dupvar=0, Ag=np.nan,
               rp1=np.nan, r1=np.nan, r10=np.nan, nstat=0)
    for col, (band, ecol, err) in REFCAT_BANDS.items():
        curve = load_filter_curve(band)
        sigma = err * rng.uniform(0.8, 1.3)
        mag = mags_ab[band] - curve.vega_to_ab + rng.normal(0, sigma)
        if col in sentinel_bands:
            row[col], row[ecol] = 99.0, 9.999
        else:
            row[col], row[ecol] = mag, sigma
    for extra in ("gchi", "rchi", "ichi", "zchi"):
        row[extra] = 1.0
    for extra in ("gcontrib", "rcontrib", "icontrib", "zcontrib"):
        row[extra] = 0
    return row


def refcat_band_magnitudes(native_wave, flux):
    from .photometry import REGISTERED_BANDS, band_flux_matrix
    from .photometry.ab import ab_mag_of_fnu_values

    names = [b for b in REGISTERED_BANDS if b in {v[0] for v in REFCAT_BANDS.values()}]
    fnu = band_flux_matrix(native_wave, names) @ flux
    return dict(zip(names, ab_mag_of_fnu_values(fnu)))


def _red_hdulist(counts, variance, wave2d, types, names, ras, decs, mags, fwhm, fwhm_poly, bunit):
    from astropy.io import fits
    from astropy.table import Table

    primary = fits.PrimaryHDU(counts.astype(np.float32))
    primary.header["BUNIT"] = bunit
    primary.header["SPECFWHM"] = (float(fwhm), "instrument FWHM (Angstrom)")
    if fwhm_poly is not None:
        for k, c in enumerate(fwhm_poly):
            primary.header[f"FWHMPC{k}"] = (float(c), f"FWHM(lambda) coefficient of lambda^{k}")
    primary.header["OBJECT"] = "SIMULATED"
    primary.header["COMMENT"] = "SYNTHETIC exposure made by kspec_fluxcal.simulate"
    var_hdu = fits.ImageHDU(variance.astype(np.float32), name="VARIANCE")
    wave_hdu = fits.ImageHDU(wave2d, name="WAVELA")
    wave_hdu.header["BUNIT"] = "Angstrom"
    fibres = Table({"TYPE": np.array(types, dtype="U1"), "NAME": np.array(names, dtype="U32"),
                    "RA": np.asarray(ras, float), "DEC": np.asarray(decs, float),
                    "MAGNITUDE": np.asarray(mags, float),
                    "X": np.linspace(-200, 200, len(types)), "Y": np.zeros(len(types))})
    fibres["RA"].unit = u.deg
    fibres["DEC"].unit = u.deg
    fib_hdu = fits.table_to_hdu(fibres)
    fib_hdu.name = "FIBRES"
    return fits.HDUList([primary, var_hdu, wave_hdu, fib_hdu])


@dataclass
class _Star:
    """A star as it arrives at the telescope: flux (erg s⁻¹ cm⁻² Å⁻¹) on a fine grid."""

    wavelength: np.ndarray
    flux: np.ndarray
    resolution: float
    mags: dict
    truth: dict


def _build_exposure(rng, stars, types, n_pix, wave_range, fwhm, fwhm_poly, snr_range, gray_range, telluric,
                    calibration, wavelength_jitter, n_field_stars, sentinels, counts_unit):
    """Observe ``stars`` (one per non-sky fiber, in fiber order) into a RED frame and a catalogue."""
    from astropy.table import Table

    n_fib = len(types)
    common, wave2d = _frame_wavelengths(rng, n_fib, wave_range, n_pix, wavelength_jitter)
    counts = np.zeros((n_fib, n_pix))
    variance = np.zeros((n_fib, n_pix))
    true_flux = np.zeros((n_fib, n_pix))
    gray = np.ones(n_fib)
    names, ras, decs, fib_mags, rows, star_truth = [], [], [], [], [], []
    source = iter(stars)
    for f, kind in enumerate(types):
        ra = _FIELD_CENTRE[0] + rng.uniform(-0.7, 0.7)
        dec = _FIELD_CENTRE[1] + rng.uniform(-0.7, 0.7)
        ras.append(ra)
        decs.append(dec)
        if kind == "S":
            names.append(f"SKY{f:03d}")
            fib_mags.append(np.nan)
            counts[f] = rng.normal(size=n_pix) * 2.0
            variance[f] = 4.0
            continue
        star = next(source)
        gray[f] = rng.uniform(*gray_range)
        arriving = star.flux * (_telluric_transmission(star.wavelength) if telluric else 1.0)
        instrument = _observe(star.wavelength, arriving, wave2d[f], fwhm, fwhm_poly, star.resolution,
                              calibration, gray[f])
        snr = rng.uniform(*snr_range)
        counts[f], variance[f] = add_noise(rng, instrument, snr)
        true_flux[f] = instrument * calibration(wave2d[f])
        name = star.truth.get("name") or f"{'STD' if kind == 'C' else 'OBJ'}{f:03d}"
        names.append(name)
        fib_mags.append(star.mags.get("ps1_r", np.nan))
        star_truth.append(dict(fiber=f, type=kind, gray=gray[f], snr=snr, **{**star.truth, "name": name}))
        if kind == "C":
            sentinel = ("z",) if sentinels and rng.uniform() < 0.25 else ()
            rows.append(_catalog_row(1000 + f, ra + rng.normal(0, 0.1 / 3600), dec + rng.normal(0, 0.1 / 3600),
                                     star.mags, rng, star.truth.get("teff", 6000.0), sentinel))
    for k in range(n_field_stars):
        mags = {b: rng.uniform(14, 17) for b in {v[0] for v in REFCAT_BANDS.values()}}
        rows.append(_catalog_row(5000 + k, _FIELD_CENTRE[0] + rng.uniform(-0.7, 0.7),
                                 _FIELD_CENTRE[1] + rng.uniform(-0.7, 0.7), mags, rng, 6000.0))
    catalog = Table(rows=[[r[c] for c in _REFCAT_COLUMNS] for r in rows], names=_REFCAT_COLUMNS)
    catalog = catalog[rng.permutation(len(catalog))]
    is_std = np.array(types) == "C"
    std_gray = float(np.median(gray[is_std])) if is_std.any() else 1.0
    true_flux = np.where(np.array(types)[:, None] == "S", 0.0, true_flux / std_gray)
    hdulist = _red_hdulist(counts, variance, wave2d, types, names, ras, decs, fib_mags, fwhm, fwhm_poly, counts_unit)
    truth = dict(
        wavelength=common * u.AA,
        calibration=calibration(common) / std_gray,
        system_calibration=calibration(common),
        gray=gray,
        reference_gray=std_gray,
        true_flux=true_flux,
        stars=Table(rows=star_truth) if star_truth else Table(),
    )
    return SimulatedExposure(hdulist, catalog, truth)


def _fiber_types(rng, n_standards, n_science, n_sky):
    types = ["C"] * n_standards + ["P"] * n_science + ["S"] * n_sky
    return [types[i] for i in rng.permutation(len(types))]


def make_exposure(
    n_standards=8,
    n_science=6,
    n_sky=2,
    n_pix=4000,
    wave_range=(3600.0, 9800.0),
    fwhm=2.0,
    fwhm_poly=None,
    teff_range=(5300.0, 7700.0),
    logg_range=(3.9, 4.6),
    feh_range=(-0.9, 0.4),
    snr_range=(30.0, 150.0),
    ebv_range=(0.0, 0.1),
    gray_range=(0.7, 1.0),
    rv_range=(-100.0, 100.0),
    mag_range=(13.0, 15.5),
    telluric=True,
    calibration=default_throughput,
    wavelength_jitter=0.3,
    n_field_stars=5,
    sentinels=True,
    counts_unit="ct",
    seed=1,
):
    """Simulate a RED frame of stars and its Refcat2 catalogue, with known truth.

    Every star is SYNTHETIC (`synthetic_stellar_spectrum`) at random
    parameters between the grid nodes, so a grid written by `write_bosz_grid`
    with the same model contains templates near — but not at — each star.

    Parameters
    ----------
    n_standards, n_science, n_sky : int
        Fibers of TYPE 'C', 'P' (stars too, for checking) and 'S' (blank).
    n_pix : int
        Pixels per fiber over ``wave_range`` (Å, air).
    fwhm : float
        Instrument FWHM (Å), written as ``SPECFWHM``.
    fwhm_poly : sequence of float, optional
        FWHM(λ) = Σ c_k λ^k (Å), written as ``FWHMPCn`` and used instead of ``fwhm``.
    teff_range, logg_range, feh_range : tuple
        Uniform ranges of the stars' parameters.
    snr_range, ebv_range, gray_range, rv_range, mag_range : tuple
        Uniform ranges of the median S/N per pixel, E(B−V), gray aperture
        loss, radial velocity (km/s) and PS1 r magnitude.
    telluric : bool
        Imprint telluric bands.
    calibration : callable
        λ (Å) → true flux per count; `default_throughput` by default.
    wavelength_jitter : float
        Largest shift (pixels) of a fiber's wavelength row.
    n_field_stars : int
        Extra catalogue rows that are on no fiber.
    sentinels : bool
        Put missing-value sentinels in a few catalogue bands.
    counts_unit : str
        ``BUNIT`` of the frame.
    seed : int
        Random seed: the same seed gives the same exposure.

    Returns
    -------
    `SimulatedExposure`
    """
    from .extinction import reddening_factor

    rng = np.random.default_rng(seed)
    types = _fiber_types(rng, n_standards, n_science, n_sky)
    native_r = 20000.0
    native = bosz_wave_grid(native_r, (2800.0, 26500.0))
    stars = []
    for _ in range(n_standards + n_science):
        params = dict(teff=rng.uniform(*teff_range), logg=rng.uniform(*logg_range), feh=rng.uniform(*feh_range))
        rv = rng.uniform(*rv_range)
        ebv = rng.uniform(*ebv_range)
        surface, _ = synthetic_stellar_spectrum(native / (1 + rv / _C_KMS), resolution=native_r, **params)
        reddened = surface * reddening_factor(native, ebv)
        mags = refcat_band_magnitudes(native, reddened)
        r_mag = rng.uniform(*mag_range)
        scale = 10 ** (-0.4 * (r_mag - mags["ps1_r"]))
        mags = {b: m - 2.5 * np.log10(scale) for b, m in mags.items()}
        stars.append(_Star(native, scale * reddened, native_r, mags,
                           dict(rv_kms=rv, ebv=ebv, scale=scale, **params)))
    return _build_exposure(rng, stars, types, n_pix, wave_range, fwhm, fwhm_poly, snr_range, gray_range, telluric,
                           calibration, wavelength_jitter, n_field_stars, sentinels, counts_unit)


CALSPEC_TEFF = {
    "hd031128": 6600.0, "hd111980": 6250.0, "bd_17d4708": 6100.0,
    "hd209458": 6050.0, "p177d": 5900.0, "hd38949": 5950.0,
}
"""Approximate Teff (K) of the F/G CALSPEC stars, from their spectral types."""


def make_calspec_exposure(
    calspec_files,
    n_pix=621,
    wave_range=(3600.0, 9800.0),
    fwhm=30.0,
    snr_range=(50.0, 150.0),
    gray_range=(0.7, 1.0),
    telluric=True,
    calibration=default_throughput,
    seed=1,
):
    """A RED frame whose standards are real CALSPEC stars (Bohlin et al.).

    The stars' true flux is known, so the recovered calibration can be
    compared with the invented ``calibration``; the spectra were not made
    from any template grid. The catalogue photometry is computed from the
    CALSPEC spectra with realistic errors and noise.
    """
    rng = np.random.default_rng(seed)
    stars = []
    for path in calspec_files:
        wave, flux, resolution = read_calspec(path)
        mags = refcat_band_magnitudes(wave, flux)
        stem = Path(path).name.split("_stis")[0]
        stars.append(_Star(wave, flux, resolution or 800.0, mags,
                           dict(name=stem.upper(), teff=CALSPEC_TEFF.get(stem, 6000.0), source=str(Path(path).name))))
    types = ["C"] * len(stars)
    return _build_exposure(rng, stars, types, n_pix, wave_range, fwhm, None, snr_range, gray_range, telluric,
                               calibration, 0.2, 3, False, "ct")
