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
instrument's pixels, so it is at the instrument's resolution.

At that resolution a telluric line is barely wider than a pixel, and each
fiber's pixels sit at wavelengths shifted from the others' by fractions of a
pixel: interpolating one set of samples onto another fiber's pixels misses
the line cores by several per cent. Together, the standards sample T finely,
so T is fitted per window to all their samples at once
(`fit_transmission`: a cubic B-spline with knots one line width apart,
`lsf_sigma`, weighted least squares with iterative clipping) and stored
`SAMPLES_PER_SIGMA` times per line width, fine enough to be interpolated
onto any fiber. Its variance is the fit's covariance, scaled by the
(locally averaged) reduced χ² of the stars about the fit when that exceeds
1, so it carries the stars' scatter beyond their noise; it is propagated to
every corrected fiber.

Only windows where absorption is detected (``min_depth`` and
``detect_sigma``) are corrected; elsewhere T = 1 with zero variance, so a
frame without telluric absorption is left unchanged. Pixels with T below
``min_transmission`` (0.2) are masked (True = bad): a corrected frame is NaN
there. T is fitted only where the standards have usable samples: a window
the frame covers in part, or that the standards' good pixels reach only in
part, is corrected there and keeps T = 1 (the bridged smooth calibration)
in the rest; a window no standard samples inside (the frame ends before it,
its samples lie only in the 3σ margin beside it, or every pixel there is
masked) is not corrected. One log line per window says which.

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
from scipy.linalg import LinAlgError, cho_factor, cho_solve
from scipy.ndimage import uniform_filter1d

from .atmosphere import read_airmass
from .containers import (
    MIN_TRANSMISSION,
    TelluricTransmission,
    telluric_covariance,
    telluric_window_string,
)
from .exceptions import CalibrationError, InputDataError, TelluricCorrectedError
from .io.header import set_card

__all__ = [
    "derive_telluric_transmission",
    "fit_transmission",
    "lsf_sigma",
    "transmission_on_grid",
    "apply_telluric_correction",
    "telluric_header",
    "check_not_corrected",
    "transmission_to_apply",
    "read_transmission",
    "AIRMASS_TOLERANCE",
    "warn_airmass_mismatch",
]

log = logging.getLogger(__name__)

FWHM_TO_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
"""FWHM / σ of a Gaussian."""

SAMPLES_PER_SIGMA = 4
"""Samples of the transmission per line width (`lsf_sigma`) inside the windows."""

def _star_samples(spectrum, match, grid, scale, vector, windows, extinction, r_v):
    """One star's transmission and variance on its own pixels in the windows (and 3 beyond each edge).

    Returns
    -------
    wave, t, t_var : ndarray
        Å (observed, air), counts × smooth calibration / expected flux, and its
        variance from the counts' noise; only the good pixels (empty when
        fewer than 10 are).
    """
    from .calibration import expected_flux
    from .containers import spectrum_variance

    wave_all = spectrum.spectral_axis.to_value(u.AA)
    near = np.zeros(wave_all.size, dtype=bool)
    for a, b in windows:
        lo, hi = np.searchsorted(wave_all, [a, b])
        near[max(lo - 3, 0):hi + 3] = True
    empty = (np.empty(0),) * 3
    if np.count_nonzero(near) < 10:
        return empty
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
        return empty
    return wave[ok], t[ok], t_var[ok]


def lsf_sigma(grid_meta, wavelength, pixel_step):
    """Width (Å, 1σ) of a telluric line as the fibers record it: the instrument's Gaussian LSF ⊗ one pixel.

    Parameters
    ----------
    grid_meta : dict
        `~kspec_fluxcal.templates.PreparedGrid.meta` (its ``lsf``: ``fwhm`` or
        ``fwhm_poly_coeffs``, Å).
    wavelength : float
        Å, where the width is wanted.
    pixel_step : float
        The fibers' pixel width (Å).

    Returns
    -------
    float
        √(σ_LSF² + step²/12); the pixel's alone when the grid records no FWHM.
    """
    lsf = (grid_meta or {}).get("lsf") or {}
    fwhm = 0.0
    if lsf.get("fwhm_poly_coeffs"):
        fwhm = float(np.polynomial.polynomial.polyval(wavelength, lsf["fwhm_poly_coeffs"]))
    elif lsf.get("fwhm"):
        fwhm = float(lsf["fwhm"])
    return float(np.sqrt((max(fwhm, 0.0) / FWHM_TO_SIGMA) ** 2 + pixel_step**2 / 12.0))


