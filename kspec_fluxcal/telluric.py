"""Telluric absorption measured on an exposure's own standards, and its correction.

The standards of an exposure look through the same air as every other fiber.
Inside the telluric windows (``telluric_default``) the calibration vector of a
star is the smooth throughput bridged across the window, so the star's own
transmission is

    T_i(λ) = counts_i(λ) · S_i(λ) / M_i(λ)

with M_i the star's scaled, reddened, Doppler-shifted and LSF-matched model
and S_i its smooth calibration (flux per count). Everything is in the
observed frame: telluric lines do not move with the stars' radial velocities,
the stellar lines do and the model removes them. T is measured on the
instrument's pixels, so it is at the instrument's resolution. The stars'
estimates are combined per pixel by an inverse-variance weighted mean with
iterative clipping about the median; the variance is the formal one, scaled
by the (locally averaged) reduced χ² of the stars about the mean when that
exceeds 1.

Only windows where absorption is detected (``min_depth`` and
``detect_sigma``) are corrected; elsewhere T = 1 with zero variance, so a
frame without telluric absorption is left unchanged. Pixels with T below
``min_transmission`` (0.2) are masked (True = bad): a corrected frame is NaN
there.

Correcting a frame divides flux and variance: F' = F/T and
V' = V/T² + F² V_T / T⁴. The header then carries ``TELCOR = T``; a frame with
``TELCOR = T`` is never corrected a second time
(`~kspec_fluxcal.exceptions.TelluricCorrectedError`).
"""

import logging
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from scipy.interpolate import make_interp_spline
from scipy.ndimage import uniform_filter1d

from .containers import MIN_TRANSMISSION, TelluricTransmission, telluric_window_string
from .exceptions import CalibrationError, InputDataError, TelluricCorrectedError
from .io.header import set_card

__all__ = [
    "derive_telluric_transmission",
    "combine_transmissions",
    "transmission_on_grid",
    "apply_telluric_correction",
    "telluric_header",
    "check_not_corrected",
    "transmission_to_apply",
    "read_transmission",
]

log = logging.getLogger(__name__)

def _star_transmission(spectrum, match, grid, scale, vector, out, windows, extinction, r_v):
    """One star's transmission and variance on ``out`` (Å): counts × smooth calibration / expected flux.

    Only the star's pixels in the windows (and 3 beyond each edge) are used;
    they are moved onto ``out`` with a cubic spline (the lines are barely
    sampled; linear interpolation would fill them). NaN outside the windows.
    """
    from .calibration import expected_flux
    from .containers import spectrum_variance

    wave_all = spectrum.spectral_axis.to_value(u.AA)
    near = np.zeros(wave_all.size, dtype=bool)
    for a, b in windows:
        lo, hi = np.searchsorted(wave_all, [a, b])
        near[max(lo - 3, 0):hi + 3] = True
    nan = np.full(out.size, np.nan)
    if np.count_nonzero(near) < 10:
        return nan, nan
    wave = wave_all[near]
    counts = spectrum.flux.value[near]
    var = spectrum_variance(spectrum).value[near]
    bad = np.asarray(spectrum.mask, dtype=bool)[near] if spectrum.mask is not None else np.zeros(wave.size, bool)
    _, expected, _ = expected_flux(wave, match, grid, scale, extinction, r_v)
    smooth = np.interp(wave, vector.wavelength.to_value(u.AA), vector.smooth_factor.value)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = counts * smooth / expected
        t_var = t**2 * var / counts**2
    ok = ~bad & np.isfinite(t) & np.isfinite(t_var) & (t_var > 0) & (counts > 0) & (expected > 0)
    if np.count_nonzero(ok) < 10:
        return nan, nan
    filled_t = np.interp(wave, wave[ok], t[ok])
    t_out = make_interp_spline(wave, filled_t, k=3)(out)
    v_out = np.interp(out, wave[ok], t_var[ok])
    bad_out = (np.interp(out, wave, (~ok).astype(float)) > 0) | (out < wave[0]) | (out > wave[-1])
    return np.where(bad_out, np.nan, t_out), np.where(bad_out, np.nan, v_out)


