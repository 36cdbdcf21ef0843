"""Atmospheric extinction: airmass from headers, the night's extinction curve, and its transfer.

A frame at airmass X receives 10^(−0.4 k(λ) X) of the light above the
atmosphere, so its calibration (flux per count) is

    ln C(λ, X) = ln C₀(λ) + g + β k(λ) X,        β = 0.4 ln 10,

with g a gray term of its own (transparency, aperture losses). The exposures
of a night at different airmasses therefore differ in *shape* by β k(λ) ΔX.
`fit_extinction` fits k(λ) to a night's calibrations with the gray terms and
the mean shape free, as the physically shaped sum

    k(λ) = a_R (λ/1 µm)^−4.05 + a_A (λ/1 µm)^−α + a_O G_O3(λ)

(Rayleigh scattering, an aerosol power law, the ozone Chappuis band as a
Gaussian centred at 6000 Å with σ = 750 Å), all amplitudes ≥ 0 and α on a grid
over 0.5–3. A part of k that is constant in λ is indistinguishable from the
gray terms, so k here is the *colour* of the extinction; a frame's own
standards (or the night's median transparency) set the level.

With too small an airmass range (`MIN_AIRMASS_RANGE`) or too few exposures
(3) the curve cannot be fitted; a site curve given by the user
(`ExtinctionCurve.from_file`) or `default_extinction` is used instead and the
log says so. `transfer_to_airmass` moves a nightly calibration from the
night's reference airmass to a frame's, adding (β ΔX)² var k to its variance.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy import units as u
from scipy.optimize import nnls

from .exceptions import InputDataError
from .io.text import read_columns

__all__ = [
    "BETA",
    "MIN_AIRMASS_RANGE",
    "airmass_from_zenith_distance",
    "read_airmass",
    "ExtinctionCurve",
    "default_extinction",
    "fit_extinction",
    "night_extinction",
    "transfer_to_airmass",
]

log = logging.getLogger(__name__)

BETA = 0.4 * np.log(10.0)
"""d ln(flux) per magnitude."""

MIN_AIRMASS_RANGE = 0.2
"""Smallest spread (max − min) of the night's airmasses for which k(λ) is fitted."""

ZENITH_DISTANCE_KEYWORDS = ("ZD", "ZDIST", "ZENDIST", "ZDSTART")
"""Header keywords read (in this order) for the zenith distance in degrees (2dF/AAOmega write ``ZDSTART``
and ``ZDEND``; with both, the mean of their airmasses is used)."""

ALTITUDE_KEYWORDS = ("ALT", "TELALT", "ELEVAT", "ELEVATIO")
"""Header keywords read (in this order) for the telescope's altitude (elevation) in degrees."""

_OZONE_CENTRE, _OZONE_SIGMA = 6000.0, 750.0
_ALPHAS = np.round(np.arange(0.5, 3.01, 0.1), 2)
_SYSTEMATIC = 0.002  # ln-flux floor per binned point: exposures' shapes differ by more than their noise


def airmass_from_zenith_distance(zd):
    """Airmass at zenith distance ``zd`` (degrees), Hardie (1962) polynomial in sec z − 1 (good to z ≈ 85°)."""
    zd = float(zd)
    if not 0 <= zd < 87:
        raise InputDataError(f"zenith distance {zd}° is outside 0–87°; the airmass is undefined or unreliable.")
    s = 1.0 / np.cos(np.radians(zd)) - 1.0
    return float(1.0 + s - 0.0018167 * s - 0.002875 * s**2 - 0.0008083 * s**3)


def _number(header, key):
    try:
        value = float(header.get(key))
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def read_airmass(header, required=False):
    """A frame's airmass: ``AIRMASS``, else from the zenith distance, else from the altitude.

    Parameters
    ----------
    header : `~astropy.io.fits.Header` or dict
        The frame's primary header.
    required : bool
        Raise instead of returning None when no airmass can be found.

    Returns
    -------
    float or None
        The airmass (≥ 1), or None when the header has none and it is not required.

    Raises
    ------
    InputDataError
        With ``required``: none found, or a value that is not physical (an
        airmass outside 1–40, a zenith distance outside 0–87°). Without it,
        an unphysical value is logged and None returned.
    """
    try:
        value = _header_airmass(header)
    except InputDataError as exc:
        if required:
            raise
        log.warning("airmass ignored: %s", exc)
        return None
    if value is None:
        if required:
            raise InputDataError(
                "the header gives no airmass (AIRMASS), zenith distance (ZD) or altitude (ALT/ELEVAT); add "
                "AIRMASS to the frame's header."
            )
        return None
    return float(max(value, 1.0))


