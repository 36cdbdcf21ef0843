"""The instrument's line spread function as one sparse operator.

`lsf_operator` builds one sparse matrix that convolves a native-resolution
spectrum with the instrument's Gaussian line spread function (constant FWHM
or a polynomial FWHM(λ)) and averages it over the target pixels;
`prepare_template` applies it to one template. Wavelengths in Å, in air.
"""

import logging
import math
import warnings

import numpy as np
from astropy import units as u
from scipy import sparse
from scipy.special import ndtr

from ..containers import FLAM, StellarTemplate, as_wavelength
from ..exceptions import InputDataError, KspecFluxcalWarning

__all__ = ["TemplateResolutionWarning", "lsf_operator", "prepare_template"]

log = logging.getLogger(__name__)


_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

_KERNEL_HALF_WIDTH = 6.0  # σ; the Gaussian beyond this is dropped (< 1e-9 of the weight)


class TemplateResolutionWarning(KspecFluxcalWarning):
    """The template is already as broad as the requested LSF at some wavelengths."""


def _bin_edges(wave):
    """Pixel edges: midpoints between samples, half a step beyond the ends."""
    mid = 0.5 * (wave[1:] + wave[:-1])
    return np.concatenate([[2.0 * wave[0] - mid[0]], mid, [2.0 * wave[-1] - mid[-1]]])


def _ramp(x, sigma):
    """σ Ψ(x/σ) with Ψ(t) = t Φ(t) + φ(t): the double integral of a unit Gaussian.

    Tends to max(x, 0) as σ → 0 (used exactly where σ = 0).
    """
    out = np.maximum(x, 0.0)
    pos = sigma > 0
    t = x[pos] / sigma[pos]
    out[pos] = x[pos] * ndtr(t) + sigma[pos] * np.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    return out


def _gauss_box_matrix(edges_in, edges_out, sigma):
    """CSR matrix: piecewise-constant input ⊗ Gaussian(σ_j), averaged over output pixel j.

    W_ji = (1/w_j) ∫_{A_j}^{B_j} dx ∫_{a_i}^{b_i} G_σj(x − y) dy, in closed
    form with `_ramp`; rows are normalised to 1 (which also renormalises a
    kernel truncated at the ends of the input).
    """
    m, n = edges_out.size - 1, edges_in.size - 1
    lo = edges_out[:-1] - _KERNEL_HALF_WIDTH * sigma
    hi = edges_out[1:] + _KERNEL_HALF_WIDTH * sigma
    first = np.clip(np.searchsorted(edges_in, lo, side="right") - 1, 0, n - 1)
    stop = np.clip(np.searchsorted(edges_in, hi, side="left"), first + 1, n)
    count = stop - first
    indptr = np.concatenate([[0], np.cumsum(count)])
    # the ramp differences at the count + 1 input edges of each row, then W = V_k − V_{k+1}
    rows_e = np.repeat(np.arange(m), count + 1)
    edge = np.arange(rows_e.size) - np.repeat(indptr[:-1] + np.arange(m) - first, count + 1)
    x, s = edges_in[edge], sigma[rows_e]
    v = _ramp(edges_out[rows_e + 1] - x, s) - _ramp(edges_out[rows_e] - x, s)
    rows = np.repeat(np.arange(m), count)
    k = np.arange(indptr[-1]) + rows
    w = np.maximum(v[k] - v[k + 1], 0.0)
    cols = edge[k]
    w /= np.add.reduceat(w, indptr[:-1])[rows]
    return sparse.csr_matrix((w, cols, indptr), shape=(m, n))


def _linear_interp_matrix(x_in, x_out):
    """CSR matrix of linear interpolation from samples at ``x_in`` to ``x_out`` (ends held)."""
    n = x_in.size
    j = np.clip(np.searchsorted(x_in, x_out, side="right") - 1, 0, n - 2)
    t = np.clip((x_out - x_in[j]) / (x_in[j + 1] - x_in[j]), 0.0, 1.0)
    rows = np.repeat(np.arange(x_out.size), 2)
    cols = np.column_stack([j, j + 1]).ravel()
    vals = np.column_stack([1.0 - t, t]).ravel()
    return sparse.csr_matrix((vals, (rows, cols)), shape=(x_out.size, n))


