"""Knot spacing of the smooth calibration chosen by the standards of the exposure.

The smooth form of a star's vector is a cubic B-spline with interior knots
about every ``h`` Å. Too large an ``h`` smooths away instrument structure that
every standard shares (VPH-grating, dichroic and coating ripples of a few
hundred Å); too small an ``h`` follows noise and each star's own template
misfit. `select_knot_spacing` picks ``h`` by **leave-one-star-out prediction
error**: for every candidate spacing the splines of all stars are fitted at
once; each star's binned per-pixel ln(Cal) is then predicted by the weighted
mean shape of the *other* stars (gray terms removed) and the squared
prediction errors, weighted by the held-out star's own inverse variance, are
summed over stars and wavelengths. Noise and star-specific misfit of the held
-out star are independent of the prediction, so the error is smallest where
the shared structure is followed and the others' noise is not.

Standards of one type (solar G dwarfs) also share most of their *template*
misfit, which every star then "predicts" like instrument structure. So the
choice starts from the default spacing (or the smoothest spacing whose score
equals the best within its noise, if coarser) and goes finer only while a
finer candidate beats the current one by more than the score's noise, with
each (star, bin) gain first reduced by the whitened variance of the library's
shared misfit there (its floor, ``misfit``): a finer spacing must earn its
place by structure larger than the misfit could explain. Measured on frames
of eight real G dwarfs (docs: caveats, knot spacing), this keeps 250 Å where
the plain score chose 60–85 Å, and keeps 60–120 Å on frames with a 1–1.5 %
instrument ripple.

With fewer than `MIN_STARS_FOR_SELECTION` standards the prediction cannot be
checked and `DEFAULT_SPACING` is used.

The choice also gives the smoothing (model-selection) term of the error
budget: the local mean square of the difference between the combined shape at
the chosen spacing and at the next finer candidate, averaged over one knot
interval (`KnotChoice.smoothing_log_variance`). With the default spacing
(one or two standards) it is the structure that each star's fit with the
finest candidate finds beyond its noise: a structured throughput that 250 Å
knots cannot follow is then in the stated error instead of silently missing.
"""

import logging
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from scipy.ndimage import uniform_filter1d

from .exceptions import InputDataError
from .quantities import value_in
from .splines import banded_least_squares, bin_weighted, interior_knots

__all__ = [
    "CANDIDATE_SPACINGS", "DEFAULT_SPACING", "MIN_STARS_FOR_SELECTION", "KnotChoice", "select_knot_spacing",
    "resolve_knot_spacing",
]

log = logging.getLogger(__name__)

CANDIDATE_SPACINGS = (60.0, 85.0, 120.0, 170.0, 250.0, 350.0, 500.0)
"""Knot spacings (Å) tried by `select_knot_spacing`, about √2 apart."""

DEFAULT_SPACING = 250.0
"""Knot spacing (Å) with one or two standards: smooth enough that one star's noise and
template misfit on ~100 Å scales are not followed; structure finer than this is not
recovered (an exposure with ≥ 3 standards chooses for itself)."""

MIN_STARS_FOR_SELECTION = 3
"""Fewest standards for a leave-one-star-out choice (with two, each predicts only the other)."""

_CLIP = 4.0
"""Held-out residuals are capped at this many σ, so one bad star or pixel cannot set the choice."""

_SUMMARY_POINTS = 200
"""Samples of the smoothing term kept in `KnotChoice.summary` (it varies on knot scales only)."""