def combine_transmissions(values, variances, clip_sigma=4.0, max_iter=5, chi2_window=25):
    """Combine per-star transmissions pixel by pixel: clipped inverse-variance weighted mean.

    Parameters
    ----------
    values, variances : ndarray, shape (n_star, n_pix)
        Each star's transmission and variance (NaN where not measured).
    clip_sigma : float
        A star deviating from the pixel's median by more than this many σ
        (its own variance plus that of the median) is left out of that pixel.
    max_iter : int
        Most clipping passes.
    chi2_window : int
        Pixels of the running mean of the reduced χ² that scales the variance.

    Returns
    -------
    mean, variance : ndarray, shape (n_pix,)
        NaN where no star measured the pixel.
    n_used : ndarray of int, shape (n_pix,)
        Stars used at each pixel.
    """
    values = np.atleast_2d(np.asarray(values, dtype=float))
    variances = np.atleast_2d(np.asarray(variances, dtype=float))
    good = np.isfinite(values) & np.isfinite(variances) & (variances > 0)
    use = good.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(max_iter):
            w = np.where(use, 1.0 / np.where(good, variances, 1.0), 0.0)
            wsum = w.sum(axis=0)
            mean = np.sum(w * np.where(use, values, 0.0), axis=0) / wsum
            centre = mean
            if values.shape[0] > 2:
                centre = np.sort(np.where(use, values, np.inf), axis=0)
                n = use.sum(axis=0)
                lo, hi = np.maximum((n - 1) // 2, 0), np.maximum(n // 2, 0)
                cols = np.arange(values.shape[1])
                centre = np.where(n > 0, 0.5 * (centre[lo, cols] + centre[hi, cols]), np.nan)
            z = np.abs(values - centre) / np.sqrt(variances + 1.0 / wsum)
            new_use = good & (z < clip_sigma)
            new_use |= good & ~new_use.any(axis=0)  # never clip every star of a pixel
            if np.array_equal(new_use, use):
                break
            use = new_use
        w = np.where(use, 1.0 / np.where(good, variances, 1.0), 0.0)
        wsum = w.sum(axis=0)
        mean = np.sum(w * np.where(use, values, 0.0), axis=0) / wsum
        n_used = use.sum(axis=0)
        chi2 = np.sum(w * np.where(use, values - mean, 0.0) ** 2, axis=0) / np.maximum(n_used - 1, 1)
    chi2 = np.where(n_used > 1, chi2, 1.0)
    chi2 = uniform_filter1d(np.where(np.isfinite(chi2), chi2, 1.0), max(int(chi2_window), 1), mode="nearest")
    variance = np.where(n_used > 0, np.maximum(chi2, 1.0) / np.where(n_used > 0, wsum, 1.0), np.nan)
    return np.where(n_used > 0, mean, np.nan), variance, n_used


def _detected(t, var, min_depth, detect_sigma, min_pixels=3):
    """Whether a window's transmission shows absorption: enough pixels significantly and clearly below 1."""
    depth = 1.0 - t
    with np.errstate(invalid="ignore"):
        deep = (depth > min_depth) & (depth > detect_sigma * np.sqrt(var))
    return int(np.count_nonzero(deep)) >= max(min_pixels, int(0.02 * t.size))


def derive_telluric_transmission(spectra, matches, grid, phot_scales, vectors, wavelength,
                                 regions="telluric_default", extinction="F99", r_v=3.1,
                                 min_transmission=MIN_TRANSMISSION, min_depth=0.02, detect_sigma=5.0, names=None):
    """The exposure's telluric transmission from its standards.

    Parameters
    ----------
    spectra : list of `~specutils.Spectrum`
        The standards' observed counts (own wavelengths, Å).
    matches : list of `~kspec_fluxcal.matching.TemplateMatch`
        Their best templates.
    grid : `~kspec_fluxcal.templates.PreparedGrid`
        The grid of the matches.
    phot_scales : list of `~kspec_fluxcal.calibration.PhotometricScale`
        Their photometric scales.
    vectors : list of `~kspec_fluxcal.containers.CalibrationVector`
        Their calibration vectors, with the smooth form that bridges the windows.
    wavelength : `~astropy.units.Quantity` or array_like
        Grid of the transmission (Å, air), e.g. that of the calibration.
    regions : str, Path or `~astropy.units.Quantity`
        Telluric windows (`~kspec_fluxcal.masks.load_mask_regions`).
    extinction, r_v : str, float
        Reddening law of the models, as in the calibration.
    min_transmission : float
        Pixels below this are masked.
    min_depth, detect_sigma : float
        A window is corrected only when at least 3 pixels (and 2 % of the
        window) lie more than ``min_depth`` and ``detect_sigma`` σ below 1.
    names : list of str, optional
        The stars' names (for QC).

    Returns
    -------
    `TelluricTransmission`

    Raises
    ------
    CalibrationError
        No star given.
    """
    from .masks import as_regions

    if not spectra:
        raise CalibrationError("no usable standard star to measure the telluric transmission on.")
    out = np.asarray(u.Quantity(wavelength, u.AA).to_value(u.AA), dtype=float)
    windows = as_regions(regions)
    in_window = np.zeros(out.size, dtype=bool)
    for a, b in windows:
        in_window |= (out >= a) & (out <= b)
    per_star = np.full((len(spectra), out.size), np.nan)
    per_var = np.full_like(per_star, np.nan)
    for i, (spec, match, scale, vec) in enumerate(zip(spectra, matches, phot_scales, vectors)):
        if vec.smooth_factor is None:
            continue
        t, v = _star_transmission(spec, match, grid, scale, vec, out, windows, extinction, r_v)
        per_star[i] = np.where(in_window, t, np.nan)
        per_var[i] = np.where(in_window, v, np.nan)
    mean, var, n_used = combine_transmissions(per_star, per_var)
    transmission = np.ones(out.size)
    variance = np.zeros(out.size)
    mask = np.zeros(out.size, dtype=bool)
    corrected = []
    for a, b in windows:
        sel = (out >= a) & (out <= b)
        measured = sel & (n_used > 0)
        if not measured.any() or not _detected(mean[measured], var[measured], min_depth, detect_sigma):
            continue
        corrected.append((a, b))
        transmission[sel] = np.where(n_used[sel] > 0, mean[sel], np.nan)
        variance[sel] = np.where(n_used[sel] > 0, var[sel], np.nan)
        with np.errstate(invalid="ignore"):
            mask[sel] = ~(n_used[sel] > 0) | ~(mean[sel] >= min_transmission)
    transmission = np.where(mask, np.nan, transmission)
    variance = np.where(mask, np.nan, variance)
    n_measured = int(np.count_nonzero(np.isfinite(per_star).any(axis=1)))
    log.info("telluric transmission from %d standard(s): %d of %d windows corrected, %d pixels masked",
             n_measured, len(corrected), len(windows), int(np.count_nonzero(mask)))
    return TelluricTransmission(out, transmission, variance, mask, np.array(corrected).reshape(-1, 2),
                                per_star=per_star, star_names=list(names or []),
                                meta={"n_stars": n_measured, "source": "standards"})


def transmission_on_grid(transmission, wavelength):
    """The transmission interpolated onto ``wavelength`` (any shape, Å): (T, variance, mask).

    Cubic inside the corrected windows (the lines are barely sampled), 1 with
    zero variance outside them and outside the transmission's range; a pixel
    next to a masked sample is masked.
    """
    wave = np.asarray(u.Quantity(wavelength, u.AA).to_value(u.AA), dtype=float)
    flat = wave.ravel()
    t = np.ones(flat.size)
    v = np.zeros(flat.size)
    bad = np.zeros(flat.size, dtype=bool)
    x = transmission.wavelength
    ok = ~transmission.mask & np.isfinite(transmission.transmission) & np.isfinite(transmission.variance)
    if np.count_nonzero(ok) >= 4:
        spline = make_interp_spline(x[ok], transmission.transmission[ok], k=3)
        for a, b in transmission.windows:
            sel = (flat >= a) & (flat <= b) & (flat >= x[0]) & (flat <= x[-1])
            t[sel] = spline(flat[sel])
            v[sel] = np.interp(flat[sel], x[ok], transmission.variance[ok])
            bad[sel] = np.interp(flat[sel], x, (~ok).astype(float)) > 0
    elif transmission.windows.size:
        for a, b in transmission.windows:
            bad |= (flat >= a) & (flat <= b)
    return t.reshape(wave.shape), v.reshape(wave.shape), bad.reshape(wave.shape)


def apply_telluric_correction(flux, variance, wavelength, transmission):
    """Divide spectra by the telluric transmission, propagating both variances.

    Parameters
    ----------
    flux, variance : ndarray, shape (NFIB, NPIX) or (NPIX,)
        Spectra (any unit) and their variance.
    wavelength : ndarray
        Each fiber's wavelengths (same shape) or a shared axis (NPIX,), Å.
    transmission : `TelluricTransmission`

    Returns
    -------
    flux, variance : ndarray
        F/T and V/T² + F²·V_T/T⁴; NaN where the transmission is masked.
    """
    flux = np.asarray(flux, dtype=float)
    variance = np.asarray(variance, dtype=float)
    wave = np.broadcast_to(np.asarray(u.Quantity(wavelength, u.AA).to_value(u.AA), dtype=float), flux.shape)
    t, v, bad = transmission_on_grid(transmission, wave)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = flux / t
        out_var = variance / t**2 + flux**2 * v / t**4
    return np.where(bad, np.nan, out), np.where(bad, np.nan, out_var)


def telluric_header(header, transmission, source=None):
    """Record a telluric correction in ``header`` (``TELCOR``, ``TELNSTR``, ``TELWIN``, ``TELSRC``)."""
    header["TELCOR"] = (True, "telluric absorption corrected (kspec_fluxcal)")
    header["TELNSTR"] = (transmission.n_stars, "standards the transmission was measured on")
    set_card(header, "TELWIN", telluric_window_string(transmission.windows) or "none", "corrected telluric windows (A)")
    set_card(header, "TELSRC", str(source or transmission.meta.get("source", "standards")),
             "where the transmission comes from")
    return header


def check_not_corrected(header, name="the frame"):
    """Raise `~kspec_fluxcal.exceptions.TelluricCorrectedError` when ``header`` has ``TELCOR = T``."""
    if header.get("TELCOR"):
        raise TelluricCorrectedError(
            f"{name} is telluric-corrected already (TELCOR = T); a second correction would divide by the "
            "transmission twice. Use the uncorrected frame, or calibrate with --no-telluric."
        )


def transmission_to_apply(header, result, mode=None, name="the frame"):
    """The transmission to apply to a frame, or None.

    Parameters
    ----------
    header : `~astropy.io.fits.Header`
        The frame's primary header (``TELCOR``).
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        The calibration; its ``telluric`` is the transmission.
    mode : bool or None
        False: never. None: when the calibration has a transmission and the
        frame is not corrected yet (else a warning and None). True: always;
        a corrected frame or a missing transmission is an error.

    Raises
    ------
    TelluricCorrectedError
        ``mode`` is True and the frame has ``TELCOR = T``.
    CalibrationError
        ``mode`` is True and the calibration has no transmission.
    """
    if mode is False:
        return None
    if header.get("TELCOR"):
        if mode:
            check_not_corrected(header, name)
        log.warning("%s is telluric-corrected already (TELCOR = T); no second correction", name)
        return None
    if result.telluric is None:
        if mode:
            raise CalibrationError(
                f"no telluric transmission for {name}: the calibration applied carries none (a nightly or "
                "stored calibration without a TELLURIC extension); calibrate with --no-telluric, or apply a "
                "transmission later with 'kspec-fluxcal telluric'."
            )
        return None
    return result.telluric


def read_transmission(path):
    """The `TelluricTransmission` of a file: a calibrated RED file or a calibration product with ``TELLURIC``.

    Raises
    ------
    InputDataError
        The file does not exist, is not FITS, or has no ``TELLURIC`` extension.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"transmission file {path} does not exist.")
    try:
        with fits.open(path, memmap=False) as hdul:
            if "TELLURIC" not in [h.name for h in hdul]:
                raise InputDataError(
                    f"{path.name} has no TELLURIC extension; give a frame calibrated with --telluric or a "
                    "calibration product saved from one."
                )
            return TelluricTransmission.from_hdu(hdul["TELLURIC"].copy())
    except OSError as exc:
        raise InputDataError(f"{path.name} is not a readable FITS file ({exc}).") from exc