def _header_airmass(header):
    value = _number(header, "AIRMASS")
    if value is None:
        start, end = _number(header, "ZDSTART"), _number(header, "ZDEND")
        if start is not None and end is not None:
            value = 0.5 * (airmass_from_zenith_distance(start) + airmass_from_zenith_distance(end))
        else:
            zd = next((v for v in (_number(header, k) for k in ZENITH_DISTANCE_KEYWORDS) if v is not None), None)
            if zd is None:
                alt = next((v for v in (_number(header, k) for k in ALTITUDE_KEYWORDS) if v is not None), None)
                zd = None if alt is None else 90.0 - alt
            value = None if zd is None else airmass_from_zenith_distance(zd)
    if value is not None and not 1.0 - 1e-3 <= value <= 40.0:
        raise InputDataError(f"airmass {value} is not physical (1–40); check the frame's AIRMASS/ZD/ALT keywords.")
    return value


def _basis(wavelength, alpha):
    """Columns of k(λ): Rayleigh, aerosol power law, ozone (mag per airmass per unit amplitude)."""
    x = np.asarray(wavelength, dtype=float) / 1e4
    ozone = np.exp(-0.5 * ((np.asarray(wavelength, float) - _OZONE_CENTRE) / _OZONE_SIGMA) ** 2)
    return np.stack([x**-4.05, x**-alpha, ozone], axis=-1)


@dataclass
class ExtinctionCurve:
    """An extinction curve k(λ) (mag per airmass) with its variance, tabulated.

    Attributes
    ----------
    wavelength : ndarray
        Å, increasing.
    k, variance : ndarray
        mag per airmass and its variance (mag²).
    source : str
        ``'fit'`` (fitted to the night), ``'site'`` (a user's curve) or ``'default'``.
    reference_airmass : float, optional
        Airmass the nightly shape refers to (set by `night_extinction`).
    meta : dict
        Fit parameters, airmasses, file name …
    """

    wavelength: np.ndarray
    k: np.ndarray
    variance: np.ndarray
    source: str = "fit"
    reference_airmass: float = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.wavelength = np.asarray(u.Quantity(self.wavelength, u.AA).to_value(u.AA), dtype=float)
        self.k = np.asarray(self.k, dtype=float)
        self.variance = np.asarray(self.variance, dtype=float)
        if self.k.shape != self.wavelength.shape or self.variance.shape != self.wavelength.shape:
            raise InputDataError("an extinction curve needs wavelength, k and variance of one length.")
        if self.wavelength.size < 2 or np.any(np.diff(self.wavelength) <= 0):
            raise InputDataError("the wavelengths of an extinction curve must increase (at least 2 samples).")
        if not (np.all(np.isfinite(self.k)) and np.all(np.isfinite(self.variance))):
            raise InputDataError("an extinction curve holds non-finite values.")

    def at(self, wavelength):
        """(k, variance) interpolated onto ``wavelength`` (Å, any shape); held constant beyond the ends."""
        lam = np.asarray(u.Quantity(wavelength, u.AA).to_value(u.AA), dtype=float)
        return np.interp(lam, self.wavelength, self.k), np.interp(lam, self.wavelength, self.variance)

    def to_dict(self):
        """A JSON-able record (stored in a nightly product's summary as ``extinction``)."""
        return {"wavelength": self.wavelength.tolist(), "k": self.k.tolist(), "variance": self.variance.tolist(),
                "source": self.source, "reference_airmass": self.reference_airmass, "meta": self.meta,
                "unit": "mag / airmass"}

    @classmethod
    def from_dict(cls, record):
        """Inverse of `to_dict`."""
        try:
            return cls(record["wavelength"], record["k"], record["variance"], record.get("source", "fit"),
                       record.get("reference_airmass"), dict(record.get("meta") or {}))
        except (KeyError, TypeError) as exc:
            raise InputDataError(f"the stored extinction curve is incomplete ({exc}).") from exc

    @classmethod
    def from_file(cls, path, error=0.01):
        """A site curve from a text file: two columns, λ (Å) and k (mag per airmass), ``#`` comments.

        ``error`` (mag per airmass) is its assumed 1σ uncertainty, unless a
        third column gives one per row.
        """
        path = Path(path)
        data = read_columns(path, "extinction curve", "two columns, wavelength (Å) and k (mag per airmass)",
                            min_rows=2)
        order = np.argsort(data[:, 0])
        data = data[order]
        sigma = data[:, 2] if data.shape[1] > 2 else np.full(data.shape[0], float(error))
        if np.any(data[:, 1] < 0):
            raise InputDataError(f"the extinction curve {path} has negative k; extinction is ≥ 0 mag per airmass.")
        return cls(data[:, 0], data[:, 1], sigma**2, "site", meta={"file": path.name})


