"""Weighted least-squares B-splines: one home for the knots, the basis and the normal equations.

Used by the continuum fits (`kspec_fluxcal.continuum`), the smoother of the
template matching and the smooth calibration vectors
(`kspec_fluxcal.calibration`). Wavelengths in Å.
"""

import numpy as np
from scipy import linalg, sparse
from scipy.interpolate import BSpline


def interior_knots(x_used, lo, hi, spacing, min_points):
    """Interior knots about every ``spacing`` between ``lo`` and ``hi``, each span holding data of every row.

    Candidate knots divide [lo, hi] into round((hi − lo) / spacing) equal
    spans; a knot is kept only when every row has at least ``min_points``
    samples since the previous kept knot (and as many after the last one), so
    every B-spline has data under it (Schoenberg–Whitney) and gaps (telluric
    bands, masks) are bridged smoothly.

    Parameters
    ----------
    x_used : sequence of ndarray
        The increasing abscissae used, one array per row (star).
    lo, hi : float
        Ends of the spline's domain.
    spacing : float
        Requested knot spacing.
    min_points : int
        Fewest samples of every row between consecutive knots.

    Examples
    --------
    >>> x = np.arange(0.0, 100.0)
    >>> interior_knots([x], 0.0, 99.0, 25.0, 4).round(2).tolist()
    [24.75, 49.5, 74.25]
    >>> interior_knots([x[(x < 20) | (x > 80)]], 0.0, 99.0, 25.0, 4).round(2).tolist()  # a gap is bridged
    [24.75]
    """
    n_int = max(int(round((hi - lo) / spacing)) - 1, 0)
    interior = np.linspace(lo, hi, n_int + 2)[1:-1]
    if not interior.size:
        return interior
    counts = np.min([np.searchsorted(x, interior) for x in x_used], axis=0)
    keep, prev = [], 0
    for k, count in enumerate(counts):
        if count - prev >= min_points:
            keep.append(k)
            prev = count
    interior = interior[keep]
    while interior.size and min(np.count_nonzero(x > interior[-1]) for x in x_used) < min_points:
        interior = interior[:-1]
    return interior


def bspline_basis(x, interior, degree, lo=None, hi=None):
    """Sparse (n_x, n_coef) design matrix of B-splines clamped at ``lo`` and ``hi`` (default: the ends of ``x``).

    ``x`` outside [lo, hi] is evaluated at the nearest end.
    """
    lo = x[0] if lo is None else lo
    hi = x[-1] if hi is None else hi
    knots = np.concatenate([np.full(degree + 1, lo), interior, np.full(degree + 1, hi)])
    return sparse.csr_array(BSpline.design_matrix(np.clip(x, lo, hi), knots, degree))


def normal_covariance(basis, w):
    """(BᵀWB)⁻¹ of a weighted linear least-squares fit, by Cholesky factorisation.

    Returns ``(cov, bw)`` with ``bw = WB`` (sparse), so that the coefficients
    of data ``y`` are ``cov @ (bw.T @ y)``. Raises `numpy.linalg.LinAlgError`
    when BᵀWB is not positive definite (too few weighted points under some
    basis function).
    """
    bw = sparse.diags_array(w) @ basis
    normal = (basis.T @ bw).toarray()
    factor = linalg.cho_factor(normal)
    return linalg.cho_solve(factor, np.eye(normal.shape[0])), bw


def bspline_normal_matrices(x, interior, degree, lo, hi, ridge=1e-12):
    """The basis at ``x`` and a function giving every row's normal matrix BᵀWB for weights ``w`` (n_row, n).

    Each sample contributes the ``(degree + 1)²`` products of its non-zero
    basis values; a sparse (n, n_coef²) map of them turns the weights of all
    rows into their normal matrices with one sparse product. A ridge of
    ``ridge`` × the mean diagonal keeps unconstrained coefficients finite.
    """
    basis = bspline_basis(x, interior, degree, lo, hi)
    n_coef = basis.shape[1]
    to_normal = local_products(basis, degree)

    def normal_of(w):
        normal = (to_normal.T @ w.T).T.reshape(w.shape[0], n_coef, n_coef)
        scale = np.trace(normal, axis1=1, axis2=2)[:, None, None] / n_coef
        return normal + ridge * scale * np.eye(n_coef)

    return basis, normal_of


def local_products(basis, degree):
    """Sparse (n, n_coef²) map of each sample's products B_a B_b of its ``degree + 1`` non-zero basis functions.

    ``local_products(basis, degree) @ C.ravel()`` is bᵀ C b at every sample
    (the variance of the spline for a coefficient covariance C), and its
    transpose times the weights is the normal matrix BᵀWB (flattened).
    """
    n, n_coef = basis.shape
    width = degree + 1
    cols = basis.indices.reshape(n, width)
    vals = basis.data.reshape(n, width)
    pair = (vals[:, :, None] * vals[:, None, :]).ravel()
    flat = (cols[:, :, None] * n_coef + cols[:, None, :]).ravel()
    return sparse.csr_array((pair, flat, np.arange(0, pair.size + 1, width * width)), shape=(n, n_coef * n_coef))