@dataclass
class KnotChoice:
    """The knot spacing used for the smooth vectors of one exposure and why.

    Attributes
    ----------
    spacing : float
        Chosen interior knot spacing (Å).
    method : str
        ``'loso'`` (leave-one-star-out), ``'default'`` (fewer than
        `MIN_STARS_FOR_SELECTION` stars) or ``'fixed'`` (given by the user).
    candidates : tuple of float
        Spacings tried (Å).
    scores : list of float
        Mean capped squared prediction error (per unit variance) of each
        candidate; NaN where not computed.
    n_stars : int
        Standards the choice used.
    wavelength : ndarray
        Å, where ``smoothing_log_variance`` is given.
    smoothing_log_variance : ndarray
        Variance of ln(Cal) attributed to the choice of smoothing: for
        ``'loso'`` the change from the next finer candidate, for
        ``'default'`` the structure a fit with the finest candidate finds
        beyond the noise (`_unresolved_structure`); None for ``'fixed'``.
    misfit_allowance : float
        How much (per unit variance) a finer spacing had to beat the
        smoother one by beyond the noise, for the shared template misfit
        (0 without a misfit or with fewer than `MIN_STARS_FOR_SELECTION`).
    """

    spacing: float
    method: str
    candidates: tuple = ()
    scores: list = field(default_factory=list)
    n_stars: int = 0
    wavelength: np.ndarray = None
    smoothing_log_variance: np.ndarray = None
    misfit_allowance: float = 0.0

    def smoothing_term(self, wavelength):
        """Variance of ln(Cal) from the smoothing choice, interpolated onto ``wavelength`` (Å)."""
        wave = np.asarray(wavelength, dtype=float)
        if self.wavelength is None or self.smoothing_log_variance is None:
            return np.zeros_like(wave)
        return np.interp(wave, self.wavelength, self.smoothing_log_variance)

    def summary(self):
        """A JSON-able dict (the smoothing term resampled to a few hundred points)."""
        out = {"spacing": float(self.spacing), "method": self.method,
               "candidates": [float(c) for c in self.candidates],
               "scores": [float(s) for s in self.scores], "n_stars": int(self.n_stars),
               "misfit_allowance": float(self.misfit_allowance)}
        if self.wavelength is not None:
            sample = np.linspace(self.wavelength[0], self.wavelength[-1], _SUMMARY_POINTS)
            out["smoothing_wavelength"] = sample.tolist()
            out["smoothing_fraction"] = np.sqrt(np.maximum(self.smoothing_term(sample), 0.0)).tolist()
        return out

    @classmethod
    def from_summary(cls, summary):
        """Inverse of `summary` (for choices read back from a file)."""
        wave = summary.get("smoothing_wavelength")
        frac = summary.get("smoothing_fraction")
        return cls(spacing=float(summary["spacing"]), method=summary["method"],
                   candidates=tuple(summary.get("candidates", ())), scores=list(summary.get("scores", [])),
                   n_stars=int(summary.get("n_stars", 0)),
                   misfit_allowance=float(summary.get("misfit_allowance", 0.0)),
                   wavelength=None if wave is None else np.asarray(wave, float),
                   smoothing_log_variance=None if frac is None else np.asarray(frac, float) ** 2)