def default_extinction(wavelength=None):
    """The documented default curve: a generic mid-altitude (~1500 m) site.

    k(λ) = 0.0074 (λ/1 µm)^−4.05 (Rayleigh at ~850 hPa) + 0.030 (λ/1 µm)^−1.3
    (aerosol) + 0.030 G_O3(λ) (ozone), mag per airmass: 0.58 at 3600 Å, 0.15
    at 6000 Å, 0.046 at 9000 Å. Its variance is (20 % of k)². Use it only when
    the night cannot fit its own curve and no site curve is given.
    """
    lam = np.arange(3000.0, 11001.0, 25.0) if wavelength is None else np.asarray(wavelength, float)
    k = _basis(lam, 1.3) @ np.array([0.0074, 0.030, 0.030])
    return ExtinctionCurve(lam, k, (0.2 * k) ** 2, "default", meta={"model": "generic mid-altitude site"})


def _binned(wave, logc, lvar, n_bins):
    """Inverse-variance weighted means of each exposure's ln C in bins uniform in ln λ."""
    edges = np.exp(np.linspace(np.log(wave[0]), np.log(wave[-1]) + 1e-12, n_bins + 1))
    idx = np.clip(np.searchsorted(edges, wave, side="right") - 1, 0, n_bins - 1)
    ok = np.isfinite(logc) & np.isfinite(lvar) & (lvar > 0)
    w = np.where(ok, 1.0 / np.where(ok, lvar, 1.0), 0.0)
    sum_w = np.zeros((logc.shape[0], n_bins))
    sum_wy = np.zeros_like(sum_w)
    sum_wx = np.zeros(n_bins)
    count = np.zeros(n_bins)
    for e in range(logc.shape[0]):
        sum_w[e] = np.bincount(idx, w[e], n_bins)
        sum_wy[e] = np.bincount(idx, w[e] * np.where(ok[e], logc[e], 0.0), n_bins)
    sum_wx += np.bincount(idx, wave, n_bins)
    count += np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = sum_wx / count
        mean = sum_wy / sum_w
        var = 1.0 / sum_w
    return centre, mean, var