def banded_least_squares(x, interior, degree, lo, hi, ridge=1e-12):
    """The basis at ``x`` and a solver of every row's weighted least squares by banded Cholesky factorisation.

    A B-spline basis has ``degree + 1`` consecutive non-zeros a row, so each
    normal matrix BᵀWB is banded (half-bandwidth ``degree``). The bands of all
    rows are assembled with one sparse product and each row's system is
    solved by banded Cholesky (LAPACK ``dpbsv``, as in
    `scipy.linalg.solveh_banded`): O(n_coef) work a row instead of the
    O(n_coef³) of a dense solve. A ridge of ``ridge`` × the mean diagonal keeps
    unconstrained coefficients finite.

    Parameters
    ----------
    x : ndarray, shape (n,)
        Abscissae shared by the rows.
    interior : ndarray
        Interior knots (`interior_knots`).
    degree : int
        Spline degree.
    lo, hi : float
        Ends of the domain (the spline is clamped there).
    ridge : float
        Relative ridge added to the diagonal.

    Returns
    -------
    basis : `scipy.sparse.csr_array`, shape (n, n_coef)
    solve : callable
        ``solve(y, w)`` with ``y, w`` of shape (n_row, n) (values and weights,
        0 = not used) returns the coefficients, shape (n_row, n_coef).

    Examples
    --------
    >>> x = np.linspace(0.0, 10.0, 200)
    >>> basis, solve = banded_least_squares(x, np.array([2.5, 5.0, 7.5]), 3, 0.0, 10.0)
    >>> coef = solve(np.array([x**2]), np.ones((1, x.size)))
    >>> bool(np.allclose(basis @ coef[0], x**2))
    True
    """
    basis = bspline_basis(x, interior, degree, lo, hi)
    n_coef = basis.shape[1]
    width = degree + 1
    cols = basis.indices.reshape(x.size, width)
    vals = basis.data.reshape(x.size, width)
    pairs = [(a, d) for d in range(width) for a in range(width - d)]
    band_index = np.stack([d * n_coef + cols[:, a] for a, d in pairs], axis=1)  # (n, n_pairs): band d, column j
    products = np.stack([vals[:, a] * vals[:, a + d] for a, d in pairs], axis=1)
    # sparse (n, width·n_coef) map from a sample's weight to its contributions to the bands
    to_bands = sparse.csr_array((products.ravel(), band_index.ravel(), np.arange(0, products.size + 1, len(pairs))),
                                shape=(x.size, width * n_coef))

    def solve(y, w):
        n_row = w.shape[0]
        bands = (to_bands.T @ w.T).T.reshape(n_row, width, n_coef)
        upper = np.zeros((n_row, width, n_coef))  # LAPACK upper band form: upper[degree - d, j + d] = A[j, j + d]
        for d in range(width):
            upper[:, degree - d, d:] = bands[:, d, :n_coef - d]
        upper[:, degree] += ridge * np.mean(bands[:, 0], axis=1, keepdims=True)
        rhs = (basis.T @ (w * y).T).T
        coef = np.empty((n_row, n_coef))
        for r in range(n_row):
            _, coef[r], info = linalg.lapack.dpbsv(upper[r], rhs[r])
            if info != 0:
                raise np.linalg.LinAlgError(f"normal matrix of row {r} is not positive definite (LAPACK info {info}).")
        return coef

    return basis, solve


def bin_weighted(x, y, w, factor):
    """Inverse-variance weighted means of ``y`` (n_row, n) in bins of ``factor`` samples.

    Returns the bin centres, the means and their weights (summed inverse
    variances, 0 for empty bins); a trailing partial bin is kept.
    """
    if factor == 1:
        return x, y, w
    n = x.size
    edges = np.arange(0, n, factor)
    sum_w = np.add.reduceat(w, edges, axis=1)
    sum_wy = np.add.reduceat(w * y, edges, axis=1)
    centres = np.add.reduceat(x, edges) / np.diff(np.append(edges, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(sum_w > 0, sum_wy / sum_w, 0.0)
    return centres, means, sum_w


def fit_bspline_rows(x, y, w, interior, degree, lo, hi, clip_sigma, max_iter):
    """Clipped weighted least-squares B-spline coefficients for every row of ``y``, as one batch.

    Each row's normal matrix is assembled from the band structure of the
    basis (``degree + 1`` non-zeros a row) with one `numpy.bincount`, and the
    systems are solved as one stack (a tiny ridge keeps a coefficient that a
    row's data leave unconstrained finite).

    Parameters
    ----------
    x : ndarray, shape (n,)
        Abscissae shared by the rows.
    y, w : ndarray, shape (n_row, n)
        Values and weights (inverse variances; 0 = not used).
    interior : ndarray
        Interior knots (`interior_knots`); the spline is clamped at ``lo`` and ``hi``.
    degree : int
        Spline degree.
    lo, hi : float
        Ends of the domain.
    clip_sigma : float
        Symmetric iterative clipping (σ, with the weights as inverse variances).
    max_iter : int
        Most clipping iterations.

    Returns
    -------
    cov : ndarray, shape (n_row, n_coef, n_coef)
        Coefficient covariances.
    coef : ndarray, shape (n_row, n_coef)
    chi2_red : ndarray, shape (n_row,)
        Reduced χ² of the kept points.
    """
    basis, normal_of = bspline_normal_matrices(x, interior, degree, lo, hi)
    good = w > 0
    use = good.copy()
    for _ in range(max_iter):
        wu = np.where(use, w, 0.0)
        normal = normal_of(wu)
        rhs = (basis.T @ (wu * y).T).T
        cov = np.linalg.inv(normal)  # LU: ~10x faster than a pseudo-inverse at 100 coefficients
        coef = np.einsum("sij,sj->si", cov, rhs)
        resid = y - (basis @ coef.T).T
        new_use = good & (np.abs(resid) * np.sqrt(w) < clip_sigma)
        if np.array_equal(new_use, use):
            break
        use = new_use
    ndof = np.maximum(np.count_nonzero(use, axis=1) - basis.shape[1], 1)
    chi2_red = np.sum(np.where(use, resid**2 * w, 0.0), axis=1) / ndof
    return cov, coef, chi2_red
