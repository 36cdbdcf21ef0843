"""Scores of template fits: χ² and Huber, with a free amplitude, for many stars and templates at once."""

import numpy as np
from astropy import units as u

from .exceptions import InputDataError

__all__ = ["score_template_fit"]

_METRICS = ("chi2", "huber")
HUBER_ITER = 3
"""Iteratively-reweighted steps of the Huber metric."""
_HUBER_CHUNK = 128


def chi2_matrix(ws, w, base, norm, norm2, fit_scale=True):
    """χ² of stars (rows of ``ws = w·s``) against templates ``norm`` (K, n).

    With a free amplitude per template, χ²_k = Σws² − (Σ w s N_k)² / Σ w N_k²
    (two matrix products); without, Σ w (s − N_k)².
    """
    cross = ws @ norm.T
    quad = w @ norm2.T
    if fit_scale:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(quad > 0, base[:, None] - cross**2 / quad, np.nan)
    return base[:, None] - 2.0 * cross + quad


def _huber_scores(s, w, norm, delta, fit_scale=True):
    """Huber scores Σ 2ρ(r) of one star against templates ``norm`` (K, n).

    r = √w (s − a N_k); ρ(r) = r²/2 for |r| ≤ δ, δ|r| − δ²/2 beyond, so the
    score equals χ² when no residual exceeds δ. With ``fit_scale`` the
    amplitude a_k starts at its χ² value and takes a few iteratively
    reweighted least-squares steps; templates are processed in blocks.
    """
    sw = np.sqrt(w)
    y = s * sw
    out = np.empty(norm.shape[0])
    for start in range(0, norm.shape[0], _HUBER_CHUNK):
        model = norm[start : start + _HUBER_CHUNK] * sw
        amp = np.ones(model.shape[0])
        if fit_scale:
            with np.errstate(divide="ignore", invalid="ignore"):
                amp = (model @ y) / np.sum(model * model, axis=1)
                for _ in range(HUBER_ITER):
                    absr = np.abs(y - amp[:, None] * model)
                    hw = np.minimum(1.0, delta / np.maximum(absr, 1e-300)) * model
                    amp = (hw @ y) / np.sum(hw * model, axis=1)
        absr = np.abs(y - amp[:, None] * model)
        out[start : start + _HUBER_CHUNK] = np.sum(
            np.where(absr <= delta, absr**2, 2.0 * delta * absr - delta**2), axis=1
        )
    return out


def huber_reweight(s, w, model, delta):
    """IRLS weights and majoriser offset of rows ``s`` (m, n) against one model per row (m, n).

    With r = √w (s − a·model) at the χ² amplitude a, h = min(1, δ/|r|) and
    Σ h r² + Σ (ρ(r) − h r²) equals the Huber score Σ ρ(r) (ρ = r² within δ,
    2δ|r| − δ² beyond); for any other model the same weights and offset give
    an upper bound of its Huber score that is tight near this one.
    """
    amp = np.sum(w * s * model, axis=-1, keepdims=True) / np.sum(w * model * model, axis=-1, keepdims=True)
    absr = np.abs(s - amp * model) * np.sqrt(w)
    h = np.minimum(1.0, delta / np.maximum(absr, 1e-300))
    rho = np.where(absr <= delta, absr**2, 2.0 * delta * absr - delta**2)
    return h, np.sum(rho - h * absr**2, axis=-1)


def template_scores(s, w, norm, metric, huber_delta, fit_scale=True):
    """Scores (K,) of one normalised star against normalised templates."""
    if metric == "huber":
        return _huber_scores(s, w, norm, huber_delta, fit_scale)
    ws = (w * s)[None]
    return chi2_matrix(ws, w[None], np.sum(ws * s, axis=1), norm, norm**2, fit_scale)[0]


def check_metric(metric, huber_delta):
    if metric not in _METRICS:
        raise InputDataError(f"metric must be one of {_METRICS}; got {metric!r}.")
    if not (np.isfinite(huber_delta) and huber_delta > 0):
        raise InputDataError(f"huber_delta must be a positive number of σ; got {huber_delta}.")


def score_template_fit(
    observed, model, variance, mask=None, metric="chi2", huber_delta=3.0, fit_scale=True, n_params=0
):
    """Goodness of fit of continuum-normalised model(s) to a continuum-normalised spectrum.

    Parameters
    ----------
    observed : array_like or `~astropy.units.Quantity`, shape (n_pix,)
        Normalised observed flux (dimensionless).
    model : array_like or `~astropy.units.Quantity`, shape (n_pix,) or (n_templates, n_pix)
        Normalised model flux(es) on the same pixels.
    variance : array_like, shape (n_pix,)
        Variance of ``observed``; pixels with non-finite or non-positive
        variance get zero weight.
    mask : array_like of bool, optional
        True = bad pixel (zero weight).
    metric : {'chi2', 'huber'}
        χ² = Σ r², or the Huber score Σ 2ρ(r) (quadratic within
        ``huber_delta``, linear beyond), with r = (observed − a·model)/σ.
    huber_delta : float
        Huber threshold in units of σ.
    fit_scale : bool
        Fit a free scalar amplitude ``a`` per model (else a = 1).
    n_params : int
        Further fitted parameters to subtract from the degrees of freedom.

    Returns
    -------
    score : float or ndarray
        One value per model (an array when ``model`` is 2-D).
    reduced_score : float or ndarray
        ``score / ndof``.
    ndof : int
        Good pixels minus the fitted parameters (at least 1).
    """
    check_metric(metric, huber_delta)
    obs = np.asarray(u.Quantity(observed, u.one).value, dtype=float)
    mod = np.asarray(u.Quantity(model, u.one).value, dtype=float)
    var = np.asarray(variance, dtype=float)
    squeeze = mod.ndim == 1
    mod = np.atleast_2d(mod)
    if obs.ndim != 1 or var.shape != obs.shape or mod.shape[1] != obs.size or mod.ndim != 2:
        raise InputDataError(
            f"observed {obs.shape}, variance {var.shape} and model {mod.shape} must share the pixel "
            "axis (model may be (n_templates, n_pix))."
        )
    good = np.isfinite(obs) & np.isfinite(var) & (var > 0) & np.all(np.isfinite(mod), axis=0)
    if mask is not None:
        good &= ~np.asarray(mask, dtype=bool)
    w = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
    score = template_scores(np.where(good, obs, 0.0), w, np.where(good, mod, 0.0), metric, huber_delta, fit_scale)
    ndof = max(int(np.count_nonzero(good)) - int(bool(fit_scale)) - int(n_params), 1)
    if squeeze:
        score = float(score[0])
    return score, score / ndof, ndof