def fit_transmission(waves, values, variances, window, sigma, out, clip_sigma=4.0, max_iter=5, chi2_samples=200):
    """The transmission across one window, fitted jointly to every star's samples.

    The fibers sample the transmission (the telluric lines ⊗ the LSF, a
    function of λ narrower than two pixels when the LSF is barely sampled) at
    wavelengths that differ from fiber to fiber by fractions of a pixel, so
    neither one star's samples nor a per-pixel mean of the stars, interpolated
    to another fiber, reproduce it there. All the stars' samples together
    sample it finely: a cubic B-spline with knots ``sigma`` apart (the width of
    the narrowest feature the LSF lets through) is fitted to them by weighted
    least squares, with a weak prior on the second difference of its
    coefficients (1σ = 1: a line through the LSF bends no more than that over
    one knot) that only bridges stretches no star samples. Samples more than
    ``clip_sigma`` σ (their variance scaled by the χ² of the fit) from it are
    left out and the fit repeated.

    Parameters
    ----------
    waves, values, variances : list of ndarray
        Each star's sample wavelengths (Å), transmissions and variances.
    window : tuple of float
        (start, end) of the window, Å; samples within 3 σ of it are fitted.
    sigma : float
        Width of the narrowest feature (Å, 1σ; `lsf_sigma`): the knot spacing,
        or the spacing of the distinct sample positions when that is wider
        (stars on one pixel grid sample T no finer than a pixel: knots between
        the samples would be held only by the prior, and the variance there
        would be the prior's, not the data's).
    out : ndarray
        Wavelengths (Å) to evaluate the fit at.
    clip_sigma : float
        Rejection threshold (σ).
    max_iter : int
        Most fitting passes.
    chi2_samples : int
        Samples (in λ order) of the running mean of the reduced χ² that scales
        the variance where the stars scatter beyond their noise.

    Returns
    -------
    t, variance : ndarray, shape of ``out``
        The fitted transmission and its variance (the fit's covariance scaled
        by the local reduced χ² when that exceeds 1); NaN outside the samples'
        range, and everywhere when fewer than 8 samples lie within 3 σ of the
        window, when they span less than ``sigma`` or no point of ``out``
        (samples only in the margin beside the window).
    n_stars : ndarray of int, shape of ``out``
        Stars whose kept samples span each point (0 where nothing was fitted).
    """
    from scipy.interpolate import BSpline

    a, b = window
    lo_edge, hi_edge = a - 3 * sigma, b + 3 * sigma
    x, y, v, star = [], [], [], []
    for k, (w, t, tv) in enumerate(zip(waves, values, variances)):
        sel = (w >= lo_edge) & (w <= hi_edge)
        x.append(w[sel])
        y.append(t[sel])
        v.append(tv[sel])
        star.append(np.full(np.count_nonzero(sel), k))
    x, y, v, star = (np.concatenate(c) for c in (x, y, v, star))
    order = np.argsort(x, kind="stable")
    x, y, v, star = x[order], y[order], v[order], star[order]
    t_out = np.full(out.shape, np.nan)
    var_out = np.full(out.shape, np.nan)
    n_out = np.zeros(out.shape, dtype=int)
    if x.size < 8 or not np.any((out >= x[0]) & (out <= x[-1])) or x[-1] - x[0] < sigma:
        return t_out, var_out, n_out  # too few samples, or none spans a point of ``out`` (e.g. all in the margin)
    lo, hi = x[0], x[-1]
    n_int = max(int(np.ceil((hi - lo) / max(sigma, _distinct_spacing(x, sigma)))), 1)
    knots = np.r_[[lo] * 3, np.linspace(lo, hi, n_int + 1), [hi] * 3]
    design = BSpline.design_matrix(x, knots, 3)
    n_coef = design.shape[1]
    second = np.diff(np.eye(n_coef), 2, axis=0)
    prior = second.T @ second
    w = 1.0 / v
    keep = np.ones(x.size, dtype=bool)
    for _ in range(max_iter):
        dw = design.multiply((w * keep)[:, None]).tocsr()
        normal = (design.T @ dw).toarray() + prior
        try:
            factor = cho_factor(normal)
        except LinAlgError:
            return t_out, var_out, n_out
        coef = cho_solve(factor, dw.T @ y)
        resid = y - design @ coef
        chi2 = max(float(np.sum(w[keep] * resid[keep] ** 2)) / max(np.count_nonzero(keep) - n_coef, 1), 1.0)
        new_keep = np.abs(resid) * np.sqrt(w) < clip_sigma * np.sqrt(chi2)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    covariance = cho_solve(factor, np.eye(n_coef))
    inside = (out >= lo) & (out <= hi)
    basis = BSpline.design_matrix(out[inside], knots, 3)
    t_out[inside] = basis @ coef
    formal = np.asarray(basis.multiply(basis @ covariance).sum(axis=1)).ravel()
    edf = float(np.sum(covariance * normal - covariance * prior))
    dof_scale = np.count_nonzero(keep) / max(np.count_nonzero(keep) - edf, 1.0)
    local = uniform_filter1d(np.where(keep, w * resid**2, 0.0), chi2_samples, mode="nearest")
    local /= np.maximum(uniform_filter1d(keep.astype(float), chi2_samples, mode="nearest"), 1e-12)
    local_chi2 = np.maximum(np.interp(out[inside], x, local) * dof_scale, 1.0)
    var_out[inside] = formal * local_chi2
    for k in np.unique(star[keep]):
        mine = x[keep & (star == k)]
        n_out[inside] += (out[inside] >= mine[0]) & (out[inside] <= mine[-1])
    return t_out, var_out, n_out