def fit_extinction(wavelength, logc, lvar, airmass, n_bins=60):
    """Fit k(λ) to the calibrations of a night's exposures at different airmasses.

    Parameters
    ----------
    wavelength : array_like, shape (n_pix,)
        Å, increasing.
    logc, lvar : ndarray, shape (n_exp, n_pix)
        ln of each exposure's calibration (flux per count) and its variance
        (NaN where undefined).
    airmass : array_like, shape (n_exp,)
        The exposures' airmasses.
    n_bins : int
        Bins (uniform in ln λ) the calibrations are averaged in for the fit.

    Returns
    -------
    `ExtinctionCurve`
        ``source='fit'``, tabulated every 25 Å over the data; the variance is
        that of the amplitudes (scaled by the reduced χ² when above 1),
        α held at its best value. ``meta``: ``alpha``, ``amplitudes``
        (Rayleigh, aerosol, ozone), ``chi2_reduced``, ``airmass``.

    Raises
    ------
    InputDataError
        Fewer than 3 exposures, or an airmass range below `MIN_AIRMASS_RANGE`.
    """
    wave = np.asarray(wavelength, dtype=float)
    logc = np.atleast_2d(logc)
    lvar = np.atleast_2d(lvar)
    x = np.asarray(airmass, dtype=float)
    n_exp = x.size
    if n_exp < 3 or np.ptp(x) < MIN_AIRMASS_RANGE:
        raise InputDataError(
            f"{n_exp} exposure(s) spanning {np.ptp(x):.2f} in airmass cannot fit the extinction curve (need 3 over "
            f"≥ {MIN_AIRMASS_RANGE}); give a site curve or use the default one."
        )
    centre, y, var = _binned(wave, logc, lvar, n_bins)
    ok = np.isfinite(y) & np.isfinite(var)
    bins = np.flatnonzero(ok.any(axis=0))
    e_idx, b_idx = np.nonzero(ok[:, bins])
    b_pos = bins[b_idx]
    n_shape = bins.size
    sigma = np.sqrt(var[e_idx, b_pos] + _SYSTEMATIC**2)
    target = y[e_idx, b_pos] / sigma
    # nuisance unknowns: the shape per bin and a gray term per exposure but the first; they are
    # profiled out by projecting onto the complement of their (weighted) columns
    rows = np.arange(e_idx.size)
    nuisance = np.zeros((e_idx.size, n_shape + n_exp - 1))
    nuisance[rows, b_idx] = 1.0
    has_gray = e_idx > 0
    nuisance[rows[has_gray], n_shape + e_idx[has_gray] - 1] = 1.0
    q, _ = np.linalg.qr(nuisance / sigma[:, None])

    def project(v):
        return v - q @ (q.T @ v)

    n_par = nuisance.shape[1] + 3
    dx = x - np.median(x)
    projected = project(target)
    best = None
    for alpha in _ALPHAS:
        design = project(BETA * dx[e_idx, None] * _basis(centre[b_pos], alpha) / sigma[:, None])
        amps, rnorm = nnls(design, projected)
        if best is None or rnorm**2 < best[0]:
            best = (rnorm**2, alpha, amps, design)
    chi2, alpha, amps, design = best
    ndof = max(e_idx.size - n_par, 1)
    chi2_red = chi2 / ndof
    free = amps > 0
    amp_cov = np.zeros((3, 3))
    amp_cov[np.ix_(free, free)] = np.linalg.pinv(design[:, free].T @ design[:, free]) * max(chi2_red, 1.0)
    lam = np.arange(np.floor(wave[0] / 25) * 25, wave[-1] + 25, 25.0)
    jac = _basis(lam, alpha)
    k = jac @ amps
    misfit = _misfit_variance((projected - design @ amps) * sigma, sigma * np.sqrt(max(chi2_red, 1.0)), e_idx, b_idx,
                              dx, n_shape)
    k_var = np.einsum("pi,ij,pj->p", jac, amp_cov, jac) + np.interp(lam, centre[bins], misfit)
    log.info("extinction fitted to %d exposures (airmass %.2f–%.2f): α = %.1f, k(4000 Å) = %.3f, k(8000 Å) = %.3f "
             "mag/airmass (colour only), reduced χ² %.2f", n_exp, x.min(), x.max(), alpha,
             float(np.interp(4000, lam, k)), float(np.interp(8000, lam, k)), chi2_red)
    return ExtinctionCurve(lam, k, k_var, "fit", meta={
        "alpha": float(alpha), "amplitudes": amps.tolist(), "chi2_reduced": chi2_red, "airmass": x.tolist(),
        "model": "rayleigh(-4.05) + aerosol power law + ozone gaussian (6000, 750 A)"})


