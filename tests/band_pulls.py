"""Band-flux pulls of calibrated targets whose true flux is known exactly (shared by tests and benchmarks).

A target is a smooth SYNTHETIC spectrum F_true(λ) observed through the
frame's true atmosphere and *true* calibration (counts = F_true · T_atm /
Cal_true, with Gaussian noise of the stated variance), calibrated with the
frame's derived calibration through `kspec_fluxcal.apply_flux_calibration`
and corrected with its measured telluric transmission; its band fluxes
are compared with those of F_true over the same pixels and weights. The
error of the result is the counts' noise plus the calibration's error —
what the stated σ must cover.
"""

import numpy as np
from astropy import units as u
from astropy.nddata import VarianceUncertainty
from specutils import Spectrum

from kspec_fluxcal import apply_flux_calibration, band_flux
from kspec_fluxcal.bandflux import band_weights
from kspec_fluxcal.containers import FLAM, spectrum_variance, telluric_covariance
from kspec_fluxcal.covariance import META_KEY
from kspec_fluxcal.telluric import apply_telluric_correction

BOX_BANDS = ((4000.0, 5400.0), (5500.0, 6800.0), (7000.0, 7550.0), (8400.0, 8900.0))
"""Box bands (Å) of the issue's table."""

FILTERS = ("ps1_g", "ps1_r", "ps1_i", "ps1_z")
"""Filters whose transmission-weighted means are checked."""


def band_label(band):
    """A short label of a band (a filter name or 'λ1–λ2')."""
    return band if isinstance(band, str) else f"{band[0]:.0f}-{band[1]:.0f}"


def _as_band(band):
    return band if isinstance(band, str) else (band[0] * u.AA, band[1] * u.AA)


def make_target(rng, wavelength, true_calibration, counts_unit, snr, atmosphere=1.0):
    """A target: (counts Spectrum, F_true in FLAM) on ``wavelength`` (Å) through ``atmosphere`` and
    ``true_calibration``."""
    slope = rng.uniform(-2.5, 0.5)
    true_flux = 1e-15 * (wavelength / 6000.0) ** slope * (1 + 0.05 * np.sin(wavelength / rng.uniform(300, 900)))
    clean = true_flux * atmosphere / true_calibration
    variance = (np.median(clean) / snr) ** 2 * (0.5 + 0.5 * clean / np.median(clean))
    counts = clean + rng.normal(size=clean.size) * np.sqrt(variance)
    spectrum = Spectrum(spectral_axis=wavelength * u.AA, flux=counts * counts_unit,
                        uncertainty=VarianceUncertainty(variance, unit=counts_unit**2))
    return spectrum, true_flux


def _telluric_corrected(spectrum, transmission):
    """``spectrum`` divided by the exposure's telluric transmission, as the pipeline does for its fibers
    (the bridging term cancels where T was measured: `kspec_fluxcal.containers.telluric_covariance`)."""
    wave = spectrum.spectral_axis.to_value(u.AA)
    covariance = spectrum.meta.get(META_KEY)
    flux, variance = apply_telluric_correction(spectrum.flux.to_value(FLAM),
                                               spectrum_variance(spectrum).to_value(FLAM**2), wave, transmission,
                                               covariance=covariance)
    meta = dict(spectrum.meta)
    if covariance is not None:
        meta[META_KEY] = telluric_covariance(covariance, transmission)
    return Spectrum(spectral_axis=spectrum.spectral_axis, flux=flux * FLAM,
                    uncertainty=VarianceUncertainty(variance, unit=FLAM**2),
                    mask=~np.isfinite(flux) | ~np.isfinite(variance), meta=meta)


def target_pulls(result, wavelength, true_calibration, rng, n_targets=3, snr=50.0, bands=BOX_BANDS + FILTERS,
                 atmosphere=1.0):
    """Pulls of band fluxes of ``n_targets`` targets calibrated with ``result``.

    Parameters
    ----------
    result : `~kspec_fluxcal.FluxCalibrationResult`
        The frame's calibration (with its covariance).
    wavelength, true_calibration : ndarray
        The target's pixels (Å) and the true calibration there (flux per count, the result's unit, at the
        result's level).
    atmosphere : ndarray or float
        The true telluric transmission at the pixels; the calibrated targets are corrected with the
        result's measured transmission when it has one (as the pipeline corrects its fibers).

    Returns
    -------
    dict
        band label → {'new': pulls with `band_flux`'s σ, 'old': pulls with √(wᵀ diag(V) w)}.
    """
    unit = (1 * result.combined_vector.unit).unit
    counts_unit = FLAM / unit
    out = {band_label(b): {"new": [], "old": []} for b in bands}
    for _ in range(n_targets):
        counts, true_flux = make_target(rng, wavelength, true_calibration, counts_unit, snr, atmosphere)
        calibrated = apply_flux_calibration(counts, result)
        if result.telluric is not None:
            calibrated = _telluric_corrected(calibrated, result.telluric)
        variance = spectrum_variance(calibrated).to_value(FLAM**2)
        flux = calibrated.flux.to_value(FLAM)
        good = ~calibrated.mask & np.isfinite(flux) & np.isfinite(variance)
        for band in bands:
            value, sigma = band_flux(calibrated, _as_band(band))
            weights = band_weights(wavelength[good], _as_band(band))
            truth = weights @ true_flux[good]
            naive = np.sqrt(np.sum(weights**2 * variance[good]))
            out[band_label(band)]["new"].append((value.to_value(FLAM) - truth) / sigma.to_value(FLAM))
            out[band_label(band)]["old"].append((value.to_value(FLAM) - truth) / naive)
    return out


def pooled_rms(pulls, kind, bands=None):
    """rms of the pulls of ``kind`` ('new' or 'old') pooled over ``bands`` (default all)."""
    values = [v for label, d in pulls.items() if bands is None or label in bands for v in d[kind]]
    return float(np.sqrt(np.mean(np.square(values))))
