"""Apply a calibration to every fiber of a frame, propagating the variance.

For counts C with variance V and a calibration K with variance V_K, the
calibrated flux is F = C·K with variance V_F = V·K² + C²·V_K (first order,
independent errors). Where the calibration is undefined the result is NaN,
never 0.
"""

import numpy as np
from astropy import units as u
from specutils import Spectrum, SpectrumList

from .containers import FLAM, CalibrationVector, FluxCalibrationResult
from .exceptions import InputDataError

__all__ = ["apply_flux_calibration", "calibration_on_grid", "update_calibration_header"]


def calibration_on_grid(calibration, wavelength):
    """Interpolate a calibration vector onto ``wavelength`` (any shape, Å).

    Returns (factor, variance, mask) as plain arrays in the vector's unit; a
    pixel that touches a masked sample of the vector, or lies outside it, is
    masked.
    """
    wave_cal = calibration.wavelength.to_value(u.AA)
    factor = calibration.cal_factor.value
    variance = calibration.cal_variance.value
    bad = calibration.mask | ~np.isfinite(factor) | ~np.isfinite(variance)
    wave = u.Quantity(wavelength, u.AA).to_value(u.AA)
    flat = wave.ravel()
    with np.errstate(invalid="ignore"):
        out_factor = np.interp(flat, wave_cal, np.where(bad, 0.0, factor))
        out_var = np.interp(flat, wave_cal, np.where(bad, 0.0, variance))
        out_bad = np.interp(flat, wave_cal, bad.astype(float)) > 0
    out_bad |= (flat < wave_cal[0]) | (flat > wave_cal[-1]) | ~np.isfinite(flat)
    shape = wave.shape
    return out_factor.reshape(shape), out_var.reshape(shape), out_bad.reshape(shape)


