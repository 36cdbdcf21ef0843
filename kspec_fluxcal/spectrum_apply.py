"""Apply a calibration to specutils spectra: `~specutils.Spectrum` (1-D or 2-D) and `~specutils.SpectrumList`.

`kspec_fluxcal.apply.apply_flux_calibration` hands `~specutils.Spectrum`
and `~specutils.SpectrumList` input over to `calibrate_spectra`, which
returns the same kind of object: flux in erg s⁻¹ cm⁻² Å⁻¹, the variance
propagated (V_F = V·K² + C²·V_K) as a `~astropy.nddata.VarianceUncertainty`,
mask True where the input was masked or the calibration is undefined.
"""

import numpy as np
from astropy import units as u
from astropy.nddata import VarianceUncertainty
from specutils import Spectrum, SpectrumList

from .containers import FLAM, CalibrationVector, FluxCalibrationResult, spectrum_variance
from .exceptions import InputDataError

__all__ = ["calibrate_spectra"]


def _calibration(calibration):
    if isinstance(calibration, Spectrum):
        return CalibrationVector.from_spectrum(calibration)
    if isinstance(calibration, (CalibrationVector, FluxCalibrationResult)):
        return calibration
    raise InputDataError(
        "calibration must be a CalibrationVector, a FluxCalibrationResult or a calibration Spectrum "
        f"(Spectrum.read(path, format='KSPEC-FLUXCAL')); got {type(calibration).__name__}."
    )


def _for_units(calibration, counts_unit, header):
    """The calibration in the unit the counts need (per ct ↔ per ct/s by the exposure times)."""
    if not isinstance(calibration, FluxCalibrationResult):
        return calibration
    from .products import calibration_for_frame, header_exptime

    return calibration_for_frame(calibration, counts_unit, header_exptime(header or {}))


def _check(spectrum):
    if not isinstance(spectrum, Spectrum):
        raise InputDataError(f"every element of a SpectrumList must be a Spectrum; got {type(spectrum).__name__}.")
    if spectrum.flux.ndim not in (1, 2):
        raise InputDataError(f"a Spectrum to calibrate must be 1-D or 2-D (fibers, pixels); got {spectrum.flux.shape}.")


def _variance(spectrum):
    variance = spectrum_variance(spectrum)
    return np.zeros(spectrum.flux.shape) * spectrum.flux.unit**2 if variance is None else variance


def _wrap(spectrum, flux, flux_var, calibration):
    """The calibrated `~specutils.Spectrum` of ``spectrum`` from its calibrated flux and variance."""
    from .apply import update_calibration_header

    meta = dict(spectrum.meta or {})
    mask = ~np.isfinite(flux.value) | ~np.isfinite(flux_var.value)
    if spectrum.mask is not None:
        mask |= np.asarray(spectrum.mask, dtype=bool)
    if meta.get("header") is not None:
        meta["header"] = update_calibration_header(meta["header"].copy(), calibration)
    return Spectrum(
        spectral_axis=spectrum.spectral_axis.view(u.Quantity).to(u.AA),
        flux=flux,
        uncertainty=VarianceUncertainty(flux_var.value, unit=flux_var.unit),
        mask=mask,
        meta=meta,
    )


def _calibrate_one(spectrum, calibration):
    from .apply import apply_flux_calibration

    _check(spectrum)
    calibration = _for_units(calibration, spectrum.flux.unit, (spectrum.meta or {}).get("header"))
    wave = spectrum.spectral_axis.view(u.Quantity).to(u.AA)
    flux, flux_var = apply_flux_calibration(spectrum.flux, _variance(spectrum), calibration, wavelength=wave)
    return _wrap(spectrum, flux, flux_var, calibration)


def _calibrate_list(spectra, calibration):
    """Fibers of one length and unit are calibrated as one stack; others one by one."""
    from .apply import apply_flux_calibration

    for spectrum in spectra:
        _check(spectrum)
    first = spectra[0] if len(spectra) else None
    vector = calibration.combined_vector if isinstance(calibration, FluxCalibrationResult) else calibration
    stackable = first is not None and all(
        s.flux.ndim == 1 and s.flux.shape == first.flux.shape and s.flux.unit == first.flux.unit for s in spectra
    ) and (first.flux.unit * vector.unit).is_equivalent(FLAM)  # no per-fiber exposure-time conversion needed
    if not stackable:
        return SpectrumList([_calibrate_one(s, calibration) for s in spectra])
    flux = u.Quantity([s.flux for s in spectra])
    variance = u.Quantity([_variance(s).to(first.flux.unit**2) for s in spectra])
    wave = u.Quantity([s.spectral_axis.view(u.Quantity).to(u.AA) for s in spectra])
    out_flux, out_var = apply_flux_calibration(flux, variance, calibration, wavelength=wave)
    return SpectrumList([_wrap(s, out_flux[i], out_var[i], calibration) for i, s in enumerate(spectra)])


def calibrate_spectra(spectra, calibration):
    """Calibrate a `~specutils.Spectrum` (1-D, or 2-D fibers × pixels) or a `~specutils.SpectrumList`.

    Parameters
    ----------
    spectra : `~specutils.Spectrum` or `~specutils.SpectrumList`
        Counts (ct, electron, adu … or per second) on a wavelength axis.
        The variance is taken from the uncertainty (none counts as zero).
        Fibers of a list that share length and unit are calibrated as one
        stack.
    calibration : `~kspec_fluxcal.containers.CalibrationVector`, `~kspec_fluxcal.containers.FluxCalibrationResult` \
or `~specutils.Spectrum`
        The calibration. A result is converted between per count and per
        count/s with the exposure time of ``meta['header']`` (``EXPTIME``)
        when the units need it.

    Returns
    -------
    `~specutils.Spectrum` or `~specutils.SpectrumList`
        The same kind as ``spectra``: flux in erg s⁻¹ cm⁻² Å⁻¹ (NaN where
        the calibration is undefined), `~astropy.nddata.VarianceUncertainty`
        propagated, mask True where the input was masked or the result is
        undefined; ``meta`` copied, with ``meta['header']`` (when present)
        carrying ``FLUXCAL``, ``BUNIT``, ``FCALNSTR``, ``FCALRMS``.
    """
    calibration = _calibration(calibration)
    if isinstance(spectra, SpectrumList):
        return _calibrate_list(spectra, calibration)
    return _calibrate_one(spectra, calibration)
