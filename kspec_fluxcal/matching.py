"""Radial velocities and template matching against a prepared template grid.

Radial velocities follow the optical convention λ_obs = λ_rest · (1 + v/c)
of `kspec_fluxcal.radial_velocity`, through which every shift goes.

Matching in brief
-----------------
For many stars at once (`select_best_templates`):

1. RV per star: one FFT cross-correlation against a reference template of
   the grid (the node nearest the star's Teff window centre), on a uniform
   ln λ grid, both continuum-normalised by the same linear smoother.
2. The star is interpolated (cubic spline) onto ``grid.wavelength`` in the
   template rest frame; masked pixels, pixels outside its coverage and
   ``mask_regions`` (observed-frame intervals, e.g. telluric bands) get zero
   weight.
3. Star and templates are divided by the *same* linear B-spline smoother
   ``S`` (`~kspec_fluxcal.continuum.smoothing_operator`, unclipped, unit
   weights; masked star pixels are first filled by linear interpolation), so a
   smooth multiplicative difference (throughput, reddening) cancels and the
   scores measure line features only.
4. χ² (weights 1/variance of the normalised star) with a free scalar
   amplitude per template for all stars and templates with two matrix
   products. The Huber metric takes a few
   iteratively-reweighted steps, each still two matrix products: pixel
   weights min(1, δ/abs(r)) from the residuals of the current best template
   are shared by all templates (the IRLS majoriser of the Huber loss: exact
   for that template, a tight upper bound for the others).
5. The best node is refined between nodes: the χ² of trilinear
   combinations of the normalised templates of its 3×3×3 (Teff, log g,
   [M/H]) neighbourhood in its [α/M] cube is minimised on a lattice (exactly,
   from the neighbourhood's 27×27 Gram matrix), giving weights over ≤ 8
   nodes; the interpolated model ``weights @ grid.flux`` is re-scored and kept
   only when it beats the node.
6. A Teff window restricts candidates but is widened whenever the best node
   sits on its edge (and not on the grid's).
"""

import functools
import logging
import weakref
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.stats import mad_std
from scipy.interpolate import BSpline, make_interp_spline

from .cache import cache_dir, fingerprint, load_verified_arrays, save_arrays, stamp_verified
from .containers import FLAM, is_spectrum
from .continuum import smoothing_operator
from .exceptions import CacheError, InputDataError
from .radial_velocity import (  # noqa: F401 (C_KMS, doppler_factor, cross_correlate_rv: public here too)
    C_KMS,
    ccf_peaks,
    ccf_rows,
    cross_correlate_rv,
    default_knot_spacing,
    doppler_factor,
    doppler_kms,
    resample,
    star_arrays,
    velocity_kms,
)
from .template_scores import HUBER_ITER, check_metric, chi2_matrix, huber_reweight, score_template_fit, template_scores
from .wavelength import log_uniform_grid

__all__ = [
    "doppler_factor",
    "cross_correlate_rv",
    "score_template_fit",
    "TemplateMatch",
    "select_best_template",
    "select_best_templates",
    "model_spectrum",
    "model_fluxes",
]

log = logging.getLogger(__name__)

_KMS = u.km / u.s
_PARAMS = ("teff", "logg", "feh")
_REFINE_COARSE = 0.25  # lattice steps (in node steps) of the refinement passes
_REFINE_FINE = 0.05
_REFINE_RECENTRE = 3


# ----------------------------------------------------------------------------- grid cache