def apply_flux_calibration(spectra, variance=None, calibration=None, wavelength=None, update_header=None,
                           counts_unit=None):
    """Calibrate a frame of spectra.

    The documented path is specutils: ``apply_flux_calibration(spectrum, calibration)``
    with a 1-D or 2-D (fibers × pixels) `~specutils.Spectrum` or a
    `~specutils.SpectrumList` returns the same kind of object (see
    `kspec_fluxcal.spectrum_apply.calibrate_spectra`; the second positional
    argument is then the calibration). Arrays and Quantities are accepted as
    below and return ``(flux, flux_variance)``.

    Parameters
    ----------
    spectra : `~specutils.Spectrum`, `~specutils.SpectrumList`, `~astropy.units.Quantity` or ndarray
        Counts (ct or ct/s, matching the calibration's denominator), shape
        (NFIB, NPIX) or (NPIX, NFIB) for arrays. Plain arrays take
        ``counts_unit`` (default: the calibration's denominator).
    variance : `~astropy.units.Quantity` or ndarray
        Variance of array ``spectra``, same shape. (For a spectrum: the
        calibration, when ``calibration`` is not given.)
    calibration : `~kspec_fluxcal.containers.CalibrationVector` or `~kspec_fluxcal.containers.FluxCalibrationResult`
        The calibration (a result's combined vector is used).
    wavelength : `~astropy.units.Quantity` or ndarray, optional
        Each fiber's wavelengths (same shape as ``spectra``) or one shared axis
        (NPIX,), Å. Default: the calibration's own grid, which then must have
        NPIX samples.
    update_header : `~astropy.io.fits.Header`, optional
        Receives ``FLUXCAL``, ``BUNIT``, ``FCALNSTR``, ``FCALRMS``.
    counts_unit : str or `~astropy.units.Unit`, optional
        Unit of plain-array counts.

    Returns
    -------
    flux, flux_variance : `~astropy.units.Quantity`
        Same shape and layout as ``spectra``, in erg s⁻¹ cm⁻² Å⁻¹ (and its
        square); NaN where the calibration is undefined or the input is not
        finite. For `~specutils.Spectrum` / `~specutils.SpectrumList` input,
        one object of the same kind instead.
    """
    if isinstance(spectra, (Spectrum, SpectrumList)):
        from .spectrum_apply import calibrate_spectra

        return calibrate_spectra(spectra, variance if calibration is None else calibration)
    result = calibration if isinstance(calibration, FluxCalibrationResult) else None
    if result is not None:
        calibration = result.combined_vector
    if not isinstance(calibration, CalibrationVector):
        raise InputDataError("calibration must be a CalibrationVector or a FluxCalibrationResult.")
    cal_unit = calibration.unit
    counts_per = (FLAM / cal_unit).decompose()
    default_counts = FLAM / cal_unit
    counts = _as_counts(spectra, counts_unit or default_counts, "spectra")
    var = _as_counts(variance, counts.unit**2, "variance")
    if var.shape != counts.shape:
        raise InputDataError(f"variance has shape {var.shape} but spectra have shape {counts.shape}.")
    if counts.ndim == 1:
        counts, var = counts[None, :], var[None, :]
    if counts.ndim != 2:
        raise InputDataError(f"spectra must be 1-D or 2-D; got shape {counts.shape}.")
    out_unit = counts.unit * cal_unit
    if not out_unit.is_equivalent(FLAM):
        raise u.UnitsError(
            f"counts in '{counts.unit}' times a calibration in '{cal_unit}' is not a flux density; "
            f"the calibration expects counts in '{counts_per}'."
        )
    wave = _fiber_wavelengths(wavelength, calibration, counts.shape)
    transposed = wave.shape != counts.shape
    c = counts.value.T if transposed else counts.value
    v = var.value.T if transposed else var.value
    if wave.shape != c.shape:
        raise InputDataError(
            f"wavelength shape {wave.shape} fits neither spectra {counts.shape} nor its transpose."
        )
    factor, fvar, bad = calibration_on_grid(calibration, wave)
    bad = bad | ~np.isfinite(c) | ~np.isfinite(v) | (v < 0)
    flux = np.where(bad, np.nan, c * factor)
    flux_var = np.where(bad, np.nan, v * factor**2 + c**2 * fvar)
    if transposed:
        flux, flux_var = flux.T, flux_var.T
    if spectra is not None and np.ndim(spectra) == 1:
        flux, flux_var = flux[0], flux_var[0]
    scale = out_unit.to(FLAM)
    if update_header is not None:
        update_calibration_header(update_header, result or calibration)
    return flux * scale * FLAM, flux_var * scale**2 * FLAM**2


def _as_counts(value, unit, name):
    if isinstance(value, u.Quantity):
        return value.astype(float)
    return np.asarray(value, dtype=float) * u.Unit(unit)


def _fiber_wavelengths(wavelength, calibration, shape):
    """A (NFIB, NPIX)-like wavelength array for the counts of ``shape``."""
    if wavelength is None:
        wave = calibration.wavelength.to_value(u.AA)
    else:
        wave = u.Quantity(wavelength, u.AA).to_value(u.AA)
    if wave.ndim == 1:
        if shape[-1] == wave.size:
            return np.broadcast_to(wave, shape)
        if shape[0] == wave.size:
            return np.broadcast_to(wave, shape[::-1])
        raise InputDataError(
            f"a shared wavelength axis of {wave.size} samples fits neither axis of spectra {shape}."
        )
    return wave


def update_calibration_header(header, calibration):
    """Write the calibration keywords of DESIGN.md into a FITS header."""
    header["FLUXCAL"] = (True, "flux calibrated by kspec_fluxcal")
    header["BUNIT"] = (FLAM.to_string(), "calibrated flux density")
    if isinstance(calibration, FluxCalibrationResult):
        summary = calibration.summary
        header["FCALNSTR"] = (int(summary.get("n_stars_used", 0)), "standard stars used")
        rms = summary.get("rms_scatter")
        header["FCALRMS"] = (float(rms) if rms is not None and np.isfinite(rms) else -1.0,
                             "rms scatter between standards (-1: one)")
        header["FCALFORM"] = (summary.get("representation", "pixel"), "form of the applied vector")
    return header