def _distinct_spacing(x, sigma):
    """Median spacing (Å) of the distinct sample positions ``x`` (sorted); positions closer than 1 % of ``sigma``
    are one."""
    step = np.diff(x)
    step = step[step > 0.01 * sigma]
    return float(np.median(step)) if step.size else 0.0


def _detected(t, var, min_depth, detect_sigma, min_samples=3):
    """Whether a window's transmission shows absorption: enough samples significantly and clearly below 1."""
    depth = 1.0 - t
    with np.errstate(invalid="ignore"):
        deep = (depth > min_depth) & (depth > detect_sigma * np.sqrt(var))
    return int(np.count_nonzero(deep)) >= max(min_samples, int(0.02 * t.size))


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
        Grid of the transmission outside the windows (Å, air), e.g. that of
        the calibration; inside them the transmission is sampled
        `SAMPLES_PER_SIGMA` times per line width (`lsf_sigma`), finer than
        any fiber's pixels.
    regions : str, Path or `~astropy.units.Quantity`
        Telluric windows (`~kspec_fluxcal.masks.load_mask_regions`).
    extinction, r_v : str, float
        Reddening law of the models, as in the calibration.
    min_transmission : float
        Pixels below this are masked.
    min_depth, detect_sigma : float
        A window is corrected only when samples spanning at least 3 pixels
        (and 2 % of the window) lie more than ``min_depth`` and
        ``detect_sigma`` σ below 1.
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
    base = np.asarray(u.Quantity(wavelength, u.AA).to_value(u.AA), dtype=float)
    windows = as_regions(regions)
    samples = [([], [], []) if vec.smooth_factor is None else
               _star_samples(spec, match, grid, scale, vec, windows, extinction, r_v)
               for spec, match, scale, vec in zip(spectra, matches, phot_scales, vectors)]
    measured = [k for k, (w, _, _) in enumerate(samples) if len(w)]
    step = float(np.median(np.concatenate([np.diff(samples[k][0]) for k in measured]))) if measured else 1.0
    sigmas = [lsf_sigma(grid.meta, 0.5 * (a + b), step) for a, b in windows]
    out = _transmission_grid(base, windows, sigmas)
    transmission = np.ones(out.size)
    variance = np.zeros(out.size)
    mask = np.zeros(out.size, dtype=bool)
    per_star = np.full((len(spectra), out.size), np.nan)
    corrected = []
    for (a, b), sigma in zip(windows, sigmas):
        sel = (out >= a) & (out <= b)
        for k in measured:
            w, t, _ = samples[k]
            per_star[k, sel] = np.interp(out[sel], w, t, left=np.nan, right=np.nan)
        if not measured:
            log.info("telluric window %.0f–%.0f Å: no standard has usable samples there; the smooth calibration "
                     "bridges it (not corrected)", a, b)
            continue
        t, v, n_used = fit_transmission([samples[k][0] for k in measured], [samples[k][1] for k in measured],
                                        [samples[k][2] for k in measured], (a, b), sigma, out[sel])
        ok = n_used > 0
        min_samples = int(np.ceil(3 * max(step * SAMPLES_PER_SIGMA / sigma, 1.0)))
        if not ok.any():
            log.info("telluric window %.0f–%.0f Å: no standard's usable samples reach inside it; the smooth "
                     "calibration bridges it (not corrected)", a, b)
            continue
        if not _detected(t[ok], v[ok], min_depth, detect_sigma, min_samples):
            log.info("telluric window %.0f–%.0f Å: no absorption detected; the smooth calibration bridges it "
                     "(not corrected)", a, b)
            continue
        corrected.append((a, b))
        with np.errstate(invalid="ignore"):
            bad = ok & ~(t >= min_transmission)
        transmission[sel] = np.where(ok, np.where(bad, np.nan, t), 1.0)
        variance[sel] = np.where(ok, np.where(bad, np.nan, v), 0.0)
        mask[sel] = bad
        fitted = out[sel][ok]
        n_max = int(n_used.max())
        if ok.all():
            log.info("telluric window %.0f–%.0f Å: transmission fitted on up to %d standard(s) across the whole "
                     "window", a, b, n_max)
        else:
            log.info("telluric window %.0f–%.0f Å: transmission fitted on up to %d standard(s) over %.0f–%.0f Å "
                     "where they have samples; the smooth calibration bridges the rest (T = 1 there)",
                     a, b, n_max, fitted[0], fitted[-1])
    log.info("telluric transmission from %d standard(s): %d of %d windows corrected, %d samples masked",
             len(measured), len(corrected), len(windows), int(np.count_nonzero(mask)))
    return TelluricTransmission(out, transmission, variance, mask, np.array(corrected).reshape(-1, 2),
                                per_star=per_star, star_names=list(names or []),
                                meta={"n_stars": len(measured), "source": "standards"})