class _GridData:
    """Arrays derived once per grid and smoother: normalised templates, node lookup, CCF grid."""

    def __init__(self, grid, knot_spacing, oversample):
        self.wave = np.asarray(u.Quantity(grid.wavelength, u.AA).value, dtype=float)
        self.flux = np.asarray(grid.flux, dtype=float)
        if self.flux.ndim != 2 or self.flux.shape[1] != self.wave.size:
            raise InputDataError(
                f"grid.flux has shape {self.flux.shape}; expected (n_templates, {self.wave.size})."
            )
        self.n_templates = self.flux.shape[0]
        table = grid.params
        self.par = {}
        for name in (*_PARAMS, "alpha_m"):
            if name not in table.colnames:
                raise InputDataError(f"grid.params lacks the column '{name}'.")
            self.par[name] = np.asarray(u.Quantity(table[name]).value, dtype=float)
        self.spacing = default_knot_spacing(self.wave, knot_spacing)
        self.op = smoothing_operator(self.wave, self.spacing * u.AA)
        self.pix_good, self.norm, self.norm2 = _normalised_templates(grid, self.flux, self.op, self.spacing)
        self.n_coef = self.op.n_coef
        # per [alpha/M] cube: node values per axis, and a node-index cube (−1 = missing) padded by one
        self.axes, self.cube, self.position = {}, {}, np.zeros((self.n_templates, 3), dtype=int)
        keys = np.round(np.column_stack([self.par[p] for p in ("alpha_m", *_PARAMS)]), 6)
        for alpha in np.unique(keys[:, 0]):
            sel = np.flatnonzero(keys[:, 0] == alpha)
            self.axes[alpha] = tuple(np.unique(keys[sel, i + 1]) for i in range(3))
            pos = np.column_stack([np.searchsorted(ax, keys[sel, i + 1]) for i, ax in enumerate(self.axes[alpha])])
            cube = np.full(tuple(ax.size + 2 for ax in self.axes[alpha]), -1)
            cube[tuple((pos + 1).T)] = sel  # duplicates: the last one wins
            self.cube[alpha] = cube
            self.position[sel] = pos
        self.keys = keys
        # uniform ln-lambda grid for the cross-correlation
        self.lnstep = float(np.median(np.diff(np.log(self.wave)))) / float(oversample)
        self.ccf_wave = log_uniform_grid(self.wave[0], self.wave[-1], self.lnstep)
        self.ccf_op = smoothing_operator(self.ccf_wave, self.spacing * u.AA)
        self._ccf_templates = {}

    def ccf_template_rows(self, indices):
        """Normalised, tapered CCF rows (m, n_ln) of the templates ``indices``."""
        missing = sorted(set(indices) - set(self._ccf_templates))
        if missing:
            flux = np.array([np.interp(self.ccf_wave, self.wave, self.flux[k]) for k in missing])
            good = np.interp(self.ccf_wave, self.wave, self.pix_good.astype(float)) > 1.0 - 1e-9
            rows, _ = ccf_rows(flux, None, np.broadcast_to(good, flux.shape), self.ccf_op)
            self._ccf_templates.update(zip(missing, rows))
        return np.array([self._ccf_templates[k] for k in indices])


_NORMALISED_VERSION = 1
"""Bump when the normalisation of the templates (`_normalised_templates`) changes."""