def _fwhm_at(target, fwhm, fwhm_poly_coeffs):
    """Requested FWHM (Å) at each target wavelength."""
    if fwhm_poly_coeffs is not None:
        coeffs = np.asarray(fwhm_poly_coeffs, dtype=np.float64).ravel()
        values = np.polynomial.polynomial.polyval(target, coeffs)
        what = f"the FWHM polynomial {coeffs.tolist()}"
    elif fwhm is not None:
        values = np.full(target.shape, u.Quantity(fwhm, u.AA).to_value(u.AA))
        what = f"fwhm = {values[0]}"
    else:
        raise InputDataError("give the instrument FWHM: fwhm (Å) or fwhm_poly_coeffs (Å per λ^k).")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputDataError(
            f"{what} gives a non-positive or non-finite FWHM between {target[0]:.1f} and {target[-1]:.1f} Å; "
            "the instrument FWHM must be positive over the whole target grid."
        )
    return values


def _warn_unbroadened(mask, target, fwhm_req, native_resolution, dnat, width):
    """One warning for all target pixels that get no extra broadening."""
    if not np.any(mask):
        return
    sel = np.flatnonzero(mask)
    native = f"λ/R = {target[sel[0]] / native_resolution:.2f} Å, " if native_resolution else ""
    warnings.warn(
        f"the template is already as broad as the requested LSF at {sel.size} of {target.size} target "
        f"pixels ({target[sel[0]]:.0f}–{target[sel[-1]]:.0f} Å: requested FWHM {fwhm_req[sel[0]]:.2f} Å vs "
        f"native {native}sampling {dnat[sel[0]]:.2f} Å, target pixel {width[sel[0]]:.2f} Å); those pixels "
        "are averaged over the target pixel without further broadening.",
        TemplateResolutionWarning,
        stacklevel=3,
    )


def lsf_operator(native_wavelength, target_wavelength, fwhm, fwhm_poly_coeffs=None, native_resolution=None):
    """Sparse matrix M such that ``M @ flux_native`` is the spectrum as the instrument records it.

    ``M @ f`` convolves the native spectrum with a Gaussian line spread
    function and averages it over each target pixel (flux conserving). The
    requested FWHM is that of an unresolved line *as measured on the target
    pixels* (a Gaussian fit to an arc line), so the Gaussian's variance is the
    requested one minus, in quadrature, everything else that widens a line:

        σ_G² = σ_req² − σ_native² − Δ_native²/12 − w_target²/12,

    with σ = FWHM / 2.3548, σ_native from FWHM_native = λ/R, Δ_native the
    native pixel (piecewise-constant representation) and w_target the target
    pixel. σ_G is evaluated at each target pixel's centre, so FWHM(λ) may vary
    along the grid. Each matrix element is the Gaussian ⊗ target boxcar
    integrated exactly over a native pixel (erf/Gaussian antiderivatives), so
    the result is exact for a piecewise-constant native spectrum. When native
    pixels are coarse compared with σ_G, the native spectrum is first
    interpolated linearly onto a fine uniform grid (a quarter of the smallest
    native pixel) and M = K @ L; the linear interpolant's own width
    (Δ_native²/6 + δ²/12) is then subtracted instead of Δ_native²/12. Rows sum
    to 1: a flat spectrum stays flat (kernels cut by the ends of the native
    grid are renormalised).

    Where σ_G² ≤ 0 (the template is already as broad as the request: a
    narrower request than the native resolution, or a coarse template such as
    ck04 at 20 Å) the pixel is only averaged over the target pixel, and one
    `TemplateResolutionWarning` summarises where.

    Parameters
    ----------
    native_wavelength : `~astropy.units.Quantity` or array_like
        Increasing native wavelengths (Å when plain), shape (n_native,).
    target_wavelength : `~astropy.units.Quantity` or array_like
        Increasing target wavelengths (Å), shape (n_target); their pixels must
        lie inside the native pixels.
    fwhm : float or `~astropy.units.Quantity`
        Constant instrument FWHM (Å when plain); ignored (may be None) when
        ``fwhm_poly_coeffs`` is given.
    fwhm_poly_coeffs : sequence of float, optional
        FWHM(λ) = Σ c_k λ^k in Å with λ in Å (the RED header's FWHMPC0,
        FWHMPC1, …).
    native_resolution : float, optional
        Resolving power R of the native spectrum (None: only its sampling
        counts).

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape (n_target, n_native), float64.

    Raises
    ------
    InputDataError
        If the target grid is not inside the native grid or the FWHM is not
        positive.
    """
    native = as_wavelength(native_wavelength, "native_wavelength")
    target = as_wavelength(target_wavelength, "target_wavelength")
    e_nat, e_tgt = _bin_edges(native), _bin_edges(target)
    if e_tgt[0] < e_nat[0] or e_tgt[-1] > e_nat[-1]:
        raise InputDataError(
            f"the target grid ({e_tgt[0]:.2f}–{e_tgt[-1]:.2f} Å with its pixel edges) extends beyond the "
            f"template ({e_nat[0]:.2f}–{e_nat[-1]:.2f} Å); trim the target grid to the template range."
        )
    fwhm_req = _fwhm_at(target, fwhm, fwhm_poly_coeffs)
    width = np.diff(e_tgt)
    dnat = np.interp(target, native, np.diff(e_nat))
    var_nat = (target / native_resolution / _FWHM_PER_SIGMA) ** 2 if native_resolution else 0.0
    var_fixed = (fwhm_req / _FWHM_PER_SIGMA) ** 2 - var_nat - width**2 / 12.0
    var_stair = var_fixed - dnat**2 / 12.0
    coarse = (var_stair > 0) & (dnat**2 > var_stair)
    if not np.any(coarse):
        _warn_unbroadened(var_stair <= 0, target, fwhm_req, native_resolution, dnat, width)
        return _gauss_box_matrix(e_nat, e_tgt, np.sqrt(np.maximum(var_stair, 0.0)))

    reach = _KERNEL_HALF_WIDTH * math.sqrt(var_fixed.max())
    lo, hi = max(native[0], e_tgt[0] - reach), min(native[-1], e_tgt[-1] + reach)
    used = (e_nat[1:] > lo) & (e_nat[:-1] < hi)
    n_fine = int(math.ceil((hi - lo) / (0.25 * np.diff(e_nat)[used].min())))
    fine_edges = np.linspace(min(lo, e_tgt[0]), max(hi, e_tgt[-1]), n_fine + 1)
    fine = 0.5 * (fine_edges[1:] + fine_edges[:-1])
    delta = fine_edges[1] - fine_edges[0]
    var_lin = var_fixed - dnat**2 / 6.0 - delta**2 / 12.0
    _warn_unbroadened(var_lin <= 0, target, fwhm_req, native_resolution, dnat, width)
    kernel = _gauss_box_matrix(fine_edges, e_tgt, np.sqrt(np.maximum(var_lin, 0.0)))
    log.debug("LSF operator: native grid coarse for the kernel, interpolated onto %d fine pixels", n_fine)
    operator = (kernel @ _linear_interp_matrix(native, fine)).tocsr()
    operator.sort_indices()
    return operator