def _misfit_variance(resid, sigma, e_idx, b_idx, dx, n_shape, window=5):
    """Variance (mag²) of the fitted k per bin that its form cannot follow.

    The residuals of each bin are regressed on the airmass: the slope is what
    k lacks there, less what the noise alone gives (``sigma``, already scaled
    by the fit's reduced χ²), averaged over ``window`` neighbouring bins. The
    truth need not be of the fitted form.
    """
    w = 1.0 / sigma**2
    sw = np.bincount(b_idx, w, n_shape)
    mx = np.bincount(b_idx, w * dx[e_idx], n_shape) / sw
    xc = dx[e_idx] - mx[b_idx]
    sxx = np.bincount(b_idx, w * xc**2, n_shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.bincount(b_idx, w * xc * resid, n_shape) / sxx / BETA
        noise = 1.0 / sxx / BETA**2
    excess = np.where(np.isfinite(slope) & (sxx > 0), slope**2 - noise, 0.0)
    kernel = np.ones(window) / window
    return np.maximum(np.convolve(excess, kernel, mode="same"), 0.0)


def night_extinction(wavelength, logc, lvar, airmass, extinction="auto"):
    """The night's extinction curve, and the exposures' ln C moved to the night's reference airmass.

    Parameters
    ----------
    wavelength, logc, lvar :
        As in `fit_extinction`.
    airmass : list of float or None
        The exposures' airmasses (None where unknown).
    extinction : 'auto', 'fit', 'default', `ExtinctionCurve`, str or Path
        ``'auto'``: fit when the airmasses allow (`fit_extinction`), else the
        default curve with a warning. ``'fit'``: fit or raise. ``'default'``:
        `default_extinction`. A curve or a file (`ExtinctionCurve.from_file`):
        that site curve.

    Returns
    -------
    curve : `ExtinctionCurve` or None
        None when an exposure's airmass is unknown (then nothing is moved and
        the nightly shape is that of the night's typical airmass, as before).
    logc : ndarray
        ln C_e − β k (X_e − X_ref), X_ref the median airmass of the exposures.
    """
    if any(a is None for a in airmass):
        missing = sum(a is None for a in airmass)
        if isinstance(extinction, str) and extinction == "fit":
            raise InputDataError(f"{missing} exposure(s) have no airmass; the extinction curve cannot be fitted.")
        log.warning("%d exposure(s) have no airmass (AIRMASS/ZD/ALT); the nightly shape is that of the night's "
                    "typical airmass and is not transferred to other airmasses", missing)
        return None, logc
    x = np.asarray(airmass, dtype=float)
    if isinstance(extinction, ExtinctionCurve):
        curve = extinction
    elif isinstance(extinction, str) and extinction in ("auto", "fit"):
        try:
            curve = fit_extinction(wavelength, logc, lvar, x)
        except InputDataError as exc:
            if extinction == "fit":
                raise
            log.warning("%s; using the default extinction curve (a generic mid-altitude site)", exc)
            curve = default_extinction()
    elif isinstance(extinction, str) and extinction == "default":
        curve = default_extinction()
    else:
        curve = ExtinctionCurve.from_file(extinction)
    reference = float(np.median(x))
    curve = ExtinctionCurve(curve.wavelength, curve.k, curve.variance, curve.source, reference,
                            {**curve.meta, "airmass": x.tolist()})
    k, _ = curve.at(wavelength)
    return curve, logc - BETA * (x - reference)[:, None] * k[None, :]


def transfer_to_airmass(result, airmass):
    """A nightly calibration moved from the night's reference airmass to ``airmass``.

    Parameters
    ----------
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        With ``summary['extinction']`` (`night_extinction`); returned
        unchanged (with a warning) when it has none or ``airmass`` is None.
    airmass : float or None
        The target frame's airmass (`read_airmass`).

    Returns
    -------
    `~kspec_fluxcal.containers.FluxCalibrationResult`
        C · 10^(0.4 k(λ) ΔX), variance C²·(V/C² + (β ΔX)² var k);
        ``summary['airmass_transfer']`` records ``from``, ``to`` and the source of k.
    """
    from .containers import CalibrationVector, FluxCalibrationResult

    record = (result.summary or {}).get("extinction")
    if record is None or airmass is None:
        if record is not None or airmass is not None:
            log.warning("the nightly calibration is applied at the night's typical airmass: %s",
                        "the frame's airmass is unknown" if airmass is None else "it holds no extinction curve")
        return result
    curve = ExtinctionCurve.from_dict(record)
    dx = float(airmass) - float(curve.reference_airmass)
    vec = result.combined_vector
    k, k_var = curve.at(vec.wavelength)
    gain = np.exp(BETA * k * dx)
    with np.errstate(invalid="ignore"):
        factor = vec.cal_factor.value * gain
        variance = vec.cal_variance.value * gain**2 + factor**2 * (BETA * dx) ** 2 * k_var
    vector = CalibrationVector(vec.wavelength, factor * vec.unit, variance * vec.unit**2, vec.mask,
                               meta=dict(vec.meta))
    summary = dict(result.summary)
    summary["airmass_transfer"] = {"from": curve.reference_airmass, "to": float(airmass), "source": curve.source}
    log.info("nightly calibration moved from airmass %.3f to %.3f (%s extinction curve)", curve.reference_airmass,
             airmass, curve.source)
    covariance = result.covariance
    if covariance is not None:  # k(λ)'s error moves the whole curve: one signed level profile
        k_cov = curve.at(covariance.wavelength * u.AA)[1]
        covariance = covariance.with_term("extinction", BETA * dx * np.sqrt(np.nan_to_num(k_cov)), None)
    return FluxCalibrationResult(vector, list(result.per_star_vectors), list(result.per_star_residuals), summary,
                                 result.telluric, covariance)