def _normalised_templates(grid, flux, op, spacing):
    """(usable pixels, flux / continuum, its square) of every template, memory-mapped from the cache when there.

    A grid prepared through the cache (``grid.meta['key']``) keeps its
    normalised templates beside it, so that the first match of a process
    reads them instead of smoothing the whole grid again.
    """
    key = (getattr(grid, "meta", None) or {}).get("key")
    folder = cache_dir("normalised", str(key), fingerprint(_NORMALISED_VERSION, spacing)) if key else None
    if folder is not None:
        try:
            arrays, _ = load_verified_arrays(folder)
            if arrays["norm"].shape == flux.shape:
                return arrays["pix_good"], arrays["norm"], arrays["norm2"]
        except CacheError:
            log.debug("normalised templates of %s are not cached yet", key)
    cont = op(flux)
    pix_good = np.all(np.isfinite(flux) & (cont > 0), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(pix_good, flux / cont, 0.0)
    norm2 = norm**2
    if folder is not None:
        try:
            save_arrays(folder, {"pix_good": pix_good, "norm": norm, "norm2": norm2}, {"grid": key})
            stamp_verified(folder)
        except OSError as exc:  # a read-only cache: the next process normalises again
            log.debug("cannot cache the normalised templates of %s: %s", key, exc)
    return pix_good, norm, norm2


_GRID_CACHE = {}


def _grid_data(grid, knot_spacing, oversample):
    """The `_GridData` of ``grid``, cached while the grid lives and its flux array is unchanged."""
    spacing = None if knot_spacing is None else float(u.Quantity(knot_spacing, u.AA).value)
    slot = _GRID_CACHE.get(id(grid))
    if slot is None or slot["grid"]() is not grid or slot["flux"] is not grid.flux:
        try:
            ref = weakref.ref(grid)
        except TypeError:
            log.debug("grid of type %s is not weak-referenceable; not caching", type(grid).__name__)
            return _GridData(grid, spacing, oversample)
        slot = {"grid": ref, "flux": grid.flux, "data": {}}
        _GRID_CACHE[id(grid)] = slot
        weakref.finalize(grid, _GRID_CACHE.pop, id(grid), None)
    key = (spacing, int(oversample))
    if key not in slot["data"]:
        slot["data"][key] = _GridData(grid, spacing, oversample)
    return slot["data"][key]


# ----------------------------------------------------------------------------- results


@dataclass
class TemplateMatch:
    """The best template (or interpolated model) of one star.

    Attributes
    ----------
    index : int
        Best grid node.
    weights : ndarray, shape (n_templates,)
        Sum to 1; non-zero only on the ≤ 8 nodes whose trilinear combination
        ``weights @ grid.flux`` is the refined model.
    params : dict
        ``teff`` (K), ``logg`` (dex, cgs), ``feh``, ``alpha_m`` of the refined point.
    node_params : dict
        The same for the best node.
    rv, rv_error : `~astropy.units.Quantity`
        Radial velocity and its 1σ error (km/s, optical convention).
    score : float
        χ² (or Huber score) of the refined model, or of the node when
        refinement did not help; normalised star and model, weights
        1/variance (see the module notes for the Huber majoriser).
    runner_up_score : float
        Best score among the other candidate nodes (NaN with one candidate).
    reduced_score : float
        ``score / ndof``.
    ndof : int
        Good pixels − 1 amplitude − smoother coefficients.
    n_candidates : int
        Nodes inside the (final) Teff window.
    scores : ndarray, shape (n_templates,)
        Score of every node; NaN outside the window.
    on_edge : dict
        For ``teff``, ``logg``, ``feh``: None, ``'grid_low'``/``'grid_high'``
        (best node on its [α/M] cube's edge) or ``'window_low'``/``'window_high'``.
    teff_window : `~astropy.units.Quantity` or None
        (low, high) window actually used, after any widening (K).
    window_widened : bool
        True when the window had to be widened.
    refined : bool
        True when the interpolated model replaced the node.
    ccf_peak : float
        Normalised height of the CCF peak (≤ 1).
    metric : str
        'chi2' or 'huber'.
    """

    index: int
    weights: np.ndarray
    params: dict
    node_params: dict
    rv: u.Quantity
    rv_error: u.Quantity
    score: float
    runner_up_score: float
    reduced_score: float
    ndof: int
    n_candidates: int
    scores: np.ndarray
    on_edge: dict = field(default_factory=dict)
    teff_window: u.Quantity = None
    window_widened: bool = False
    refined: bool = False
    ccf_peak: float = float("nan")
    metric: str = "chi2"


# ----------------------------------------------------------------------------- selection helpers


def _window_pair(window, name):
    """(low, high) in K as floats, or None."""
    if window is None:
        return None
    lo, hi = (float(u.Quantity(v, u.K).value) for v in window)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        raise InputDataError(f"{name} must be (low, high) with low ≤ high in K; got {window!r}.")
    return lo, hi


def _reference_index(data, window):
    """Grid node used as the CCF reference: nearest the window centre, mid log g/[M/H], lowest α."""
    par = data.par
    alpha_ok = par["alpha_m"] == par["alpha_m"].min()
    centre = {p: np.median(np.unique(par[p])) for p in _PARAMS}
    if window is not None:
        centre["teff"] = 0.5 * (window[0] + window[1])
    dist = np.zeros(data.n_templates)
    for p in _PARAMS:
        span = np.ptp(par[p])
        dist += ((par[p] - centre[p]) / (span if span > 0 else 1.0)) ** 2
    return int(np.argmin(np.where(alpha_ok, dist, np.inf)))


def _select_in_window(scores, teff, window):
    """Best node within the Teff window, widening the window while the best sits on its edge."""
    finite = np.isfinite(scores)
    tmin, tmax = teff[finite].min(), teff[finite].max()
    if window is None:
        lo, hi = tmin, tmax
    else:
        lo, hi = window
    widened = False
    steps = np.diff(np.unique(teff))
    min_step = steps.min() if steps.size else 1.0
    while True:
        cand = finite & (teff >= lo - 1e-6) & (teff <= hi + 1e-6)
        width = max(hi - lo, min_step)
        if not cand.any():
            lo, hi, widened = lo - width, hi + width, True
            continue
        best = int(np.argmin(np.where(cand, scores, np.inf)))
        grow_hi = teff[best] >= teff[cand].max() and hi < tmax
        grow_lo = teff[best] <= teff[cand].min() and lo > tmin
        if not (grow_hi or grow_lo):
            return best, cand, (lo, hi), widened
        hi = hi + width if grow_hi else hi
        lo = lo - width if grow_lo else lo
        widened = True


def _on_edge(data, best, cand, window):
    """Which parameters of the best node lie on the grid (cube) or window edge."""
    alpha = data.keys[best, 0]
    axes = data.axes[alpha]
    edge = {}
    for i, p in enumerate(_PARAMS):
        value, values = data.keys[best, i + 1], axes[i]
        edge[p] = None
        if values.size > 1 and value == values[0]:
            edge[p] = "grid_low"
        elif values.size > 1 and value == values[-1]:
            edge[p] = "grid_high"
    if window is not None and edge["teff"] is None:
        teff = data.keys[best, 1]
        if teff <= data.keys[cand, 1].min():
            edge["teff"] = "window_low"
        elif teff >= data.keys[cand, 1].max():
            edge["teff"] = "window_high"
    return edge


def _neighbourhood(data, centre, usable):
    """The 3×3×3 (Teff, log g, [M/H]) neighbourhood of node ``centre`` in its [α/M] cube.

    Returns ``nodes`` (27,) template indices by slot (−1 where missing or not
    usable), ``values`` (3, 3) node values per axis and slot (NaN beyond the
    cube) and the slot-coordinate bounds ``lo``, ``hi`` (3,) in [−1, 1].
    """
    alpha = data.keys[centre, 0]
    i, j, k = data.position[centre]
    nodes = data.cube[alpha][i : i + 3, j : j + 3, k : k + 3].ravel().copy()
    nodes[nodes >= 0] = np.where(usable[nodes[nodes >= 0]], nodes[nodes >= 0], -1)
    values = np.full((3, 3), np.nan)
    for a, (axis, p) in enumerate(zip(data.axes[alpha], data.position[centre])):
        lo, hi = max(p - 1, 0), min(p + 2, axis.size)
        values[a, lo - p + 1 : hi - p + 1] = axis[lo:hi]
    lo = np.where(np.isfinite(values[:, 0]), -1.0, 0.0)
    hi = np.where(np.isfinite(values[:, 2]), 1.0, 0.0)
    return nodes, values, lo, hi


def _axis_weights(t):
    """Linear-interpolation weights (n, 3) over the slots −1, 0, +1 of coordinates ``t`` ∈ [−1, 1].

    The coordinate is linear in the physical value within each cell, so
    irregular node spacing is handled.
    """
    t = np.asarray(t, dtype=float)
    return np.column_stack([np.maximum(-t, 0.0), 1.0 - np.abs(t), np.maximum(t, 0.0)])


def _lattice(lo, hi, step):
    """Lattice points (P, 3) with spacing ``step`` over the box [lo, hi] and their trilinear weights (P, 27)."""
    return _lattice_cached(tuple(np.round(lo, 9).tolist()), tuple(np.round(hi, 9).tolist()), float(step))


@functools.lru_cache(maxsize=512)
def _lattice_cached(lo, hi, step):
    """`_lattice` for hashable boxes: the boxes recur (cells around a node, 1/4-step points), so each is built once."""
    axes = [np.linspace(a, b, int(round((b - a) / step)) + 1) for a, b in zip(lo, hi)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    weights = np.einsum("ai,bj,ck->abcijk", *(_axis_weights(a) for a in axes)).reshape(coords.shape[0], 27)
    coords.flags.writeable = False
    weights.flags.writeable = False
    return coords, weights


def _refine(data, best, s, w, usable):
    """Refined point around node ``best`` as (weights {node: weight}, (teff, logg, feh)), or None.

    The χ² of the trilinear model Σ_c w_c N_c (N = normalised templates,
    free amplitude) is a ratio of quadratic forms in the corner weights, so
    with the neighbourhood's Gram matrix A = Σ w N_c N_d and b = Σ w s N_c it
    is evaluated cheaply on a lattice (1/4 step, then 1/20 step around the
    best point) over the cells around the node; cells with a missing corner
    are skipped. When the optimum lies closer to a neighbouring node the
    neighbourhood moves there (up to three times, while χ² keeps falling).
    """
    centre, visited, found = best, {best}, None
    for _ in range(_REFINE_RECENTRE + 1):
        nodes, values, lo, hi = _neighbourhood(data, centre, usable)
        if np.all(lo == hi):
            break
        present = nodes >= 0
        norm = data.norm[nodes[present]]
        wnorm = norm * w
        gram = np.zeros((27, 27))
        gram[np.ix_(present, present)] = wnorm @ norm.T
        cross = np.zeros(27)
        cross[present] = wnorm @ s
        point = None
        for step, box in ((_REFINE_COARSE, (lo, hi)), (_REFINE_FINE, None)):
            if box is None:
                box = (np.maximum(lo, point - _REFINE_COARSE), np.minimum(hi, point + _REFINE_COARSE))
            coords, weights = _lattice(*box, step)
            den = np.sum((weights @ gram) * weights, axis=1)
            valid = ~np.any(weights[:, ~present] > 1e-12, axis=1) & (den > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                gain = np.where(valid, (weights @ cross) ** 2 / den, -np.inf)
            pick = int(np.argmax(gain))
            point = coords[pick]
        if found is not None and gain[pick] <= found[0]:
            break
        found = (gain[pick], point, weights[pick], nodes, values)
        move = np.where(np.abs(point) > 0.5, np.sign(point), 0).astype(int) + 1
        neighbour = nodes[(move * (9, 3, 1)).sum()]
        if neighbour < 0 or neighbour in visited:
            break
        centre = neighbour
        visited.add(neighbour)
    if found is None:
        return None
    _, point, corner_weights, nodes, values = found
    axis_weights = _axis_weights(point)
    params = np.sum(np.where(axis_weights > 0, axis_weights * np.nan_to_num(values), 0.0), axis=1)
    keep = corner_weights > 1e-12
    return dict(zip(nodes[keep].tolist(), corner_weights[keep].tolist())), params


def _node_params(data, k):
    return {p: float(data.par[p][k]) for p in (*_PARAMS, "alpha_m")}


def _prepare_stars(spectra, data, mask_regions):
    """Per-star arrays and the number of native pixels inside the grid coverage."""
    stars = []
    for i, spectrum in enumerate(spectra):
        wave, flux, var, good = star_arrays(spectrum, mask_regions, f"spectra[{i}]")
        inside = good & (wave >= data.wave[0]) & (wave <= data.wave[-1])
        if np.count_nonzero(inside) < 10:
            raise InputDataError(
                f"spectra[{i}] ({wave[0]:.0f}–{wave[-1]:.0f} Å) barely overlaps the template grid "
                f"({data.wave[0]:.0f}–{data.wave[-1]:.0f} Å); prepare the grid for this frame."
            )
        stars.append((wave, flux, var, good, np.count_nonzero(inside)))
    return stars


def _stack_resampled(rows):
    """Stack resampled (flux, var, good) rows; variance rows of stars without one are NaN."""
    flux = np.array([r[0] for r in rows])
    var = np.array([r[1] if r[1] is not None else np.full(flux.shape[1], np.nan) for r in rows])
    good = np.array([r[2] for r in rows])
    return flux, var, good


def _rest_frame_normalised(data, stars, rv):
    """Stars on ``grid.wavelength`` in the rest frame, divided by the grid smoother.

    Returns (s, w): normalised flux and weights 1/var (0 on bad pixels).
    Without a variance, a constant noise is estimated from the scatter of
    successive-pixel differences (1.4826·MAD/√2, floored at 1e-4).
    """
    rows = [
        resample(wave, flux, var, good, data.wave * doppler_kms(v), cubic=True)
        for (wave, flux, var, good, _), v in zip(stars, rv)
    ]
    flux, var, good = _stack_resampled(rows)
    cont = data.op(flux)
    ok = good & (cont > 0) & data.pix_good[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(ok, flux / cont, 0.0)
        var_s = var / cont**2
    for i in np.flatnonzero(~np.any(np.isfinite(var_s) & ok, axis=1)):
        diff = np.diff(s[i, ok[i]])
        sigma = max(mad_std(diff) / np.sqrt(2.0), 1e-4)
        var_s[i] = sigma**2
    ok &= np.isfinite(var_s) & (var_s > 0)
    w = np.where(ok, 1.0 / np.where(ok, var_s, 1.0), 0.0)
    return np.where(ok, s, 0.0), w


def select_best_templates(
    spectra,
    grid,
    rv_guesses=None,
    teff_windows=None,
    metric="chi2",
    refine=True,
    mask_regions=None,
    max_shift=500 * _KMS,
    huber_delta=3.0,
    knot_spacing=None,
    oversample=2,
):
    """Best template (refined between nodes) and RV of many stars at once.

    Parameters
    ----------
    spectra : list of `~specutils.Spectrum`
        Observed spectra (any flux unit; variance and mask used when present),
        each on its own wavelength axis (Å, air).
    grid : `~kspec_fluxcal.templates.PreparedGrid`
        Templates at the instrument resolution on ``grid.wavelength`` (rest
        frame), with ``params`` columns teff, logg, feh, alpha_m.
    rv_guesses : `~astropy.units.Quantity`, optional
        One RV guess per star (default 0 km/s); the CCF searches ±``max_shift``.
    teff_windows : list, optional
        Per star None or (low, high) Teff (K, floats or Quantities), e.g. from
        colours. Widened automatically when the best node sits on its edge.
    metric : {'chi2', 'huber'}
        Score (see `score_template_fit`); Huber resists outliers such as
        cosmic rays. Here it is evaluated as the IRLS majoriser (module notes),
        equal to the Huber score of the reference template.
    refine : bool
        Interpolate between nodes (see the module notes).
    mask_regions : `~astropy.units.Quantity`, shape (n, 2), optional
        Observed-frame intervals (Å) given zero weight (telluric bands).
    max_shift : `~astropy.units.Quantity`
        Half-width of the RV search window (km/s).
    huber_delta : float
        Huber threshold (σ).
    knot_spacing : `~astropy.units.Quantity`, optional
        Knot spacing of the pseudo-continuum smoother (default
        max(150 Å, 20 grid pixels)). Its derived arrays are cached per grid.
    oversample : int
        ln λ points per grid pixel in the cross-correlation.

    Returns
    -------
    list of `TemplateMatch`
        One per star, in order.
    """
    check_metric(metric, huber_delta)
    if is_spectrum(spectra):
        raise InputDataError("spectra must be a list of spectra; use select_best_template for one star.")
    spectra = list(spectra)
    m = len(spectra)
    if m == 0:
        return []
    data = _grid_data(grid, knot_spacing, oversample)
    guesses = np.zeros(m) if rv_guesses is None else np.broadcast_to(velocity_kms(rv_guesses, "rv_guesses"), (m,))
    shift = float(velocity_kms(max_shift, "max_shift"))
    windows = [None] * m if teff_windows is None else list(teff_windows)
    if len(windows) != m:
        raise InputDataError(f"teff_windows has {len(windows)} entries for {m} spectra.")
    windows = [_window_pair(wd, f"teff_windows[{i}]") for i, wd in enumerate(windows)]
    stars = _prepare_stars(spectra, data, mask_regions)
    n_native = np.array([st[4] for st in stars])

    # 1. RVs: one cross-correlation per star against a reference node
    ln_rows = _stack_resampled([resample(w, f, v, g, data.ccf_wave) for w, f, v, g, _ in stars])
    has_var = np.any(np.isfinite(ln_rows[1]), axis=1)
    star_rows = np.empty_like(ln_rows[0])
    for sel in (has_var, ~has_var):
        if sel.any():
            star_rows[sel] = ccf_rows(
                ln_rows[0][sel], ln_rows[1][sel] if sel is has_var else None, ln_rows[2][sel], data.ccf_op
            )[0]
    refs = [_reference_index(data, wd) for wd in windows]
    rv, rv_err, peak, at_edge, _, _ = ccf_peaks(
        star_rows, data.ccf_template_rows(refs), data.lnstep, guesses - shift, guesses + shift, n_native
    )
    for i in np.flatnonzero(at_edge):
        log.warning("spectra[%d]: CCF maximum at the edge of the ±%.0f km/s window", i, shift)

    # 2–4. rest frame, common pseudo-continuum, scores of all templates
    s, w = _rest_frame_normalised(data, stars, rv)
    w_score, offset = w, np.zeros(m)
    all_scores = chi2_matrix(w * s, w, np.sum(w * s * s, axis=1), data.norm, data.norm2)
    if metric == "huber":
        # IRLS majoriser: weights from the current best template, all templates rescored by matrix products
        for _ in range(HUBER_ITER):
            h, offset = huber_reweight(s, w, data.norm[np.nanargmin(all_scores, axis=1)], huber_delta)
            w_score = w * h
            all_scores = chi2_matrix(
                w_score * s, w_score, np.sum(w_score * s * s, axis=1), data.norm, data.norm2
            ) + offset[:, None]
    ndof = np.maximum(np.count_nonzero(w > 0, axis=1) - 1 - data.n_coef, 1)

    # 5–6. per star: window and best node, then the refinement between nodes
    picks = [_select_in_window(all_scores[i], data.par["teff"], windows[i]) for i in range(m)]
    corners = [None] * m
    if refine:
        for i, (best, cand, _, _) in enumerate(picks):
            corners[i] = _refine(data, best, s[i], w_score[i], cand)
    todo = [i for i in range(m) if corners[i] is not None and len(corners[i][0]) > 1]
    refined_scores = {}
    if todo:
        models = np.array([
            np.fromiter(corners[i][0].values(), dtype=float) @ data.flux[np.fromiter(corners[i][0], dtype=int)]
            for i in todo
        ])
        with np.errstate(divide="ignore", invalid="ignore"):
            norms = np.where(data.pix_good, models / data.op(models), 0.0)
        for i, norm in zip(todo, norms):
            refined_scores[i] = float(template_scores(s[i], w_score[i], norm[None], "chi2", huber_delta)[0]) + offset[i]

    matches = []
    for i, (best, cand, final_window, widened) in enumerate(picks):
        scores = np.where(cand, all_scores[i], np.nan)
        others = np.delete(scores, best)
        runner_up = float(np.nanmin(others)) if np.isfinite(others).any() else float("nan")
        weights = np.zeros(data.n_templates)
        weights[best] = 1.0
        params, score, refined = _node_params(data, best), float(scores[best]), False
        if refined_scores.get(i, np.inf) < score:
            nodes, point = corners[i]
            weights[best] = 0.0
            weights[list(nodes)] = list(nodes.values())
            params = dict(zip(_PARAMS, map(float, point)), alpha_m=float(data.par["alpha_m"][best]))
            score, refined = refined_scores[i], True
        matches.append(
            TemplateMatch(
                index=best,
                weights=weights,
                params=params,
                node_params=_node_params(data, best),
                rv=rv[i] * _KMS,
                rv_error=rv_err[i] * _KMS,
                score=score,
                runner_up_score=runner_up,
                reduced_score=score / ndof[i],
                ndof=int(ndof[i]),
                n_candidates=int(np.count_nonzero(cand)),
                scores=scores,
                on_edge=_on_edge(data, best, cand, windows[i]),
                teff_window=None if windows[i] is None else u.Quantity(final_window, u.K),
                window_widened=widened,
                refined=refined,
                ccf_peak=float(peak[i]),
                metric=metric,
            )
        )
        if widened:
            log.info("spectra[%d]: Teff window widened from %.0f–%.0f to %.0f–%.0f K", i, *windows[i], *final_window)
    return matches


def select_best_template(
    spectrum, grid, rv_guess=None, teff_window=None, metric="chi2", refine=True, mask_regions=None, **kwargs
):
    """Best template of one star; see `select_best_templates` for the method and options.

    Parameters
    ----------
    spectrum : `~specutils.Spectrum`
        Observed spectrum.
    grid : `~kspec_fluxcal.templates.PreparedGrid`
        Prepared template grid.
    rv_guess : `~astropy.units.Quantity`, optional
        RV guess (km/s; default 0).
    teff_window : tuple, optional
        (low, high) Teff in K.
    metric, refine, mask_regions, **kwargs
        As in `select_best_templates`.

    Returns
    -------
    `TemplateMatch`
    """
    return select_best_templates(
        [spectrum],
        grid,
        rv_guesses=None if rv_guess is None else u.Quantity([rv_guess]),
        teff_windows=[teff_window],
        metric=metric,
        refine=refine,
        mask_regions=mask_regions,
        **kwargs,
    )[0]


def model_spectrum(grid, weights, wavelength, rv=0 * _KMS, continuum=False):
    """The refined prepared model, Doppler-shifted onto observed wavelengths.

    Parameters
    ----------
    grid : `~kspec_fluxcal.templates.PreparedGrid`
        The grid the weights refer to.
    weights : ndarray, shape (n_templates,), or `TemplateMatch`
        Node weights (``TemplateMatch.weights``).
    wavelength : `~astropy.units.Quantity` or array_like
        Observed wavelengths (Å, air), e.g. the star's own pixels.
    rv : `~astropy.units.Quantity`
        Radial velocity (km/s): the model at rest wavelength λ/(1 + v/c) is
        placed at λ.
    continuum : bool
        Return the model continuum (``weights @ grid.continuum``) instead of
        the flux.

    Returns
    -------
    `~astropy.units.Quantity`
        Cubic-spline interpolation of ``weights @ grid.flux`` (linear for the
        smooth continuum) in erg s⁻¹ cm⁻² Å⁻¹ (the prepared templates' surface
        flux); NaN outside the grid coverage.
    """
    if isinstance(weights, TemplateMatch):
        weights = weights.weights
    weights = np.asarray(weights, dtype=float)
    source = grid.continuum if continuum else grid.flux
    source = np.asarray(source, dtype=float)
    if weights.shape != (source.shape[0],):
        raise InputDataError(
            f"weights has shape {weights.shape}; expected ({source.shape[0]},), one per template."
        )
    nz = np.flatnonzero(weights)
    model = weights[nz] @ source[nz]
    grid_wave = u.Quantity(grid.wavelength, u.AA).value
    wave = np.asarray(u.Quantity(wavelength, u.AA).value, dtype=float)
    if continuum:  # smooth: linear interpolation is exact enough and much cheaper
        rest = wave / doppler_factor(rv)
        inside = (rest >= grid_wave[0]) & (rest <= grid_wave[-1])
        out = np.full(rest.shape, np.nan)
        out[inside] = np.interp(rest[inside], grid_wave, model)
        return out * FLAM
    return _interpolated_models(grid_wave, model[None], [wave], [doppler_factor(rv)])[0] * FLAM


def model_fluxes(grid, matches, wavelengths):
    """`model_spectrum` of many stars at once (plain arrays, erg s⁻¹ cm⁻² Å⁻¹).

    One interpolating cubic spline is built for all the stars' models (one
    collocation matrix and one banded solve with a column per star) and
    evaluated at each star's own rest wavelengths.

    Parameters
    ----------
    grid : `~kspec_fluxcal.templates.PreparedGrid`
        The grid the matches refer to.
    matches : list of `TemplateMatch`
        One per star (``weights``, ``rv``).
    wavelengths : list of ndarray
        Each star's observed wavelengths (Å, air).

    Returns
    -------
    list of ndarray
        The models on ``wavelengths``; NaN outside the grid coverage.
    """
    if not matches:
        return []
    flux = np.asarray(grid.flux, dtype=float)
    nonzero = [np.flatnonzero(m.weights) for m in matches]
    models = np.array([np.asarray(m.weights)[nz] @ flux[nz] for m, nz in zip(matches, nonzero)])
    factors = [doppler_factor(m.rv) for m in matches]
    return _interpolated_models(u.Quantity(grid.wavelength, u.AA).value, models, wavelengths, factors)


def _interpolated_models(grid_wave, models, wavelengths, factors):
    """Rows of ``models`` (on ``grid_wave``) interpolated by cubic splines at ``wavelengths[i] / factors[i]``."""
    spline = make_interp_spline(grid_wave, models.T, k=3)
    out = []
    for i, (wave, factor) in enumerate(zip(wavelengths, factors)):
        rest = np.asarray(wave, dtype=float) / factor
        inside = (rest >= grid_wave[0]) & (rest <= grid_wave[-1])
        row = np.full(rest.shape, np.nan)
        row[inside] = BSpline(spline.t, spline.c[:, i], 3)(rest[inside])
        out.append(row)
    return out
