"""Continuum fitting, continuum normalisation and a linear pseudo-continuum smoother.

Two kinds of continuum live here:

* `fit_stellar_continuum` — the *clipped* continuum of one spectrum (B-spline,
  Legendre polynomial or running median) with asymmetric iterative sigma
  clipping, so absorption lines do not drag it down, and with the variance of
  the fitted continuum propagated.
* `smoothing_operator` — an *unclipped*, linear weighted least-squares
  B-spline smoother ``S`` applied to many spectra at once (templates and
  stars alike). Because it is linear and the same for every spectrum,
  ``y / S(y)`` cancels any smooth multiplicative factor (throughput,
  reddening) shared by star and template, which is what template matching
  needs.

Wavelengths are in Å (air); masks are True where a pixel is bad.
"""

import logging

import numpy as np
from astropy import units as u
from astropy.stats import mad_std, sigma_clip
from numpy.polynomial import legendre
from scipy import ndimage, sparse

from .containers import is_spectrum, make_spectrum, spectrum_variance, validate_spectrum
from .exceptions import InputDataError
from .masks import spectrum_arrays
from .quantities import value_in
from .splines import bspline_basis, interior_knots, normal_covariance
from .stats import MEDIAN_VARIANCE_FACTOR

__all__ = [
    "fit_stellar_continuum",
    "normalize_continuum",
    "normalize_with_model_continuum",
    "smoothing_operator",
    "SmoothingOperator",
]

log = logging.getLogger(__name__)

_METHODS = ("bspline", "polynomial", "running_median")


def _zero(data, axis=None):
    """Centre of the clipping: the residuals are measured from the continuum itself."""
    return 0.0


def _angstrom(value, name):
    """A positive scalar length in Å (plain numbers are taken as Å)."""
    value = float(value_in(value, u.AA, name))
    if not np.isfinite(value) or value <= 0:
        raise InputDataError(f"{name} must be a positive length in Å; got {value}.")
    return value


def _legendre_basis(x, degree):
    """Sparse-wrapped Legendre design matrix on the axis mapped to [-1, 1]."""
    z = 2.0 * (x - x[0]) / (x[-1] - x[0]) - 1.0
    return sparse.csr_array(legendre.legvander(z, degree))


def _weighted_lsq(basis, w):
    """(BᵀWB)⁻¹ and WB of a weighted linear fit; a singular system is an `InputDataError` that says what to do."""
    try:
        return normal_covariance(basis, w)
    except np.linalg.LinAlgError as exc:
        raise InputDataError(
            f"the continuum fit is singular: {basis.shape[1]} coefficients but only "
            f"{np.count_nonzero(w)} usable pixels in places; increase knot_spacing (or lower "
            "degree) or unmask more pixels."
        ) from exc


def _linear_fit(basis, y, w, scale_by_residuals):
    """Continuum and its variance from a weighted linear fit on ``basis``."""
    cov, bw = _weighted_lsq(basis, w)
    coef = cov @ (bw.T @ y)
    cont = basis @ coef
    if scale_by_residuals:
        used = w > 0
        dof = max(np.count_nonzero(used) - basis.shape[1], 1)
        cov = cov * np.sum(w[used] * (y[used] - cont[used]) ** 2) / dof
    cvar = np.asarray(basis.multiply(basis @ cov).sum(axis=1)).ravel()
    return cont, cvar


def _running_median(x, y, var, used, window):
    """Running median over the used pixels and its approximate variance.

    The window is ``window`` Å converted to a number of used pixels with the
    median pixel width. The variance of a median of N pixels of variance σ²
    is taken as (π/2)·⟨σ²⟩/N (its large-N Gaussian value); without pixel
    variances σ² is the robust scatter of the residuals.
    """
    xs, ys = x[used], y[used]
    dx = np.median(np.diff(xs))
    size = int(np.clip(round(window / dx), 3, max(3, xs.size)))
    size += 1 - size % 2
    med = ndimage.median_filter(ys, size=size, mode="nearest")
    if var is None:
        vs = np.full(xs.size, mad_std(ys - med) ** 2)
    else:
        vs = var[used]
    mean_var = ndimage.uniform_filter1d(vs, size=size, mode="nearest")
    return np.interp(x, xs, med), np.interp(x, xs, MEDIAN_VARIANCE_FACTOR * mean_var / size)


