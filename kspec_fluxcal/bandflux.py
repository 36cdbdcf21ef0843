"""Band fluxes of calibrated spectra with error bars that include the calibration's correlated error.

The variance of a calibrated pixel is V·K² + C²·V_K: the counts' noise and
the calibration's. The first is independent from pixel to pixel; most of
the second is not (`kspec_fluxcal.covariance`). A mean over N pixels
therefore has the variance

.. math::

    \\sigma^2 = \\mathbf w^\\top\\,\\mathrm{diag}(V_\\mathrm{pix})\\,\\mathbf w
              + (\\mathbf w F)^\\top R\\,(\\mathbf w F),

with ``w`` the band's weights, ``F`` the calibrated flux and ``R`` the
covariance of ln(Cal): the calibration is multiplicative, so its
contribution to the flux covariance is diag(F) R diag(F). ``V_pix`` is the
spectrum's variance minus the calibration's own per-pixel part F²·diag(R),
so nothing is counted twice. The square root of the summed per-pixel
variance — what specutils and astropy give for a mean — is too small by
about √N for the correlated part.
"""

import numpy as np
from astropy import units as u

from .containers import FLAM
from .exceptions import InputDataError
from .spectrum_covariance import flux_arrays, stored_covariance, weighted_mean

__all__ = ["band_flux", "band_weights", "flux_covariance", "relative_band_error"]


def band_weights(wavelength, band):
    """Weights (summing to 1) of a band's mean flux density over the samples ``wavelength``.

    Parameters
    ----------
    wavelength : ndarray
        Increasing wavelengths (Å) of the usable pixels.
    band : str or (`~astropy.units.Quantity`, `~astropy.units.Quantity`)
        A registered filter (`kspec_fluxcal.photometry.registered_bands`): the
        photon-counting transmission-weighted mean ∫F T λ dλ / ∫T λ dλ, F
        linear between samples as in `~kspec_fluxcal.synthetic_photometry`;
        or a box (λ1, λ2): the plain mean over the pixels inside.

    Returns
    -------
    ndarray
        One weight per sample.
    """
    wave = np.asarray(wavelength, dtype=float)
    if isinstance(band, (tuple, list)):
        message = (f"a box band is a pair of wavelength Quantities (λ1, λ2), e.g. (5500 * u.AA, 6800 * u.AA); "
                   f"got {band!r}.")
        if len(band) != 2 or not all(isinstance(b, u.Quantity) for b in band):
            raise InputDataError(message)
        try:
            lo, hi = (b.to_value(u.AA, equivalencies=u.spectral()) for b in band)
        except u.UnitsError as exc:
            raise InputDataError(message) from exc
        lo, hi = min(lo, hi), max(lo, hi)
        inside = (wave >= lo) & (wave <= hi)
        if not inside.any():
            raise InputDataError(f"no usable pixel of the spectrum lies inside {lo:.1f}–{hi:.1f} Å.")
        return inside / np.count_nonzero(inside)
    from .photometry.synthetic import band_flux_weights

    if wave.size < 2:
        raise InputDataError("the spectrum has fewer than 2 usable pixels.")
    weights = band_flux_weights(wave, band)
    if weights is None:
        raise InputDataError(
            f"the spectrum's usable pixels ({wave[0]:.1f}–{wave[-1]:.1f} Å) do not cover band {band!r}; "
            "choose a band inside the spectrum."
        )
    return weights / np.sum(weights)