def _transmission_grid(base, windows, sigmas, per_sigma=SAMPLES_PER_SIGMA):
    """``base`` outside the windows, ``per_sigma`` samples per line width (`lsf_sigma`) inside them (Å)."""
    keep = np.ones(base.size, dtype=bool)
    fine = []
    for (a, b), sigma in zip(windows, sigmas):
        keep &= ~((base >= a) & (base <= b))
        fine.append(np.linspace(a, b, int(np.ceil((b - a) * per_sigma / sigma)) + 1))
    return np.unique(np.concatenate([base[keep], *fine]))


def transmission_on_grid(transmission, wavelength):
    """The transmission interpolated onto ``wavelength`` (any shape, Å): (T, variance, mask).

    Inside each corrected window, a cubic spline through the window's samples
    (and two beyond each edge) — the samples are finer than the lines, so this
    follows them — and the variance linearly; 1 with zero variance outside
    the windows and outside the transmission's range. A point next to a
    masked sample, or in a window with fewer than 4 usable samples, is masked.
    """
    wave = np.asarray(u.Quantity(wavelength, u.AA).to_value(u.AA), dtype=float)
    flat = wave.ravel()
    t = np.ones(flat.size)
    v = np.zeros(flat.size)
    bad = np.zeros(flat.size, dtype=bool)
    x = transmission.wavelength
    ok = ~transmission.mask & np.isfinite(transmission.transmission) & np.isfinite(transmission.variance)
    for a, b in transmission.windows:
        sel = (flat >= a) & (flat <= b) & (flat >= x[0]) & (flat <= x[-1])
        if not sel.any():
            continue
        lo, hi = np.searchsorted(x, [a, b])
        part = slice(max(lo - 2, 0), min(hi + 2, x.size))
        xs, good = x[part], ok[part]
        if np.count_nonzero(good) < 4:
            bad[sel] = True
            continue
        spline = make_interp_spline(xs[good], transmission.transmission[part][good], k=3)
        t[sel] = spline(flat[sel])
        v[sel] = np.interp(flat[sel], xs[good], transmission.variance[part][good])
        bad[sel] = np.interp(flat[sel], xs, (~good).astype(float)) > 0
    return t.reshape(wave.shape), v.reshape(wave.shape), bad.reshape(wave.shape)


