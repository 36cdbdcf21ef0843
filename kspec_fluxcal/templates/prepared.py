"""`PreparedGrid`: a whole template grid at the instrument's resolution, with reddened band fluxes.

`PreparedGrid.build` applies one LSF operator to a whole (selected) grid at
once, adds the synthetic band fluxes of every template reddened over a grid
of E(B−V), caches the result on disk and memoises it per process.
"""

import collections
import logging
import time

import numpy as np
from astropy import units as u
from astropy.table import Table
from scipy import sparse

from ..cache import cache_dir, fingerprint, load_arrays, load_verified_arrays, save_arrays, stamp_verified
from ..containers import FLAM, StellarTemplate, as_wavelength
from ..exceptions import CacheError, InputDataError
from ..extinction import extinction_per_ebv
from ..photometry import REGISTERED_BANDS, band_flux_weights
from ..photometry.filters import band_arrays
from .library import TemplateLibrary
from .lsf import lsf_operator

__all__ = ["DEFAULT_EBV_GRID", "PreparedGrid"]

log = logging.getLogger(__name__)


_CACHE_VERSION = 1
"""Bump when the layout or the maths of a prepared-grid cache entry changes."""

_BAND_SUBBINS = 100  # sub-bins per band for the reddened band fluxes

_BAND_CHUNK = 64  # templates per block when summing band fluxes

DEFAULT_EBV_GRID = np.linspace(0.0, 0.5, 41)
"""Default E(B−V) grid (mag) of `PreparedGrid.build`."""


_LAYOUT_MEMO = collections.OrderedDict()
"""`_band_layout` results of this process, by a fingerprint of the grid and the bands' curves."""

_LAYOUT_MEMO_SIZE = 4


def _band_layout(wave, band_names, cache=True):
    """Sub-bin aggregator of the bands on the native grid (memoised per process, cached on disk).

    Returns (S, lam, covered, key): S is a CSR matrix (n_bands·NSUB, n_wave)
    whose row (b, j) holds the `band_flux_weights` of band b restricted to its
    j-th sub-bin (contiguous runs of equal numbers of pixels); ``lam`` (n_bands,
    NSUB) the weight-averaged wavelength of each sub-bin; ``covered`` which
    bands the grid covers; ``key`` a fingerprint of S. Every calibration asks
    for the same layout (to key its prepared grid): it is kept under a
    fingerprint of ``wave`` and of the bands' transmission curves as
    `~kspec_fluxcal.photometry.band_arrays` gives them now (a band registered
    again with another curve gets a new layout), in this process (handed out
    read-only) and, with ``cache``, in the package cache, so that a new
    process reads it instead of computing it.
    """
    curves = [array for name in band_names for array in band_arrays(name)[:2]]
    memo_key = fingerprint("band-layout", _BAND_SUBBINS, list(map(str, band_names)), wave, *curves)
    if memo_key in _LAYOUT_MEMO:
        _LAYOUT_MEMO.move_to_end(memo_key)
        return _LAYOUT_MEMO[memo_key]
    layout = _load_band_layout(memo_key, wave.size, len(band_names)) if cache else None
    if layout is None:
        layout = _compute_band_layout(wave, band_names)
        if cache:
            agg, lam, covered, key = layout
            try:
                save_arrays(cache_dir("band-layouts", memo_key),
                            {"data": agg.data, "indices": agg.indices, "indptr": agg.indptr, "lam": lam,
                             "covered": covered}, meta={"key": key})
            except OSError as exc:  # a read-only cache: the next process computes it again
                log.debug("cannot cache the band layout: %s", exc)
    for array in (layout[0].data, layout[0].indices, layout[0].indptr, layout[1], layout[2]):
        array.flags.writeable = False
    _LAYOUT_MEMO[memo_key] = layout
    while len(_LAYOUT_MEMO) > _LAYOUT_MEMO_SIZE:
        _LAYOUT_MEMO.popitem(last=False)
    return layout