def select_knot_spacing(wavelength, values, variance, exclude, candidates=CANDIDATE_SPACINGS,
                        default=DEFAULT_SPACING, max_points=1500, misfit=None):
    """Choose the knot spacing of the smooth vectors by leave-one-star-out prediction.

    Parameters
    ----------
    wavelength : ndarray, shape (n_pix,)
        Å, increasing (the common grid of the stars' vectors).
    values, variance : ndarray, shape (n_star, n_pix)
        Per-pixel calibration factors and their (counts-only) variances.
    exclude : ndarray of bool, shape (n_star, n_pix)
        Pixels kept out of the smooth fits (bad pixels, strong lines, telluric bands).
    candidates : sequence of float
        Spacings to try (Å).
    default : float
        Spacing used with fewer than `MIN_STARS_FOR_SELECTION` stars (Å).
    max_points : int
        The per-pixel vectors are binned to at most about this many points.
    misfit : callable, optional
        λ (Å) → fractional 1σ template misfit shared by standards of one type
        (the library's floor,
        `kspec_fluxcal.error_budget.library_misfit_floor`). A finer spacing
        is then chosen only when it predicts the held-out stars better than
        the smoother one by more than the noise and a shared misfit of that
        size could (`_finer_beyond_misfit`). None (a SYNTHETIC library,
        whose models are exact): the noise only.

    Returns
    -------
    `KnotChoice`
    """
    wave = np.asarray(wavelength, dtype=float)
    values = np.atleast_2d(np.asarray(values, dtype=float))
    variance = np.atleast_2d(np.asarray(variance, dtype=float))
    cands = np.sort(np.asarray(candidates, dtype=float))
    if cands.size == 0 or np.any(~np.isfinite(cands)) or np.any(cands <= 0):
        raise InputDataError(f"candidate knot spacings must be positive numbers of Å; got {list(candidates)}.")
    n_star = values.shape[0]
    good = ~np.atleast_2d(exclude) & np.isfinite(values) & np.isfinite(variance) & (variance > 0) & (values > 0)
    weight = np.where(good, 1.0 / np.where(good, variance, 1.0), 0.0)
    xb, yb, wb = bin_weighted(wave, np.where(good, values, 0.0), weight, max(wave.size // max_points, 1))
    used = wb > 0
    x_used = [xb[g] for g in used]
    lo, hi = min(x[0] for x in x_used), max(x[-1] for x in x_used)
    xc = np.clip(xb, lo, hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        y_log = np.where(used, np.log(np.where(used, yb, 1.0)), 0.0)
        w_log = np.where(used, wb * yb**2, 0.0)  # inverse variance of ln(binned value)
    if n_star < MIN_STARS_FOR_SELECTION:
        log.info("%d standard(s): knot spacing %.0f Å by default", n_star, default)
        smoothing = _unresolved_structure(xc, y_log, w_log, used, x_used, lo, hi, float(default), float(cands[0]))
        return KnotChoice(float(default), "default", tuple(cands), [np.nan] * cands.size, n_star, xb, smoothing)
    # weight of a star in the shape mean: its inverse variance smoothed along λ (as its spline's would be)
    mean_weight = uniform_filter1d(w_log, max(xb.size // 50, 1), axis=1)

    interiors = [interior_knots(x_used, lo, hi, spacing, min_points=8) for spacing in cands]
    models = np.array([_fit_log_splines(xc, y_log, w_log, interior, lo, hi) for interior in interiors])
    # each star's gray term: its median offset from the median star over the bins it covers
    gray = _masked_row_median(models - np.median(models, axis=1, keepdims=True), used[None])
    shape = models - gray[:, :, None]  # (n_cand, n_star, n_bin)
    w = np.where(used, mean_weight, 0.0)
    total_w, total = w.sum(axis=0), np.sum(w * shape, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        others = (total[:, None] - w * shape) / (total_w - w)
        shapes = total / total_w
    valid = used[None] & np.isfinite(others)
    resid = np.where(valid, y_log[None] - others, 0.0)
    w_valid = w_log * valid
    offset = np.sum(w_valid * resid, axis=2) / np.maximum(np.sum(w_valid, axis=2), 1e-300)
    z2 = np.where(valid, np.minimum((resid - offset[:, :, None]) ** 2 * w_log, _CLIP**2), 0.0)
    scores = np.sum(z2, axis=(1, 2)) / np.maximum(np.count_nonzero(valid, axis=(1, 2)), 1)
    best = int(np.nanargmin(scores))
    n_terms = np.count_nonzero(used)
    tolerance = scores[best] * np.sqrt(2.0 / max(n_terms, 1))
    smoothest = int(np.max(np.flatnonzero(scores <= scores[best] + tolerance)))  # the smoothest of the equals
    allowance = _misfit_allowance(misfit, xb, w_log)
    best = _finer_beyond_misfit(z2, valid, allowance, tolerance, max(smoothest, _index_at_least(cands, default)))
    smoothing = np.zeros(xb.size)
    if best > 0:
        diff = np.where(np.isfinite(shapes[best]) & np.isfinite(shapes[best - 1]), shapes[best] - shapes[best - 1], 0.0)
        smoothing = uniform_filter1d(diff**2, _samples_per(cands[best], xb), mode="nearest")
    mean_allowance = float(np.sum(np.where(valid[best], allowance, 0.0)) / max(np.count_nonzero(valid[best]), 1))
    log.info("knot spacing %.0f Å chosen by leave-one-star-out over %d standards (scores %s; misfit allowance "
             "%.3f)", cands[best], n_star, ", ".join(f"{c:.0f}:{s:.3f}" for c, s in zip(cands, scores)),
             mean_allowance)
    return KnotChoice(float(cands[best]), "loso", tuple(cands), scores.tolist(), n_star, xb, smoothing,
                      mean_allowance)


def _index_at_least(cands, spacing):
    """Index of the finest candidate at least ``spacing`` (the coarsest when none is)."""
    at_least = np.flatnonzero(cands >= spacing)
    return int(at_least[0]) if at_least.size else cands.size - 1


def _misfit_allowance(misfit, x, w_log):
    """Whitened variance ``misfit(x)² × w_log`` of a shared template misfit, per star and bin (capped at `_CLIP`²).

    A misfit that every standard shares is predicted by the other stars: a
    finer spacing that follows it lowers a held-out star's squared error in
    a bin by up to this much with no instrument structure behind it.
    """
    if misfit is None:
        return np.zeros_like(w_log)
    frac = np.asarray(misfit(x), dtype=float)
    return np.minimum(w_log * np.where(np.isfinite(frac), frac, 0.0) ** 2, _CLIP**2)


def _finer_beyond_misfit(z2, valid, allowance, tolerance, start):
    """The knot choice: from candidate ``start`` towards finer ones, each taken only when it earns it.

    Candidate ``j`` (finer than the current choice ``k``) is taken when its
    gain, the mean over the held-out (star, bin) terms of z²_k − z²_j with
    each positive gain first reduced by that term's misfit ``allowance``,
    exceeds ``tolerance`` (the score's noise). A shared misfit can thus
    lower the error by up to its own size in every bin without moving the
    choice, while instrument structure larger than the misfit where the
    stars are bright (a 1 % ripple in the red, where the misfit is 0.2–0.4 %)
    still does.
    """
    chosen = start
    for j in range(start - 1, -1, -1):
        both = valid[j] & valid[chosen]
        gain = np.where(both, z2[chosen] - z2[j], 0.0)
        gain = np.where(gain > 0, np.maximum(gain - allowance, 0.0), gain)
        if np.sum(gain) / max(np.count_nonzero(both), 1) > tolerance:
            chosen = j
    return chosen


def _unresolved_structure(x, y_log, w_log, used, x_used, lo, hi, coarse, fine):
    """Variance of ln(Cal) that splines with ``coarse`` knots leave out, as splines with ``fine`` knots see it.

    Without other stars to check a spacing against, each star's fine fit is
    compared with its coarse fit: the squared difference, less the part the
    noise explains (its whitened sum exceeds the number of extra
    coefficients only by real structure: throughput ripples or the star's own
    template misfit; a star whose excess is within 2σ of what noise alone
    gives adds nothing), averaged over the stars and over one coarse knot
    interval.
    """
    coarse_knots = interior_knots(x_used, lo, hi, coarse, min_points=8)
    fine_knots = interior_knots(x_used, lo, hi, fine, min_points=8)
    extra = fine_knots.size - coarse_knots.size
    if extra <= 0:
        return np.zeros(x.size)
    diff = np.where(used, _fit_log_splines(x, y_log, w_log, fine_knots, lo, hi)
                    - _fit_log_splines(x, y_log, w_log, coarse_knots, lo, hi), 0.0)
    whitened = np.sum(w_log * diff**2, axis=1) / extra
    significant = whitened > 1.0 + 2.0 * np.sqrt(2.0 / extra)  # beyond a 2σ fluctuation of noise alone
    excess = np.where(significant, 1.0 - 1.0 / np.maximum(whitened, 1e-300), 0.0)
    per_star = uniform_filter1d(diff**2 * excess[:, None], _samples_per(coarse, x), axis=1, mode="nearest")
    return np.mean(per_star, axis=0)


def _samples_per(length, x):
    """Samples of ``x`` (Å, increasing; clipped copies of its ends repeat) in ``length`` Å; at least 1."""
    spacing = np.diff(np.unique(x))
    step = float(np.median(spacing)) if spacing.size else 0.0
    return max(int(round(length / step)), 1) if step > 0 else 1


def _masked_row_median(values, keep):
    """Median along the last axis of ``values`` over the entries where ``keep`` (broadcast); 0 where none."""
    keep = np.broadcast_to(keep, values.shape)
    ordered = np.sort(np.where(keep, values, np.inf), axis=-1)
    count = np.count_nonzero(keep, axis=-1)
    lo = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[..., None], axis=-1)[..., 0]
    hi = np.take_along_axis(ordered, np.maximum(count // 2, 0)[..., None], axis=-1)[..., 0]
    return np.where(count > 0, 0.5 * (lo + hi), 0.0)


def _fit_log_splines(x, y, w, interior, lo, hi, degree=3):
    """Weighted least-squares B-splines of every row of ``y`` on shared knots, evaluated at ``x`` (banded solves)."""
    basis, solve = banded_least_squares(x, interior, degree, lo, hi, ridge=1e-10)
    return (basis @ solve(y, w).T).T


def resolve_knot_spacing(knot_spacing, wavelength, values, variance, exclude, misfit=None):
    """A `KnotChoice` for ``knot_spacing``: ``'auto'`` selects (`select_knot_spacing`, with the shared
    template ``misfit``), a number is fixed (Å)."""
    if isinstance(knot_spacing, str):
        if knot_spacing != "auto":
            raise InputDataError(f"knot_spacing must be 'auto' or a number of Å; got {knot_spacing!r}.")
        return select_knot_spacing(wavelength, values, variance, exclude, misfit=misfit)
    spacing = float(value_in(knot_spacing, u.AA, "knot_spacing"))
    if not np.isfinite(spacing) or spacing <= 0:
        raise InputDataError(f"knot_spacing must be 'auto' or a positive number of Å; got {knot_spacing!r}.")
    return KnotChoice(spacing, "fixed", (spacing,), [np.nan], int(np.atleast_2d(values).shape[0]))