def prepare_template(template, target_wavelength, instrument_fwhm_angstrom, fwhm_poly_coeffs=None):
    """A template as the instrument would record it, on the target grid.

    Flux and continuum both go through the same `lsf_operator` (with the
    template's ``resolution`` as the native resolving power).

    Parameters
    ----------
    template : `~kspec_fluxcal.containers.StellarTemplate`
        Native-resolution template.
    target_wavelength : `~astropy.units.Quantity` or array_like
        Target wavelengths (Å, air).
    instrument_fwhm_angstrom : float or `~astropy.units.Quantity`
        Constant instrument FWHM (Å); may be None with ``fwhm_poly_coeffs``.
    fwhm_poly_coeffs : sequence of float, optional
        FWHM(λ) = Σ c_k λ^k (Å).

    Returns
    -------
    `~specutils.Spectrum`
        On ``target_wavelength`` (Å, air), flux in erg s⁻¹ cm⁻² Å⁻¹;
        ``meta``: ``continuum`` (Quantity, same grid), the parameters
        (``teff``, ``logg``, ``feh``, ``alpha_m``, ``source``) and
        ``template``, the prepared `~kspec_fluxcal.containers.StellarTemplate`
        (``resolution`` None).
    """
    target = as_wavelength(target_wavelength, "target_wavelength")
    operator = lsf_operator(
        template.wavelength, target, instrument_fwhm_angstrom, fwhm_poly_coeffs, template.resolution
    )
    prepared = StellarTemplate(
        wavelength=target * u.AA,
        flux=operator @ template.flux.to_value(FLAM) * FLAM,
        continuum=operator @ template.continuum.to_value(FLAM) * FLAM,
        teff=template.teff,
        logg=template.logg,
        feh=template.feh,
        alpha_m=template.alpha_m,
        carbon_m=template.carbon_m,
        vmicro=template.vmicro,
        atmos_model=template.atmos_model,
        source=template.source,
        resolution=None,
    )
    spectrum = prepared.to_spectrum()
    spectrum.meta["template"] = prepared
    return spectrum