def _load_band_layout(memo_key, n_wave, n_bands):
    """The cached `_band_layout` under ``memo_key``, or None (absent or damaged: computed again)."""
    folder = cache_dir("band-layouts", memo_key)
    if not (folder / "index.json").exists():
        return None
    try:
        arrays, meta = load_arrays(folder, mmap=False)
        agg = sparse.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]),
                                shape=(n_bands * _BAND_SUBBINS, n_wave))
        if arrays["lam"].shape != (n_bands, _BAND_SUBBINS) or arrays["covered"].shape != (n_bands,):
            raise CacheError(f"band layout {folder} does not match")
    except (CacheError, KeyError, ValueError) as exc:
        log.warning("computing the band layout again: %s", exc)
        return None
    return agg, arrays["lam"], arrays["covered"], meta["key"]


def _compute_band_layout(wave, band_names):
    """`_band_layout`, computed."""
    nb = len(band_names)
    lam = np.zeros((nb, _BAND_SUBBINS))
    covered = np.zeros(nb, dtype=bool)
    rows, cols, vals = [], [], []
    for b, name in enumerate(band_names):
        weights = band_flux_weights(wave, name)
        if weights is None:
            continue
        nz = np.flatnonzero(weights)
        w = weights[nz]
        n_sub = min(_BAND_SUBBINS, nz.size)
        sub = (np.arange(nz.size) * n_sub) // nz.size
        total = np.bincount(sub, w, minlength=_BAND_SUBBINS)
        mean = np.bincount(sub, w * wave[nz], minlength=_BAND_SUBBINS)
        lam[b] = np.where(total > 0, mean / np.where(total > 0, total, 1.0), np.average(wave[nz], weights=w))
        rows.append(b * _BAND_SUBBINS + sub)
        cols.append(nz)
        vals.append(w)
        covered[b] = True
    if rows:
        rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    agg = sparse.csr_matrix((vals, (rows, cols)), shape=(nb * _BAND_SUBBINS, wave.size))
    key = fingerprint(list(band_names), agg.data, agg.indices, agg.indptr, lam)
    return agg, lam, covered, key


def _band_sums(library, band_names, layout, cache=True):
    """G[t, b, j] = Σ_{i ∈ sub-bin j} w_b[i] f_t[i] for every model of the library (cached if asked)."""
    agg, lam, covered, key = layout
    n, nb = len(library), len(band_names)
    folder = cache_dir("templates", library.fingerprint, f"bands-{key}") if cache else None
    if cache:
        try:
            arrays, meta = load_arrays(folder, mmap=False)
            if meta.get("key") != key or arrays["sums"].shape != (n, nb, _BAND_SUBBINS):
                raise CacheError(f"band sums {folder} do not match")
            log.debug("band sums of %s loaded from the cache", library.path)
            return arrays["sums"]
        except CacheError as exc:
            if (folder / "index.json").exists():
                log.warning("rebuilding the band sums of %s: %s", library.path, exc)
    start = time.perf_counter()
    sums = np.zeros((n, nb * _BAND_SUBBINS))
    if agg.nnz:
        _, flux, _, _ = library.load_grid()
        lo, hi = agg.indices.min(), agg.indices.max() + 1
        agg_t = agg[:, lo:hi].tocsr()
        for first in range(0, n, _BAND_CHUNK):
            block = np.asarray(flux[first : first + _BAND_CHUNK, lo:hi], dtype=np.float64)
            sums[first : first + _BAND_CHUNK] = (agg_t @ block.T).T
    sums = sums.reshape(n, nb, _BAND_SUBBINS)
    if cache:
        save_arrays(folder, {"sums": sums}, meta={"key": key, "bands": list(band_names)})
    log.info("band sums of %d models in %d bands computed in %.2f s", n, nb, time.perf_counter() - start)
    return sums