def fit_stellar_continuum(
    spectrum,
    method="bspline",
    knot_spacing=150 * u.AA,
    degree=None,
    window=100 * u.AA,
    mask_regions=None,
    lower_sigma=1.5,
    upper_sigma=3.0,
    max_iter=10,
):
    """Fit the continuum of a spectrum with asymmetric iterative sigma clipping.

    Parameters
    ----------
    spectrum : `~specutils.Spectrum`
        Spectrum in any flux unit, with optional variance and mask (True = bad).
    method : {'bspline', 'polynomial', 'running_median'}
        Weighted least-squares cubic B-spline with interior knots about every
        ``knot_spacing`` (spans without data are merged), a Legendre series of
        degree ``degree``, or a running median over ``window``.
    knot_spacing : `~astropy.units.Quantity`
        Knot spacing of the B-spline (Å).
    degree : int, optional
        B-spline degree (default 3) or Legendre degree (default 8).
    window : `~astropy.units.Quantity`
        Width of the running median (Å).
    mask_regions : `~astropy.units.Quantity`, shape (n, 2), optional
        Wavelength intervals (Å) left out of the fit (their continuum is
        interpolated, like that of masked pixels).
    lower_sigma, upper_sigma : float
        Clipping thresholds below and above the continuum, in units of the
        robust (MAD) scatter of the noise-normalised residuals. Clipping low
        points harder keeps absorption lines out of the fit. At pure noise the
        default 1.5/3.0 pair biases the continuum up by about 0.13σ per pixel.
    max_iter : int
        Maximum number of clipping iterations (0 = a single unclipped fit).
        Each iteration starts again from all good pixels; it stops early when
        the set of kept pixels no longer changes.

    Returns
    -------
    `~specutils.Spectrum`
        The continuum on the same spectral axis and in the same flux unit, with
        a `~astropy.nddata.VarianceUncertainty` holding the variance of the
        fitted continuum: the diagonal of B·(BᵀWB)⁻¹·Bᵀ for the linear methods
        (W = inverse pixel variances; without a variance, W = 1 and the
        covariance is scaled by the residual variance of the kept pixels), and
        (π/2)·⟨σ²⟩/N for the running median. ``meta`` holds ``method``,
        ``fit_mask`` (True where a pixel entered the final fit), ``n_iter`` and,
        for the B-spline, ``knots`` (Å).

    Raises
    ------
    InputDataError
        Unknown method, non-positive spacing, or too few good pixels.
    """
    if method not in _METHODS:
        raise InputDataError(f"method must be one of {_METHODS}; got {method!r}.")
    spec = validate_spectrum(spectrum)
    x, y, var, good = spectrum_arrays(spec, mask_regions)
    if degree is None:
        degree = 3 if method == "bspline" else 8
    degree = int(degree)
    min_good = degree + 2 if method != "running_median" else 3
    if np.count_nonzero(good) < min_good:
        raise InputDataError(
            f"only {np.count_nonzero(good)} good pixels for the continuum fit; at least "
            f"{min_good} are needed (check the mask and mask_regions)."
        )
    w_all = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0) if var is not None else good * 1.0
    sigma = np.sqrt(var) if var is not None else np.ones_like(y)
    extra = {}
    if method == "bspline":
        spacing = _angstrom(knot_spacing, "knot_spacing")
    elif method == "polynomial":
        basis = _legendre_basis(x, degree)
    else:
        width = _angstrom(window, "window")

    used = good.copy()
    n_iter = 0
    while True:
        if method == "bspline":
            interior = interior_knots([x[used]], x[0], x[-1], spacing, degree + 1)
            if "knots" not in extra or not np.array_equal(interior, extra["knots"].value):
                basis = bspline_basis(x, interior, degree)
                extra["knots"] = interior * u.AA
        if method == "running_median":
            cont, cvar = _running_median(x, y, var, used, width)
        else:
            cont, cvar = _linear_fit(basis, y, np.where(used, w_all, 0.0), var is None)
        if n_iter >= max_iter:
            break
        resid = (y - cont) / sigma
        _, low, high = sigma_clip(resid[used], sigma_lower=lower_sigma, sigma_upper=upper_sigma, maxiters=1,
                                  cenfunc=_zero, stdfunc="mad_std", return_bounds=True)
        if not high > 0:
            break
        new_used = good & (resid > low) & (resid < high)
        if np.array_equal(new_used, used) or np.count_nonzero(new_used) < min_good:
            break
        used = new_used
        n_iter += 1
    log.debug("continuum (%s): %d iterations, %d of %d pixels kept", method, n_iter,
              np.count_nonzero(used), y.size)
    meta = {"method": method, "fit_mask": used, "n_iter": n_iter, **extra}
    return make_spectrum(
        x * u.AA, cont * spec.flux.unit, cvar * spec.flux.unit**2, mask=~np.isfinite(cont), meta=meta
    )


