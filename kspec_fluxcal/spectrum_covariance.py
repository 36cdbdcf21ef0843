"""A calibrated spectrum's stored calibration covariance and the error of weighted means of its pixels.

The building block of `kspec_fluxcal.bandflux` and of the magnitude errors
of `~kspec_fluxcal.synthetic_photometry`: see `kspec_fluxcal.bandflux` for
the formula.
"""

import numpy as np
from astropy import units as u
from specutils import Spectrum

from .containers import FLAM, spectrum_variance
from .covariance import META_KEY
from .exceptions import InputDataError, MissingCovarianceError

__all__ = ["stored_covariance", "flux_arrays", "weighted_mean"]


def stored_covariance(spectrum):
    """The `~kspec_fluxcal.covariance.CalibrationCovariance` a calibrated spectrum carries.

    Raises
    ------
    MissingCovarianceError
        The spectrum's ``meta`` holds none.
    """
    covariance = (spectrum.meta or {}).get(META_KEY)
    if covariance is None:
        raise MissingCovarianceError(
            "this spectrum carries no calibration covariance (meta['fluxcal_covariance']), so the correlated "
            "part of its error is unknown and a band error would be too small. Use a spectrum calibrated by "
            "this version (apply_flux_calibration with a FluxCalibrationResult, or SpectrumList.read of a RED "
            "file calibrated with its FCALCOV extension); recalibrate older files."
        )
    return covariance


def flux_arrays(spectrum):
    """(wavelength Å, flux in FLAM, variance in FLAM², bad) of a calibrated spectrum; the last three 2-D
    (n_row, n_pix)."""
    if not isinstance(spectrum, Spectrum):
        raise InputDataError(f"a band flux needs a calibrated specutils Spectrum; got {type(spectrum).__name__}.")
    wave = spectrum.spectral_axis.view(u.Quantity).to_value(u.AA)
    try:
        scale = (1.0 * spectrum.flux.unit).to_value(FLAM, equivalencies=u.spectral_density(wave * u.AA))
    except u.UnitConversionError as exc:
        raise InputDataError(
            f"the spectrum's flux is in '{spectrum.flux.unit}', not a flux density; calibrate it first "
            "(apply_flux_calibration)."
        ) from exc
    variance = spectrum_variance(spectrum)
    if variance is None:
        raise InputDataError("the spectrum has no uncertainty; a band flux needs its variance.")
    flux = np.asarray(spectrum.flux.value, dtype=float) * scale
    var = np.asarray(variance.value, dtype=float) * scale**2
    mask = np.zeros(flux.shape, bool) if spectrum.mask is None else np.asarray(spectrum.mask, dtype=bool)
    bad = mask | ~np.isfinite(flux) | ~np.isfinite(var) | (var < 0)
    return wave, np.atleast_2d(flux), np.atleast_2d(var), np.atleast_2d(bad)


def weighted_mean(wave, flux, var, bad, covariance, weights_for):
    """A weighted mean of one row of calibrated pixels and its σ with the calibration's correlated error.

    Parameters
    ----------
    wave, flux, var, bad : ndarray
        One row of `flux_arrays`.
    covariance : `~kspec_fluxcal.covariance.CalibrationCovariance`
        The calibration's covariance.
    weights_for : callable
        Usable wavelengths (Å) → one weight each.

    Returns
    -------
    float, float
        The mean and its σ (FLAM).
    """
    good = ~bad
    w_good = wave[good]
    f = flux[good]
    weights = weights_for(w_good)
    use = weights != 0
    w, f, v, lam = weights[use], f[use], var[good][use], w_good[use]
    independent, factor = covariance.factors(lam)
    if not (np.all(np.isfinite(independent)) and np.all(np.isfinite(factor))):
        raise InputDataError("the band reaches outside the calibration's defined range; choose a narrower band.")
    calibration_var = f**2 * (independent + np.sum(factor**2, axis=1))
    pixel = np.maximum(v - calibration_var, 0.0)
    wf = w * f
    correlated = factor.T @ wf
    sigma2 = np.sum(w**2 * pixel) + np.sum(wf**2 * independent) + correlated @ correlated
    return float(w @ f), float(np.sqrt(sigma2))


