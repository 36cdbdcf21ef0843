"""Synthetic photometry: photon-counting AB magnitudes of spectra through registered bands.

.. math:: f_\\nu = \\frac{\\int f_\\lambda\\,T\\,\\lambda\\,d\\lambda}{\\int T\\,(c/\\lambda)\\,d\\lambda}

A spectrum that does not cover the whole non-zero part of a band gives NaN
(with a `~kspec_fluxcal.PartialBandpassWarning`), never a partial integral.
`band_flux_weights` and `band_flux_matrix` give the same integrals as
matrices for whole template grids.
"""

import logging
import math
import warnings

import numpy as np
from astropy import units as u

from ..containers import FLAM, as_wavelength, validate_spectrum
from ..exceptions import InputDataError, PartialBandpassWarning
from .ab import AB_ZERO_POINT, FNU
from .filters import band_arrays, band_label

__all__ = ["band_flux_weights", "band_flux_matrix", "synthetic_photometry", "synthetic_color"]

log = logging.getLogger(__name__)


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
    wave = as_wavelength(wavelength, "wavelength")
    band_wave, band_trans, denom = band_arrays(name)
    if not _covers(wave, band_wave):
        return None
    return _weights(wave, band_wave, band_trans, denom)


def band_flux_matrix(wavelength, names):
    """Stack of `band_flux_weights` rows, shape (n_bands, n_wave).

    ``flux @ matrix.T`` gives the f_ν of many spectra (rows of ``flux``, f_λ in
    erg s⁻¹ cm⁻² Å⁻¹) in all bands at once. Rows of bands that ``wavelength``
    does not cover are NaN.
    """
    wave = as_wavelength(wavelength, "wavelength")
    matrix = np.full((len(names), wave.size), np.nan)
    for i, name in enumerate(names):
        weights = band_flux_weights(wave, name)
        if weights is not None:
            matrix[i] = weights
    return matrix


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


def _magnitude_error(spectrum, band):
    """1σ (mag) of a band's magnitude from the pixel noise and the calibration's correlated error."""
    from ..spectrum_covariance import flux_arrays, stored_covariance, weighted_mean

    covariance = stored_covariance(spectrum)
    wave, flux, var, bad = flux_arrays(spectrum)
    mean, sigma = weighted_mean(wave, flux[0], var[0], bad[0], covariance, lambda w: band_flux_weights(w, band))
    return 2.5 / math.log(10) * sigma / mean if mean > 0 else np.nan


def _one_magnitude(wave, flam, band, strict):
    from synphot import Observation, SourceSpectrum, SpectralElement
    from synphot.models import Empirical1D

    band_wave, band_trans, _ = band_arrays(band)
    if not _covers(wave, band_wave):
        message = (
            f"spectrum ({wave[0]:.1f}–{wave[-1]:.1f} Å) does not cover band {band_label(band)} "
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
        log.debug("band %s: mean flux %g is not positive; magnitude NaN", band_label(band), fnu)
        return np.nan
    return -2.5 * math.log10(fnu) - AB_ZERO_POINT


def synthetic_photometry(spectrum, band, strict=False, return_error=False):
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
    return_error : bool
        Also return each magnitude's 1σ error, from the pixel noise and the
        calibration's correlated error (`kspec_fluxcal.band_flux`; the
        spectrum must be calibrated and carry its calibration covariance,
        else `~kspec_fluxcal.MissingCovarianceError`).

    Returns
    -------
    `~astropy.units.Magnitude`
        AB magnitude(s) in ``u.ABmag`` (like `~kspec_fluxcal.photometry.fnu_to_ab_mag`),
        a scalar for one band, an array for a list; ``.value`` gives plain
        floats. NaN for a band the spectrum does not cover (with a
        `~kspec_fluxcal.PartialBandpassWarning`) or where the band flux is not
        positive.
    `~astropy.units.Quantity`
        With ``return_error``: the magnitude errors in ``u.mag``,
        2.5 / ln 10 · σ/f of the band's mean flux (NaN where the magnitude is).
    """
    wave, flam = _spectrum_flam(spectrum)
    bands = list(band) if isinstance(band, (list, tuple)) else [band]
    mags = np.array([_one_magnitude(wave, flam, b, strict) for b in bands])
    if return_error:
        errors = np.array([_magnitude_error(spectrum, b) if np.isfinite(m) else np.nan for b, m in zip(bands, mags)])
        if not isinstance(band, (list, tuple)):
            return mags[0] * u.ABmag, float(errors[0]) * u.mag
        return mags * u.ABmag, errors * u.mag
    if isinstance(band, (list, tuple)):
        return mags * u.ABmag
    return mags[0] * u.ABmag


def synthetic_color(spectrum, band1, band2, strict=False):
    """Synthetic AB colour ``band1 − band2`` of a spectrum, a Quantity in ``u.mag``; NaN if a band is not covered."""
    mags = synthetic_photometry(spectrum, [band1, band2], strict=strict).value
    return float(mags[0] - mags[1]) * u.mag