def normalize_continuum(spectrum, **kwargs):
    """Divide a spectrum by its fitted continuum.

    Parameters
    ----------
    spectrum : `~specutils.Spectrum`
        The spectrum (any flux unit).
    **kwargs
        Passed to `fit_stellar_continuum`.

    Returns
    -------
    normalized : `~specutils.Spectrum`
        Dimensionless ``flux / continuum`` with variance
        σ²/c² + f²·σ_c²/c⁴ (first order, treating the continuum error as
        independent of the pixel noise, which slightly overestimates it);
        pixels where the continuum is not positive are masked.
    continuum : `~specutils.Spectrum`
        The result of `fit_stellar_continuum`.
    """
    spec = validate_spectrum(spectrum)
    continuum = fit_stellar_continuum(spec, **kwargs)
    flux = spec.flux.value
    cont = continuum.flux.value
    cvar = spectrum_variance(continuum).value
    var_q = spectrum_variance(spec)
    var = np.zeros_like(flux) if var_q is None else var_q.value
    bad = np.asarray(spec.mask, dtype=bool) | ~(np.isfinite(cont) & (cont > 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(bad, np.nan, flux / cont)
        norm_var = np.where(bad, np.nan, var / cont**2 + flux**2 * cvar / cont**4)
    meta = {**spec.meta, "continuum_method": continuum.meta["method"]}
    return make_spectrum(spec.spectral_axis, norm * u.one, norm_var * u.one, mask=bad, meta=meta), continuum


def normalize_with_model_continuum(spectrum_or_template_flux, model_continuum):
    """Divide a spectrum (or template fluxes) by a given model continuum.

    Parameters
    ----------
    spectrum_or_template_flux : `~specutils.Spectrum`, `~astropy.units.Quantity` or array_like
        A spectrum, or fluxes of shape (..., n_pix) such as ``grid.flux``.
    model_continuum : `~specutils.Spectrum`, `~astropy.units.Quantity` or array_like
        The continuum on the same pixels (broadcastable to the flux), taken
        as noise-free.

    Returns
    -------
    `~specutils.Spectrum` or `~astropy.units.Quantity` or ndarray
        For a spectrum: a spectrum of flux/continuum with variance σ²/c² and
        pixels where the continuum is not positive masked. For arrays: the
        ratio (NaN where the continuum is not positive), a Quantity when
        either input is one (dimensionless when the units agree), else a
        plain array.
    """
    cont = model_continuum
    if is_spectrum(cont):
        cont = cont.flux
    if is_spectrum(spectrum_or_template_flux):
        spec = validate_spectrum(spectrum_or_template_flux)
        cont = u.Quantity(cont, spec.flux.unit) if not isinstance(cont, u.Quantity) else cont
        if cont.shape != spec.flux.shape:
            raise InputDataError(
                f"model_continuum has shape {cont.shape} but the spectrum has {spec.flux.shape} pixels."
            )
        ratio_unit = (spec.flux.unit / cont.unit).decompose()
        scale = ratio_unit.scale if ratio_unit.physical_type == "dimensionless" else 1.0
        out_unit = u.one if ratio_unit.physical_type == "dimensionless" else spec.flux.unit / cont.unit
        c = cont.value
        bad = np.asarray(spec.mask, dtype=bool) | ~(np.isfinite(c) & (c > 0))
        var_q = spectrum_variance(spec)
        with np.errstate(divide="ignore", invalid="ignore"):
            norm = np.where(bad, np.nan, scale * spec.flux.value / c)
            var = None if var_q is None else np.where(bad, np.nan, scale**2 * var_q.value / c**2)
        return make_spectrum(
            spec.spectral_axis, norm * out_unit, None if var is None else var * out_unit**2,
            mask=bad, meta=spec.meta,
        )
    flux = spectrum_or_template_flux
    c_val = cont.value if isinstance(cont, u.Quantity) else np.asarray(cont, dtype=float)
    f_val = flux.value if isinstance(flux, u.Quantity) else np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isfinite(c_val) & (c_val > 0), f_val / c_val, np.nan)
    if not isinstance(flux, u.Quantity) and not isinstance(cont, u.Quantity):
        return ratio
    unit = (getattr(flux, "unit", u.one) / getattr(cont, "unit", u.one))
    if unit.physical_type == "dimensionless":
        return (ratio * unit).to(u.one)
    return ratio * unit


class SmoothingOperator:
    """A linear weighted least-squares B-spline smoother ``S = B·P``.

    ``P = (BᵀWB)⁻¹BᵀW`` maps a spectrum to B-spline coefficients and the
    sparse basis ``B`` maps them back to pixels, so ``S @ y = B @ (P @ y)``
    costs O(n_pix·n_coef) and the dense (n_pix, n_pix) matrix is never formed.

    Attributes
    ----------
    wavelength : ndarray
        Pixel wavelengths (Å).
    basis : `scipy.sparse.csr_array`, shape (n_pix, n_coef)
        B-spline design matrix B.
    projector : ndarray, shape (n_coef, n_pix)
        P = (BᵀWB)⁻¹BᵀW.
    knots : ndarray
        Interior knots (Å).
    """

    def __init__(self, wavelength, basis, projector, knots):
        self.wavelength = wavelength
        self.basis = basis
        self.projector = projector
        self.knots = knots

    @property
    def n_coef(self):
        """Number of B-spline coefficients (the smoother's degrees of freedom)."""
        return self.projector.shape[0]

    def __call__(self, y):
        """Smooth spectra stored along the last axis: ``y`` is (n_pix,) or (n_spec, n_pix)."""
        y = np.asarray(y, dtype=float)
        coef = y @ self.projector.T
        if y.ndim == 1:
            return self.basis @ coef
        return (self.basis @ coef.T).T

    def __matmul__(self, y):
        """``S @ y`` for a column vector (n_pix,) or a matrix (n_pix, m)."""
        return self(np.asarray(y, dtype=float).T).T


def smoothing_operator(wavelength, knot_spacing=150 * u.AA, weights=None, degree=3):
    """Build an unclipped weighted least-squares B-spline smoother.

    Parameters
    ----------
    wavelength : `~astropy.units.Quantity` or array_like
        Increasing pixel wavelengths (Å).
    knot_spacing : `~astropy.units.Quantity`
        Interior knots about every ``knot_spacing`` (Å); spans with too few
        weighted pixels are merged.
    weights : array_like, optional
        Non-negative pixel weights W (default 1); zero excludes a pixel from
        the fit (it still gets a smoothed value).
    degree : int
        B-spline degree.

    Returns
    -------
    `SmoothingOperator`
        Callable on arrays (n_pix,) or (n_spec, n_pix); ``op @ y`` works on
        columns.

    Examples
    --------
    >>> import numpy as np
    >>> wave = np.linspace(4000.0, 7000.0, 3001)
    >>> op = smoothing_operator(wave, knot_spacing=300 * u.AA)
    >>> bool(np.allclose(op(np.vstack([wave, wave**2])), np.vstack([wave, wave**2])))
    True
    """
    x = wavelength.to_value(u.AA) if isinstance(wavelength, u.Quantity) else np.asarray(wavelength, float)
    if x.ndim != 1 or x.size < degree + 2 or np.any(np.diff(x) <= 0):
        raise InputDataError(
            f"wavelength must be a strictly increasing 1-D array of at least {degree + 2} values."
        )
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != x.shape or np.any(~np.isfinite(w)) or np.any(w < 0):
        raise InputDataError("weights must be finite, non-negative and have one value per pixel.")
    interior = interior_knots([x[w > 0]], x[0], x[-1], _angstrom(knot_spacing, "knot_spacing"), degree + 1)
    basis = bspline_basis(x, interior, degree)
    cov, bw = _weighted_lsq(basis, w)
    projector = np.asarray((bw @ cov).T)
    return SmoothingOperator(x, basis, projector, interior)