def apply_telluric_correction(flux, variance, wavelength, transmission, covariance=None):
    """Divide spectra by the telluric transmission, propagating both variances.

    Parameters
    ----------
    flux, variance : ndarray, shape (NFIB, NPIX) or (NPIX,)
        Spectra (any unit) and their variance.
    wavelength : ndarray
        Each fiber's wavelengths (same shape) or a shared axis (NPIX,), Å.
    transmission : `TelluricTransmission`
    covariance : `~kspec_fluxcal.covariance.CalibrationCovariance`, optional
        The covariance of the calibration that made ``flux`` *and* that
        ``transmission`` was measured with: its ``bridging`` variance cancels
        where T was measured (`kspec_fluxcal.containers.telluric_covariance`) and is taken out of
        ``variance`` there. Not given: ``variance`` is divided as it is.

    Returns
    -------
    flux, variance : ndarray
        F/T and V/T² + F²·V_T/T⁴ (V less F²·σ²_bridging where it cancels);
        NaN where the transmission is masked.
    """
    flux = np.asarray(flux, dtype=float)
    variance = np.asarray(variance, dtype=float)
    wave = np.broadcast_to(np.asarray(u.Quantity(wavelength, u.AA).to_value(u.AA), dtype=float), flux.shape)
    t, v, bad = transmission_on_grid(transmission, wave)
    if covariance is not None:
        corrected = telluric_covariance(covariance, transmission)
        rows = wave.reshape(-1, wave.shape[-1])
        cancelled = np.array([np.nan_to_num(covariance.term_sigma("bridging", r) ** 2
                                            - corrected.term_sigma("bridging", r) ** 2) for r in rows])
        variance = np.maximum(variance - flux**2 * cancelled.reshape(flux.shape), 0.0)
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
    if transmission.meta.get("airmass") is not None:
        header["TELAIRM"] = (float(transmission.meta["airmass"]), "airmass the transmission was measured at")
    return header


def check_not_corrected(header, name="the frame"):
    """Raise `~kspec_fluxcal.exceptions.TelluricCorrectedError` when ``header`` has ``TELCOR = T``."""
    if header.get("TELCOR"):
        raise TelluricCorrectedError(
            f"{name} is telluric-corrected already (TELCOR = T); a second correction would divide by the "
            "transmission twice. Use the uncorrected frame, or calibrate with --no-telluric."
        )


AIRMASS_TOLERANCE = 0.05
"""Largest airmass difference between the exposure a transmission was measured on and
the frame it corrects that passes without a warning."""


def warn_airmass_mismatch(transmission, airmass, name="the frame"):
    """Log a warning when ``transmission`` was measured at another airmass than ``airmass``.

    At KSPEC's resolution the O2 and strong H2O lines are unresolved and
    saturated, so the observed depths do not follow T^(X/X₀) (Beer's law
    holds for the unconvolved optical depth only): a transmission is applied
    as it was measured, and a frame at another airmass keeps part of its
    absorption. Returns True when it warned.
    """
    measured = transmission.meta.get("airmass")
    if measured is None or airmass is None or abs(float(airmass) - float(measured)) <= AIRMASS_TOLERANCE:
        return False
    log.warning("the telluric transmission was measured at airmass %.2f and %s is at %.2f: its line depths "
                "differ and are corrected only in part; calibrate the frame with its own standards for its own "
                "transmission", float(measured), name, float(airmass))
    return True


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
    warn_airmass_mismatch(result.telluric, read_airmass(header), name)
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