def band_flux(spectrum, band):
    """Mean flux density of a calibrated spectrum over a band, with its error.

    Parameters
    ----------
    spectrum : `~specutils.Spectrum`
        A calibrated spectrum (1-D, or 2-D fibers × pixels) that carries its
        calibration's covariance in ``meta['fluxcal_covariance']``: the
        output of `~kspec_fluxcal.apply_flux_calibration` with a
        `~kspec_fluxcal.FluxCalibrationResult`, or a fiber read with
        ``SpectrumList.read(path, format="KSPEC-RED")`` from a calibrated
        RED file. Masked and non-finite pixels are left out.
    band : str or (`~astropy.units.Quantity`, `~astropy.units.Quantity`)
        A registered filter name (e.g. ``'ps1_r'``): the transmission-weighted
        (photon-counting) mean; or a box (λ1, λ2): the plain mean of the
        pixels inside.

    Returns
    -------
    flux, sigma : `~astropy.units.Quantity`
        In erg s⁻¹ cm⁻² Å⁻¹ (arrays, one per row, for a 2-D spectrum).
        ``sigma`` includes the pixel noise and the calibration's correlated
        error (module docstring).

    Raises
    ------
    MissingCovarianceError
        The spectrum carries no calibration covariance.
    InputDataError
        The flux is not a flux density, or the band is not covered.

    Examples
    --------
    >>> from astropy import units as u
    >>> flux, sigma = band_flux(calibrated, (5500 * u.AA, 6800 * u.AA))  # doctest: +SKIP
    """
    covariance = stored_covariance(spectrum)
    wave, flux, var, bad = flux_arrays(spectrum)
    values = np.array([weighted_mean(wave, flux[i], var[i], bad[i], covariance, lambda w: band_weights(w, band))
                       for i in range(flux.shape[0])])
    if np.ndim(spectrum.flux) == 1:
        return values[0, 0] * FLAM, values[0, 1] * FLAM
    return values[:, 0] * FLAM, values[:, 1] * FLAM


def relative_band_error(spectrum, band):
    """σ/flux of `band_flux` (dimensionless), NaN where the band flux is not positive."""
    flux, sigma = band_flux(spectrum, band)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux.value > 0, sigma.value / flux.value, np.nan)


def flux_covariance(spectrum, wavelength_range=None, calibration_only=False):
    """The covariance of a calibrated spectrum's flux over a wavelength range, as an `astropy.nddata.Covariance`.

    Parameters
    ----------
    spectrum : `~specutils.Spectrum`
        A 1-D calibrated spectrum carrying its calibration's covariance (see `band_flux`).
    wavelength_range : (`~astropy.units.Quantity`, `~astropy.units.Quantity`), optional
        The pixels inside (default: every usable pixel). Masked and
        non-finite pixels are left out.
    calibration_only : bool
        Only the calibration's part diag(F) R diag(F), without the pixel noise.

    Returns
    -------
    `~astropy.nddata.Covariance`
        (n, n) in (erg s⁻¹ cm⁻² Å⁻¹)², over the pixels listed by its
        ``meta['wavelength']`` (Quantity, Å) — use them for colours, line
        ratios or continuum slopes (``Covariance.from_matrix_multiplication``).
    """
    from astropy.nddata import Covariance

    covariance = stored_covariance(spectrum)
    if np.ndim(spectrum.flux) != 1:
        raise InputDataError("flux_covariance takes one fiber (a 1-D Spectrum); index the 2-D spectrum first.")
    wave, flux, var, bad = flux_arrays(spectrum)
    flux, var, bad = flux[0], var[0], bad[0]
    sel = ~bad
    if wavelength_range is not None:
        lo, hi = sorted(u.Quantity(b).to_value(u.AA, equivalencies=u.spectral()) for b in wavelength_range)
        sel &= (wave >= lo) & (wave <= hi)
    if not sel.any():
        raise InputDataError("no usable pixel inside the wavelength range.")
    lam, f, v = wave[sel], flux[sel], var[sel]
    relative = covariance.to_dense(lam)
    if not np.all(np.isfinite(relative)):
        raise InputDataError("the range reaches outside the calibration's defined range; narrow it.")
    dense = f[:, None] * relative * f[None, :]
    if not calibration_only:
        dense[np.diag_indices_from(dense)] += np.maximum(v - np.diag(dense), 0.0)
    result = Covariance(array=dense, unit=FLAM**2)
    result.meta = {"wavelength": lam * u.AA}
    return result