def _reddened_band_fnu(sums, lam, covered, ebv_grid, extinction, r_v):
    """band_fnu[t, b, e] = Σ_j G[t,b,j] 10^(−0.4 E_e k(λ_bj)); NaN for uncovered bands."""
    k = np.zeros_like(lam)
    if np.any(covered):
        k[covered] = extinction_per_ebv(lam[covered].ravel(), law=extinction, r_v=r_v).reshape(-1, lam.shape[1])
    factor = 10.0 ** (-0.4 * k[:, :, None] * ebv_grid[None, None, :])  # (n_bands, NSUB, n_ebv)
    fnu = np.matmul(np.transpose(sums, (1, 0, 2)), factor)  # (n_bands, n_templates, n_ebv)
    fnu = np.ascontiguousarray(np.transpose(fnu, (1, 0, 2)))
    fnu[:, ~covered, :] = np.nan
    return fnu


def _check_ebv_grid(ebv_grid):
    ebv = np.atleast_1d(np.asarray(ebv_grid, dtype=np.float64))
    if ebv.ndim != 1 or ebv.size < 1 or not np.all(np.isfinite(ebv)) or ebv[0] != 0.0 or np.any(np.diff(ebv) <= 0):
        raise InputDataError(
            f"ebv_grid must be a strictly increasing 1-D array of E(B−V) starting at 0; got {ebv_grid!r}."
        )
    return ebv


_PARAM_COLUMNS = ("teff", "logg", "feh", "alpha_m")

_PREPARED_MEMO = collections.OrderedDict()

_PREPARED_MEMO_SIZE = 4


def _remember(key, grid):
    """Keep the last few prepared grids of this process, so a set-up is opened once.

    Their arrays are memory-mapped from the cache, so holding them is cheap,
    and code that caches per grid object (matching) stays warm across exposures.
    """
    _PREPARED_MEMO[key] = grid
    _PREPARED_MEMO.move_to_end(key)
    while len(_PREPARED_MEMO) > _PREPARED_MEMO_SIZE:
        _PREPARED_MEMO.popitem(last=False)
    return grid


class PreparedGrid:
    """A template grid prepared for one instrument set-up and one wavelength grid.

    Parameters
    ----------
    wavelength : `~astropy.units.Quantity` or array_like
        Target grid (n_pix,), Å, air.
    flux, continuum : array_like or `~astropy.units.Quantity`
        (n_templates, n_pix) prepared F_λ and model continuum, erg s⁻¹ cm⁻² Å⁻¹
        (surface); stored as float64.
    params : `~astropy.table.Table` or dict
        One row per template with float columns ``teff``, ``logg``, ``feh``,
        ``alpha_m`` (more columns are kept).
    band_names : sequence of str, optional
        Filter registry names of ``band_fnu``'s second axis.
    band_fnu : array_like, optional
        (n_templates, n_bands, n_ebv) photon-counting mean f_ν (erg s⁻¹ cm⁻²
        Hz⁻¹) of the full-resolution, untrimmed template reddened by
        ``ebv_grid[k]``; NaN where the template does not cover the band.
        Default: all NaN.
    ebv_grid : array_like, optional
        E(B−V) values (mag), strictly increasing from 0; default ``[0]``.
    meta : dict, optional
        Provenance: library fingerprint, LSF, extinction law and R_V, ``key``,
        ``source``.

    Attributes
    ----------
    wavelength : `~astropy.units.Quantity`
    flux, continuum : numpy.ndarray
        float64 (n_templates, n_pix) (memory maps when loaded from the cache).
    params : `~astropy.table.Table`
    band_names : tuple of str
    band_fnu : numpy.ndarray
        float64 (n_templates, n_bands, n_ebv).
    ebv_grid : numpy.ndarray
    meta : dict
    """

    def __init__(self, wavelength, flux, continuum, params, band_names=(), band_fnu=None, ebv_grid=None, meta=None):
        self.wavelength = as_wavelength(wavelength, "PreparedGrid.wavelength") * u.AA
        n_pix = self.wavelength.size
        self.flux = self._array2d(flux, "flux", n_pix)
        self.continuum = self._array2d(continuum, "continuum", n_pix)
        n = self.flux.shape[0]
        if self.continuum.shape != self.flux.shape:
            raise InputDataError(
                f"PreparedGrid.continuum has shape {self.continuum.shape} but flux has {self.flux.shape}."
            )
        params = params if isinstance(params, Table) else Table(params)
        missing = [c for c in _PARAM_COLUMNS if c not in params.colnames]
        if missing:
            raise InputDataError(f"PreparedGrid.params lacks the column(s) {', '.join(missing)}.")
        if len(params) != n:
            raise InputDataError(f"PreparedGrid.params has {len(params)} rows for {n} templates.")
        params = params.copy(copy_data=False)
        for c in _PARAM_COLUMNS:
            params[c] = np.asarray(params[c], dtype=np.float64)
        self.params = params
        self.band_names = tuple(str(b) for b in band_names)
        self.ebv_grid = _check_ebv_grid(0.0 if ebv_grid is None else ebv_grid)
        shape = (n, len(self.band_names), self.ebv_grid.size)
        if band_fnu is None:
            self.band_fnu = np.full(shape, np.nan)
        else:
            value = band_fnu.value if isinstance(band_fnu, u.Quantity) else band_fnu
            self.band_fnu = np.asarray(value, dtype=np.float64)
            if self.band_fnu.shape != shape:
                raise InputDataError(
                    f"PreparedGrid.band_fnu has shape {self.band_fnu.shape}; expected (n_templates, n_bands, "
                    f"n_ebv) = {shape}."
                )
        self.meta = dict(meta or {})

    @staticmethod
    def _array2d(value, name, n_pix):
        if isinstance(value, u.Quantity):
            try:
                value = value.to_value(FLAM)
            except u.UnitConversionError as exc:
                raise InputDataError(
                    f"PreparedGrid.{name} has unit '{value.unit}'; it must be an F_λ ({FLAM})."
                ) from exc
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != n_pix or arr.shape[0] < 1:
            raise InputDataError(
                f"PreparedGrid.{name} must have shape (n_templates ≥ 1, n_pix = {n_pix}); got {arr.shape}."
            )
        return arr

    def __repr__(self):
        w = self.wavelength.value
        return (
            f"<PreparedGrid: {self.n_templates} templates × {w.size} pixels ({w[0]:.0f}–{w[-1]:.0f} Å), "
            f"{len(self.band_names)} bands × {self.ebv_grid.size} E(B−V)>"
        )

    @property
    def n_templates(self):
        """Number of templates."""
        return self.flux.shape[0]

    @property
    def key(self):
        """Content key (the cache key for built grids)."""
        if "key" not in self.meta:
            self.meta["key"] = fingerprint(
                "prepared-grid", self.wavelength.value, self.flux, self.continuum, self.band_fnu, self.ebv_grid,
                list(self.band_names), [np.asarray(self.params[c]) for c in _PARAM_COLUMNS],
            )
        return self.meta["key"]

    def template(self, i):
        """Template ``i`` as a `~kspec_fluxcal.containers.StellarTemplate` on the target grid."""
        row = self.params[int(i)]
        extra = {c: row[c] for c in ("carbon_m", "vmicro") if c in self.params.colnames}
        return StellarTemplate(
            wavelength=self.wavelength,
            flux=self.flux[int(i)] * FLAM,
            continuum=self.continuum[int(i)] * FLAM,
            teff=row["teff"],
            logg=row["logg"],
            feh=row["feh"],
            alpha_m=row["alpha_m"],
            source=self.meta.get("source"),
            **extra,
        )

    def subset(self, indices):
        """A `PreparedGrid` of the templates ``indices`` (ints, a slice or a boolean mask)."""
        idx = np.arange(self.n_templates)[indices]
        idx = np.atleast_1d(idx)
        meta = dict(self.meta)
        meta["key"] = fingerprint(self.key, idx)
        return PreparedGrid(
            self.wavelength, self.flux[idx], self.continuum[idx], self.params[idx], self.band_names,
            self.band_fnu[idx], self.ebv_grid, meta,
        )

    @classmethod
    def build(
        cls,
        library,
        target_wavelength,
        fwhm,
        fwhm_poly_coeffs=None,
        entries=None,
        bands=REGISTERED_BANDS,
        ebv_grid=DEFAULT_EBV_GRID,
        extinction="F99",
        r_v=3.1,
        cache=True,
    ):
        """Prepare a whole library (or a selection) at once, cached on disk.

        One `lsf_operator` (native → target) is applied to every template,
        ``M @ flux.T`` on the part of the native grid the operator touches.
        Band fluxes are computed on the full-resolution, untrimmed templates:
        each band's `~kspec_fluxcal.photometry.band_flux_weights` are split
        into ~100 sub-bins of equal pixel count, the sub-bin sums G[t, b, j]
        are computed for the whole library once (cached per library and band
        set, independent of the law), and band_fnu[t, b, e] = Σ_j G[t, b, j]
        10^(−0.4 E_e R_V A(λ_j)/A_V) — within ≪ 1 mmag of the exact reddened
        integral. The extinction curve is held at its value at the nearest
        valid wavelength outside the law's range (see
        `kspec_fluxcal.extinction.extinction_per_ebv`).

        The result is cached under a key of (library fingerprint, selection,
        LSF, target grid, bands, E(B−V) grid, law, R_V) and memory-mapped
        when loaded again.

        Parameters
        ----------
        library : `TemplateLibrary` or str or os.PathLike
            The library (a folder is opened as one).
        target_wavelength : `~astropy.units.Quantity` or array_like
            Target grid (Å, air), inside the library's range.
        fwhm : float or `~astropy.units.Quantity`
            Instrument FWHM (Å); may be None with ``fwhm_poly_coeffs``.
        fwhm_poly_coeffs : sequence of float, optional
            FWHM(λ) = Σ c_k λ^k (Å).
        entries : `~astropy.table.Table`, optional
            Rows of ``library.entries`` to prepare; default all.
        bands : sequence of str, optional
            Filter registry names.
        ebv_grid : array_like, optional
            E(B−V) values (mag), strictly increasing from 0.
        extinction : str, optional
            A `dust_extinction` parameter-average law (``'F99'``, ``'G23'`` …).
        r_v : float, optional
            R_V of the law.
        cache : bool, optional
            Read and write the on-disk caches (prepared grid and band sums;
            the library's binary grid is always cached).

        Returns
        -------
        PreparedGrid
        """
        lib = library if isinstance(library, TemplateLibrary) else TemplateLibrary(library)
        entries = lib.entries if entries is None else entries
        idx = np.asarray(entries["index"], dtype=np.intp)
        if idx.size == 0:
            raise InputDataError("no templates selected: entries is empty.")
        if idx.min() < 0 or idx.max() >= len(lib):
            raise InputDataError(
                f"entries index {idx.max()} is outside the library of {len(lib)} models; select entries "
                "from this library's entries or query()."
            )
        target = as_wavelength(target_wavelength, "target_wavelength")
        bands = tuple(bands)
        ebv = _check_ebv_grid(ebv_grid)
        native = lib.wavelength.value
        layout = _band_layout(native, bands, cache)
        lsf = {
            "fwhm": None if fwhm is None else float(u.Quantity(fwhm, u.AA).to_value(u.AA)),
            "fwhm_poly_coeffs": None if fwhm_poly_coeffs is None else [float(c) for c in np.ravel(fwhm_poly_coeffs)],
            "native_resolution": lib.resolution,
            "kernel": "Gaussian (quadrature-corrected for native R, native and target pixels) ⊗ target pixel",
        }
        key = fingerprint(
            "prepared-grid", _CACHE_VERSION, lib.fingerprint, idx, lsf, target, list(bands), layout[3], ebv,
            extinction, float(r_v),
        )
        folder = cache_dir("prepared", key) if cache else None
        if cache and key in _PREPARED_MEMO:
            _PREPARED_MEMO.move_to_end(key)
            return _PREPARED_MEMO[key]
        if cache:
            try:
                grid = cls._load(folder, key)
                log.info("prepared grid %s loaded from the cache", key)
                return _remember(key, grid)
            except CacheError as exc:
                if (folder / "index.json").exists():
                    log.warning("rebuilding the prepared grid %s: %s", key, exc)

        start = time.perf_counter()
        operator = lsf_operator(native, target, fwhm, fwhm_poly_coeffs, lib.resolution)
        lo, hi = operator.indices.min(), operator.indices.max() + 1
        operator = operator[:, lo:hi].tocsr()
        _, flux, cont, _ = lib.load_grid()
        rows = slice(None) if np.array_equal(idx, np.arange(len(lib))) else idx
        n = idx.size
        stacked = np.empty((hi - lo, 2 * n))
        stacked[:, :n] = flux[:, lo:hi][rows].T
        stacked[:, n:] = cont[:, lo:hi][rows].T
        prepared = operator @ stacked
        t_lsf = time.perf_counter() - start

        sums = _band_sums(lib, bands, layout, cache)[idx]
        band_fnu = _reddened_band_fnu(sums, layout[1], layout[2], ebv, extinction, float(r_v))
        sel = lib.entries[idx]
        params = Table({c: np.asarray(sel[c], dtype=np.float64) for c in (*_PARAM_COLUMNS, "carbon_m", "vmicro")})
        params["library_index"] = idx
        meta = {
            "key": key,
            "source": str(lib.path),
            "library_fingerprint": lib.fingerprint,
            "library_kind": lib.kind,
            "lsf": lsf,
            "extinction": extinction,
            "r_v": float(r_v),
            "band_subbins": _BAND_SUBBINS,
        }
        grid = cls(
            target * u.AA, np.ascontiguousarray(prepared[:, :n].T), np.ascontiguousarray(prepared[:, n:].T),
            params, bands, band_fnu, ebv, meta,
        )
        log.info(
            "prepared %d templates on %d pixels (LSF %.2f s, total %.2f s)",
            n, target.size, t_lsf, time.perf_counter() - start,
        )
        if cache:
            grid._save(folder)
        return _remember(key, grid) if cache else grid

    def _save(self, folder):
        arrays = {
            "wavelength": self.wavelength.value,
            "flux": self.flux,
            "continuum": self.continuum,
            "band_fnu": self.band_fnu,
            "ebv_grid": self.ebv_grid,
        }
        columns = {}
        for name in self.params.colnames:
            arrays[f"param_{name}"] = np.asarray(self.params[name])
            columns[name] = f"param_{name}"
        save_arrays(folder, arrays, meta={"band_names": list(self.band_names), "params": columns, "meta": self.meta})
        stamp_verified(folder)

    @classmethod
    def _load(cls, folder, key):
        arrays, meta = load_verified_arrays(folder)
        try:
            if meta["meta"].get("key") != key:
                raise CacheError(f"prepared grid {folder} has another key")
            params = Table({name: np.asarray(arrays[col]) for name, col in meta["params"].items()})
            return cls(
                arrays["wavelength"], arrays["flux"], arrays["continuum"], params, meta["band_names"],
                arrays["band_fnu"], arrays["ebv_grid"], meta["meta"],
            )
        except (KeyError, InputDataError) as exc:
            raise CacheError(f"prepared grid {folder} is inconsistent ({exc})") from exc
