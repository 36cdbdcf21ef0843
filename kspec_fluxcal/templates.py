"""Stellar template libraries, instrument preparation and the prepared-grid cache.

Three jobs, in the order of the data flow:

* **Libraries.** `TemplateLibrary` recognises a BOSZ 2024 folder (Mészáros et
  al. 2024; MAST layout or everything in one folder) or a Castelli & Kurucz
  (2004) ``ck04models`` folder in the STScI CDBS layout, indexes it from the
  file names, and parses the whole grid ONCE into a binary cache of float32
  arrays (memory-mapped afterwards; see `kspec_fluxcal.cache`).
* **Instrument preparation.** `lsf_operator` builds one sparse matrix that
  convolves a native-resolution spectrum with the instrument's Gaussian line
  spread function (constant FWHM or a polynomial FWHM(λ)) and averages it over
  the target pixels; `prepare_template` applies it to one template and
  `resample_spectrum` is the plain flux-conserving resampler.
* **Prepared grids.** `PreparedGrid.build` applies one operator to a whole
  (selected) grid at once, adds the synthetic band fluxes of every template
  reddened over a grid of E(B−V), and caches the result on disk.

All wavelengths are in Å, in air.
"""

import collections
import gzip
import json
import logging
import math
import os
import re
import time
import warnings
import zlib
from collections import namedtuple
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from scipy import sparse
from scipy.ndimage import gaussian_filter1d, maximum_filter1d
from scipy.special import ndtr

from .cache import cache_dir, fingerprint, load_arrays, save_arrays
from .containers import FLAM, StellarTemplate, _as_wavelength
from .exceptions import CacheError, InputDataError, KspecFluxcalWarning, TemplateLibraryError
from .extinction import extinction_per_ebv
from .photometry import REGISTERED_BANDS, band_flux_weights

__all__ = [
    "BoszModelName",
    "parse_bosz_filename",
    "TemplateLibrary",
    "PARAMETER_SCALES",
    "TemplateResolutionWarning",
    "resample_spectrum",
    "lsf_operator",
    "prepare_template",
    "DEFAULT_EBV_GRID",
    "PreparedGrid",
]

log = logging.getLogger(__name__)

_CACHE_VERSION = 1
"""Bump when the layout or the maths of any cache entry written here changes."""

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_KERNEL_HALF_WIDTH = 6.0  # σ; the Gaussian beyond this is dropped (< 1e-9 of the weight)
_BAND_SUBBINS = 100  # sub-bins per band for the reddened band fluxes
_BAND_CHUNK = 64  # templates per block when summing band fluxes
_FOUR_PI = 4.0 * math.pi

PARAMETER_SCALES = {"teff": 250.0, "logg": 0.5, "feh": 0.25, "alpha_m": 0.25}
"""Parameter steps that count as one unit of distance in `TemplateLibrary.get_template`
(the steps of the BOSZ subgrid: K, dex, dex, dex)."""

DEFAULT_EBV_GRID = np.linspace(0.0, 0.5, 41)
"""Default E(B−V) grid (mag) of `PreparedGrid.build`."""


class TemplateResolutionWarning(KspecFluxcalWarning):
    """The template is already as broad as the requested LSF at some wavelengths."""


# ---------------------------------------------------------------------------
# File names
# ---------------------------------------------------------------------------

BoszModelName = namedtuple(
    "BoszModelName", ["atmos", "teff", "logg", "feh", "alpha_m", "carbon_m", "vmicro", "resolution"]
)
BoszModelName.__doc__ = """Parameters encoded in a BOSZ 2024 resampled-model file name.

Attributes
----------
atmos : str
    Atmosphere code: ``mp`` (MARCS plane-parallel), ``ms`` (MARCS spherical),
    ``ap`` (ATLAS9 plane-parallel).
teff : float
    Effective temperature (K).
logg : float
    Surface gravity, log10(g / cm s⁻²).
feh, alpha_m, carbon_m : float
    [M/H], [α/M] and [C/M] (dex).
vmicro : float
    Microturbulent velocity (km s⁻¹).
resolution : int
    Resolving power R of the resampled product.
"""

_NUM = r"[+-]\d+(?:\.\d+)?"
_BOSZ_RE = re.compile(
    rf"^bosz2024_(?P<atmos>[a-z]{{2}})_t(?P<teff>\d+(?:\.\d+)?)_g(?P<logg>{_NUM})_m(?P<feh>{_NUM})"
    rf"_a(?P<alpha_m>{_NUM})_c(?P<carbon_m>{_NUM})_v(?P<vmicro>\d+(?:\.\d+)?)_r(?P<resolution>\d+)"
    r"_resam\.txt\.gz$"
)
_CK04_RE = re.compile(r"^ck(?P<sign>[mp])(?P<mh>\d\d)_(?P<teff>\d+)\.fits$")
_CK04_GRAVITY_RE = re.compile(r"^g(\d\d)$")


def parse_bosz_filename(name):
    """Parameters of a BOSZ 2024 resampled model from its file name.

    Parameters
    ----------
    name : str or os.PathLike
        A file name or path, e.g.
        ``bosz2024_mp_t6000_g+4.0_m+0.00_a+0.00_c+0.00_v2_r5000_resam.txt.gz``.

    Returns
    -------
    BoszModelName or None
        None when the name is not that of a BOSZ 2024 ``_resam.txt.gz`` model
        (the wave-grid file, ``rorig_noresam`` files and foreign files).

    Examples
    --------
    >>> p = parse_bosz_filename("bosz2024_mp_t6000_g+4.0_m+0.00_a+0.00_c+0.00_v2_r5000_resam.txt.gz")
    >>> p.teff, p.logg, p.feh, p.vmicro, p.resolution
    (6000.0, 4.0, 0.0, 2.0, 5000)
    >>> parse_bosz_filename("bosz2024_wave_r5000.txt") is None
    True
    """
    match = _BOSZ_RE.match(Path(name).name)
    if match is None:
        return None
    g = match.groupdict()
    return BoszModelName(
        atmos=g["atmos"],
        teff=float(g["teff"]),
        logg=float(g["logg"]),
        feh=float(g["feh"]),
        alpha_m=float(g["alpha_m"]),
        carbon_m=float(g["carbon_m"]),
        vmicro=float(g["vmicro"]),
        resolution=int(g["resolution"]),
    )


def _ck04_metallicity(stem):
    """[M/H] of a CDBS metallicity code (``m10`` → −1.0, ``p02`` → +0.2)."""
    return (-1.0 if stem[0] == "m" else 1.0) * int(stem[1:]) / 10.0


# ---------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------


def _read_text_numbers(path, what):
    """All numbers of a (gzipped) text table, flat float64, fast.

    ``bytes.split`` + one `numpy.array` conversion: ~40 ms per 150 000 numbers
    (measured; `numpy.loadtxt` is no faster here and far slower on old numpy).
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise TemplateLibraryError(
            f"{what} {path} is unreadable or not a valid gzip file ({exc}); delete it and download it again."
        ) from exc
    try:
        values = np.array(raw.split(), dtype=np.float64)
    except ValueError as exc:
        raise TemplateLibraryError(
            f"{what} {path} holds text that is not a number ({exc}); delete it and download it again."
        ) from exc
    return values, raw.count(b"\n")


def _read_bosz_model(path, wave_file, n_wave):
    """(H_λ, continuum H_λ) of one BOSZ ``_resam`` file, checked against the wave grid."""
    values, n_lines = _read_text_numbers(path, "BOSZ model")
    if values.size != 2 * n_wave:
        columns = values.size / n_lines if n_lines else 0
        raise TemplateLibraryError(
            f"BOSZ model {path} has {n_lines} rows of {columns:g} columns, but a _resam file must have "
            f"2 columns (H, continuum) and one row per wavelength of {wave_file} ({n_wave} rows); "
            "the file is truncated or belongs to another resolution — download it again."
        )
    values = values.reshape(n_wave, 2)
    return values[:, 0], values[:, 1]


def _read_ck04_file(path):
    """(wavelength, {column name: flux}) of one CDBS ck04 FITS table.

    astropy's warnings about the file (a damaged header, a truncated file) are
    errors here: genuine CDBS files raise none.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)
            # opened here so that it is closed even when astropy fails halfway through fits.open
            with open(path, "rb") as handle, fits.open(handle, memmap=False) as hdul:
                data = hdul[1].data
                wave = np.asarray(data["WAVELENGTH"], dtype=np.float64)
                columns = {
                    name: np.asarray(data[name], dtype=np.float64)
                    for name in data.columns.names
                    if _CK04_GRAVITY_RE.match(name)
                }
    except (OSError, IndexError, KeyError, TypeError, ValueError, AstropyUserWarning) as exc:
        raise TemplateLibraryError(
            f"ck04 model file {path} is unreadable ({' '.join(str(exc).split())}); it must be a FITS table with a "
            "WAVELENGTH column and flux columns g00…g50 in extension 1."
        ) from exc
    return wave, columns


def _upper_envelope(flux, half_width=4, sigma_pix=3.0):
    """Smooth upper envelope of each row of ``flux`` (the ck04 continuum).

    log10 F → running maximum over ±``half_width`` pixels → Gaussian smoothing
    of σ = ``sigma_pix`` pixels → back to linear. On the ck04 grid (20 Å
    pixels in the optical) that is a 180 Å maximum window and a 60 Å
    smoothing: the curve runs over the tops of the lines (flux/continuum
    exceeds 1.01 at < 0.1 % of the pixels of the 3000–25 000 Å range).
    """
    floor = np.maximum(flux.max(axis=1, keepdims=True), 1e-300) * 1e-30
    logf = np.log10(np.maximum(flux, floor))
    env = maximum_filter1d(logf, 2 * half_width + 1, axis=1, mode="nearest")
    return 10.0 ** gaussian_filter1d(env, sigma_pix, axis=1, mode="nearest")


def _stat_key(paths, root):
    """(relative path, size, mtime) of each file: the library's content key."""
    out = []
    for path in paths:
        st = path.stat()
        out.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return out


def _file_states(folder):
    """(size, mtime, inode) of every file of a cache entry."""
    states = {}
    for path in sorted(folder.glob("*.npy")) + [folder / "index.json"]:
        st = path.stat()
        states[path.name] = [st.st_size, st.st_mtime_ns, st.st_ino]
    return states


def _stamp_verified(folder):
    """Record the state of a cache entry whose checksums are known to be right."""
    tmp = folder / "verified.json.part"
    try:
        tmp.write_text(json.dumps(_file_states(folder)))
        os.replace(tmp, folder / "verified.json")
    except OSError as exc:  # a read-only cache: every load then verifies the checksums
        log.debug("cannot stamp the cache entry %s as verified: %s", folder, exc)


def _load_mapped(folder):
    """`load_arrays` memory-mapped, re-checksumming only files changed since their last verification.

    Hashing 600 MB takes ~0.8 s, more than the rest of a cold load, so every
    entry carries a stamp (size, mtime, inode of each file) written when its
    checksums were last verified (or right after it was written). A file that
    was rewritten, truncated or touched since then no longer matches the stamp
    and the whole entry is verified again; a mismatch raises
    `~kspec_fluxcal.CacheError` and the caller rebuilds the entry.
    """
    try:
        stamp = json.loads((folder / "verified.json").read_text())
        verify = stamp != _file_states(folder)
    except (OSError, ValueError):
        verify = True
    arrays, meta = load_arrays(folder, mmap=True, verify=verify)
    if verify:
        _stamp_verified(folder)
    return arrays, meta


# ---------------------------------------------------------------------------
# Template library
# ---------------------------------------------------------------------------


class TemplateLibrary:
    """A folder of stellar model spectra: BOSZ 2024 or Castelli–Kurucz ck04.

    Recognised layouts:

    * **BOSZ 2024** (``kind = 'bosz2024'``): ``bosz2024_*_r<R>_resam.txt.gz``
      model files (two columns, H_λ and its continuum, no wavelength) anywhere
      below ``path`` — as on MAST, ``r<R>/m±X.XX/``, or all in one folder —
      plus the wave grid ``bosz2024_wave_r<R>.txt`` in ``path``, in
      ``path/r<R>/`` or in ``path/wavelength_grids/``. Flux = 4π H_λ,
      continuum = 4π C_λ (surface flux, erg s⁻¹ cm⁻² Å⁻¹); wavelengths are in
      air above 2000 Å. Templates carry R from the file names.
    * **ck04models** (``kind = 'ck04models'``): the STScI CDBS layout
      ``ck<met>/ck<met>_<teff>.fits`` (``m10`` → [M/H] = −1.0, ``p02`` → +0.2),
      extension 1 holding ``WAVELENGTH`` (Å) and one surface-flux column per
      log g (``g45`` → 4.5); all-zero columns (models that do not exist) are
      left out. Sampling is 10–20 Å in the UV/optical: good for spectral energy
      distributions and synthetic photometry, coarse for lines. The CDBS
      tables do not say air or vacuum; the wavelengths are used as air (the
      difference, ≤ 2.7 Å up to 1 µm, is far below the sampling). The files
      hold no continuum: it is derived as the smooth upper envelope of the
      flux — a running maximum of log F over ±4 pixels (180 Å in the
      optical) smoothed by a Gaussian of σ = 3 pixels (60 Å) — so it runs over
      the tops of the lines (flux/continuum ≤ 1.01 at > 99.9 % of the
      3000–25 000 Å pixels) and bridges the Balmer jump; it is an envelope,
      not a physical continuum. Templates carry ``resolution = None``.

    The index (parameters from the file names; for ck04 also which columns are
    non-zero) is cached in the user cache under a key made of every model
    file's relative path, size and modification time, so it is rebuilt
    whenever the folder changes; the library folder itself is only read.

    Parameters
    ----------
    path : str or os.PathLike
        The library folder.
    resolution : int, optional
        For a BOSZ folder holding several resolving powers: the one to use.

    Attributes
    ----------
    path : pathlib.Path
        The library folder.
    kind : str
        ``'bosz2024'`` or ``'ck04models'``.
    resolution : int or None
        Resolving power of the BOSZ models; None for ck04.
    fingerprint : str
        Content key of the library (changes when any model file changes).
    entries : `~astropy.table.Table`
        One row per model: ``teff`` (K), ``logg``, ``feh``, ``alpha_m``,
        ``carbon_m`` (dex), ``vmicro`` (km s⁻¹), ``atmos``, ``path`` (the file),
        ``column`` (ck04 flux column, '' for BOSZ) and ``index`` (row in the
        binary grid).

    Raises
    ------
    TemplateLibraryError
        If the folder is missing, empty, of unknown layout, or ambiguous.
    """

    def __init__(self, path, resolution=None):
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_dir():
            raise TemplateLibraryError(f"template library folder {self.path} does not exist.")
        self._grid = None
        self._detect(resolution)
        self.entries = self._load_index()

    # -- layout ----------------------------------------------------------------

    def _detect(self, resolution):
        root = self.path
        ck_files = sorted(
            p for p in root.glob("ck[mp][0-9][0-9]/ck[mp][0-9][0-9]_*.fits")
            if _CK04_RE.match(p.name) and p.name.startswith(p.parent.name + "_")
        )
        bosz = {}
        for p in sorted(root.rglob("bosz2024_*_resam.txt.gz")):
            parsed = parse_bosz_filename(p.name)
            if parsed is not None:
                bosz.setdefault(parsed.resolution, []).append((p, parsed))
        if ck_files and bosz:
            raise TemplateLibraryError(
                f"{root} holds both BOSZ 2024 models and a ck04models tree; point to one of them."
            )
        if ck_files:
            if resolution is not None:
                raise TemplateLibraryError(
                    f"resolution={resolution} was given but {root} is a ck04models library, whose "
                    "resolution is fixed; leave resolution=None."
                )
            self.kind, self.resolution, self._files = "ck04models", None, ck_files
            self._wave_file = None
        elif bosz:
            self.kind = "bosz2024"
            self.resolution = self._pick_resolution(bosz, resolution)
            self._bosz_names = dict(bosz[self.resolution])
            self._files = sorted(self._bosz_names)
            self._wave_file = self._find_wave_file(self.resolution)
        else:
            what = "is empty" if not any(root.iterdir()) else "holds no recognised template files"
            raise TemplateLibraryError(
                f"template library folder {root} {what}. Expected either a BOSZ 2024 folder "
                "(bosz2024_wave_r<R>.txt and r<R>/m±X.XX/bosz2024_*_r<R>_resam.txt.gz files, as on MAST, "
                "or all in one folder) or a Castelli–Kurucz ck04models folder in the CDBS layout "
                "(ck<met>/ck<met>_<teff>.fits, e.g. ckp00/ckp00_6000.fits)."
            )
        self.fingerprint = fingerprint(
            "template-library", _CACHE_VERSION, self.kind, self.resolution,
            _stat_key(self._files + ([self._wave_file] if self._wave_file else []), root),
        )

    def _pick_resolution(self, bosz, resolution):
        found = sorted(bosz)
        if resolution is None:
            if len(found) > 1:
                raise TemplateLibraryError(
                    f"{self.path} holds BOSZ models of several resolving powers ({', '.join(map(str, found))}); "
                    f"point to a folder of one of them (e.g. {self.path / f'r{found[-1]}'}) or choose one with "
                    "TemplateLibrary(path, resolution=R)."
                )
            return found[0]
        if int(resolution) not in bosz:
            raise TemplateLibraryError(
                f"{self.path} holds no BOSZ models of resolution {resolution}; found "
                f"{', '.join(map(str, found))}."
            )
        return int(resolution)

    def _find_wave_file(self, resolution):
        name = f"bosz2024_wave_r{resolution}.txt"
        candidates = [self.path / name, self.path / f"r{resolution}" / name, self.path / "wavelength_grids" / name]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise TemplateLibraryError(
            f"the BOSZ wave grid {name} is missing: looked for "
            f"{', '.join(str(c.relative_to(self.path)) for c in candidates)} in {self.path}. "
            "Download it from the MAST BOSZ 2024 archive (wavelength_grids/)."
        )

    # -- index -----------------------------------------------------------------

    def _load_index(self):
        folder = cache_dir("templates", self.fingerprint, "index")
        try:
            arrays, meta = load_arrays(folder, mmap=False)
            if meta.get("fingerprint") != self.fingerprint:
                raise CacheError(f"index {folder} belongs to another library")
            log.debug("template index of %s loaded from the cache", self.path)
        except CacheError as exc:
            if (folder / "index.json").exists():
                log.warning("rebuilding the template index of %s: %s", self.path, exc)
            arrays = self._build_index()
            save_arrays(folder, arrays, meta={"fingerprint": self.fingerprint, "path": str(self.path)})
        self._wavelength = np.asarray(arrays["wavelength"], dtype=np.float64)
        table = Table()
        for name in ("teff", "logg", "feh", "alpha_m", "carbon_m", "vmicro"):
            table[name] = np.asarray(arrays[name], dtype=np.float64)
        table["atmos"] = arrays["atmos"].astype(str)
        table["path"] = [str(self.path / rel) for rel in arrays["relpath"].astype(str)]
        table["column"] = arrays["column"].astype(str)
        table["index"] = np.arange(len(table))
        table["teff"].unit = u.K
        table["vmicro"].unit = u.km / u.s
        return table

    def _build_index(self):
        log.info("indexing the %s template library %s (%d files)", self.kind, self.path, len(self._files))
        rows = []
        if self.kind == "bosz2024":
            wave, _ = _read_text_numbers(self._wave_file, "BOSZ wave grid")
            for path in self._files:
                p = self._bosz_names[path]
                rows.append((p.teff, p.logg, p.feh, p.alpha_m, p.carbon_m, p.vmicro, p.atmos, path, ""))
        else:
            wave = None
            for path in self._files:
                file_wave, columns = _read_ck04_file(path)
                if wave is None:
                    wave = file_wave
                elif file_wave.shape != wave.shape or np.any(file_wave != wave):
                    raise TemplateLibraryError(
                        f"ck04 model file {path} has a wavelength grid different from {self._files[0]}; "
                        "every file of a ck04models library must share one grid."
                    )
                feh = _ck04_metallicity(path.parent.name[2:])
                teff = float(_CK04_RE.match(path.name)["teff"])
                for name, flux in columns.items():
                    if np.any(flux != 0):
                        logg = int(_CK04_GRAVITY_RE.match(name)[1]) / 10.0
                        rows.append((teff, logg, feh, 0.0, 0.0, 2.0, "ck04", path, name))
        wave = _as_wavelength(wave, f"wavelength grid of {self.path}")
        if not rows:
            raise TemplateLibraryError(f"{self.path} holds model files but every flux column is all zeros.")
        rows.sort(key=lambda r: (r[3], r[2], r[0], r[1], r[4], r[5], r[6]))
        keys = [r[:7] for r in rows]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            paths = [str(r[7]) for r in rows if r[:7] == dup]
            raise TemplateLibraryError(
                f"{self.path} holds the same model twice ({', '.join(paths)}); remove one copy."
            )
        cols = list(zip(*rows, strict=True))
        return {
            "wavelength": wave,
            "teff": np.array(cols[0], float),
            "logg": np.array(cols[1], float),
            "feh": np.array(cols[2], float),
            "alpha_m": np.array(cols[3], float),
            "carbon_m": np.array(cols[4], float),
            "vmicro": np.array(cols[5], float),
            "atmos": np.array(cols[6], dtype=str),
            "relpath": np.array([Path(p).relative_to(self.path).as_posix() for p in cols[7]], dtype=str),
            "column": np.array(cols[8], dtype=str),
        }

    # -- public API ------------------------------------------------------------

    def __len__(self):
        return len(self.entries)

    def __repr__(self):
        res = f", R={self.resolution}" if self.resolution else ""
        return f"<TemplateLibrary {self.kind}{res}: {len(self)} models in {self.path}>"

    @property
    def wavelength(self):
        """Native wavelength grid of the library (Å, air), a Quantity."""
        return self._wavelength * u.AA

    def query(self, teff_range=None, logg_range=None, feh_range=None, alpha_m=None):
        """The entries inside parameter ranges.

        Parameters
        ----------
        teff_range : (float, float), optional
            Inclusive Teff range (K).
        logg_range, feh_range : (float, float), optional
            Inclusive log g and [M/H] ranges (dex).
        alpha_m : float, optional
            Keep only this [α/M] (dex).

        Returns
        -------
        `~astropy.table.Table`
            A subset of `entries` (its ``index`` column still points into the
            whole grid).
        """
        keep = np.ones(len(self.entries), dtype=bool)
        for name, bounds in (("teff", teff_range), ("logg", logg_range), ("feh", feh_range)):
            if bounds is not None:
                lo, hi = (float(b) for b in bounds)
                values = np.asarray(self.entries[name], dtype=float)
                tol = 1e-9 * max(abs(lo), abs(hi), 1.0)
                keep &= (values >= lo - tol) & (values <= hi + tol)
        if alpha_m is not None:
            keep &= np.abs(np.asarray(self.entries["alpha_m"], float) - float(alpha_m)) < 1e-6
        return self.entries[keep]

    def get_template(self, teff, logg, feh, alpha_m=None):
        """The grid model nearest to the given parameters.

        Distance is Euclidean in parameters scaled by `PARAMETER_SCALES`
        (250 K, 0.5 dex, 0.25 dex, 0.25 dex). With ``alpha_m=None`` [α/M] is
        left out of the distance and ties go to the smallest abs([α/M]).

        Returns
        -------
        `~kspec_fluxcal.containers.StellarTemplate`
        """
        e = self.entries
        d2 = (
            ((np.asarray(e["teff"], float) - float(teff)) / PARAMETER_SCALES["teff"]) ** 2
            + ((np.asarray(e["logg"], float) - float(logg)) / PARAMETER_SCALES["logg"]) ** 2
            + ((np.asarray(e["feh"], float) - float(feh)) / PARAMETER_SCALES["feh"]) ** 2
        )
        alpha = np.asarray(e["alpha_m"], float)
        if alpha_m is not None:
            d2 = d2 + ((alpha - float(alpha_m)) / PARAMETER_SCALES["alpha_m"]) ** 2
        best = np.lexsort((np.abs(alpha), np.round(d2, 12)))[0]
        return self.load_template(e[best])

    def load_grid(self, entries=None):
        """The whole (or a selected) grid from the binary cache, memory-mapped.

        The first call parses every model file into the cache (with progress
        logging; ~0.1 s per BOSZ R = 10 000 model); later calls — in any
        process — memory-map the cached float32 arrays. A corrupt or stale
        cache entry is rebuilt, never trusted.

        Parameters
        ----------
        entries : `~astropy.table.Table`, optional
            Rows of `entries` (e.g. from `query`); default all.

        Returns
        -------
        wavelength : `~astropy.units.Quantity`
            (n_wave,) Å, air.
        flux, continuum : numpy.ndarray
            float32, (n_models, n_wave), erg s⁻¹ cm⁻² Å⁻¹ (surface flux):
            read-only memory maps for the whole grid, in-memory copies for a
            subset.
        entries : `~astropy.table.Table`
            The rows, in the order of ``flux``.
        """
        wave, flux, cont = self._load_binary_grid()
        if entries is None:
            return wave * u.AA, flux, cont, self.entries
        idx = np.asarray(entries["index"], dtype=np.intp)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.entries)):
            raise InputDataError(f"entries index {idx.max()} is outside this library of {len(self)} models.")
        return wave * u.AA, flux[idx], cont[idx], entries

    def load_template(self, entry, wave_range=None):
        """One model as a `~kspec_fluxcal.containers.StellarTemplate`.

        Parameters
        ----------
        entry : `~astropy.table.Row` or int
            A row of `entries` (or of a `query` result), or its ``index``.
        wave_range : (float, float) or `~astropy.units.Quantity`, optional
            Keep only this wavelength range (Å when plain).

        Returns
        -------
        `~kspec_fluxcal.containers.StellarTemplate`
            Flux and continuum in erg s⁻¹ cm⁻² Å⁻¹ (surface, F = 4πH for
            BOSZ); ``resolution`` = R of BOSZ models, None for ck04; ``source``
            = the model file.
        """
        index = int(entry) if isinstance(entry, (int, np.integer)) else int(entry["index"])
        if not 0 <= index < len(self.entries):
            raise InputDataError(f"template index {index} is outside this library of {len(self)} models.")
        row = self.entries[index]
        wave, flux, cont = self._load_binary_grid()
        sel = slice(None)
        if wave_range is not None:
            lo, hi = u.Quantity(wave_range, u.AA).to_value(u.AA)
            sel = slice(np.searchsorted(wave, lo, "left"), np.searchsorted(wave, hi, "right"))
        source = row["path"] + (f"[{row['column']}]" if row["column"] else "")
        return StellarTemplate(
            wavelength=wave[sel] * u.AA,
            flux=np.asarray(flux[index, sel], dtype=np.float64) * FLAM,
            continuum=np.asarray(cont[index, sel], dtype=np.float64) * FLAM,
            teff=row["teff"],
            logg=row["logg"],
            feh=row["feh"],
            alpha_m=row["alpha_m"],
            carbon_m=row["carbon_m"],
            vmicro=float(row["vmicro"]),
            atmos_model=str(row["atmos"]),
            source=source,
            resolution=self.resolution,
        )

    # -- binary grid -----------------------------------------------------------

    def _load_binary_grid(self):
        if self._grid is not None:
            return self._grid
        folder = cache_dir("templates", self.fingerprint, "grid")
        n, n_wave = len(self.entries), self._wavelength.size
        try:
            arrays, meta = _load_mapped(folder)
            if (
                meta.get("fingerprint") != self.fingerprint
                or arrays["flux"].shape != (n, n_wave)
                or arrays["continuum"].shape != (n, n_wave)
                or arrays["wavelength"].shape != (n_wave,)
            ):
                raise CacheError(f"binary grid {folder} does not match the library")
            log.info("template grid of %s (%d models) memory-mapped from the cache %s", self.path, n, folder)
        except CacheError as exc:
            if (folder / "index.json").exists():
                log.warning("rebuilding the binary template grid of %s: %s", self.path, exc)
            flux, cont = self._ingest()
            save_arrays(
                folder,
                {"wavelength": self._wavelength, "flux": flux, "continuum": cont},
                meta={"fingerprint": self.fingerprint, "path": str(self.path), "kind": self.kind},
            )
            del flux, cont
            _stamp_verified(folder)
            arrays, _ = load_arrays(folder, mmap=True, verify=False)
        self._grid = (np.asarray(arrays["wavelength"], dtype=np.float64), arrays["flux"], arrays["continuum"])
        return self._grid

    def _ingest(self):
        """Parse every model into float32 (n_models, n_wave) flux and continuum arrays."""
        n, n_wave = len(self.entries), self._wavelength.size
        log.info("ingesting %d %s models from %s into the binary cache", n, self.kind, self.path)
        start = time.perf_counter()
        flux = np.empty((n, n_wave), dtype=np.float32)
        cont = np.empty((n, n_wave), dtype=np.float32)
        step = max(1, n // 10)
        if self.kind == "bosz2024":
            for k, path in enumerate(self.entries["path"]):
                h, c = _read_bosz_model(Path(path), self._wave_file, n_wave)
                flux[k] = _FOUR_PI * h
                cont[k] = _FOUR_PI * c
                if (k + 1) % step == 0 or k + 1 == n:
                    log.info("  %d/%d models parsed (%.1f s)", k + 1, n, time.perf_counter() - start)
        else:
            paths = np.asarray(self.entries["path"])
            files = list(dict.fromkeys(paths))
            for k, path in enumerate(files):
                _, columns = _read_ck04_file(Path(path))
                rows = np.flatnonzero(paths == path)
                flux[rows] = np.array([columns[c] for c in self.entries["column"][rows]])
                if (k + 1) % max(1, len(files) // 10) == 0 or k + 1 == len(files):
                    log.info("  %d/%d files parsed (%.1f s)", k + 1, len(files), time.perf_counter() - start)
            cont[:] = _upper_envelope(flux.astype(np.float64))
        return flux, cont


# ---------------------------------------------------------------------------
# Resampling and the line spread function
# ---------------------------------------------------------------------------


def _bin_edges(wave):
    """Pixel edges: midpoints between samples, half a step beyond the ends."""
    mid = 0.5 * (wave[1:] + wave[:-1])
    return np.concatenate([[2.0 * wave[0] - mid[0]], mid, [2.0 * wave[-1] - mid[-1]]])


def _wave_pair(wave_in, wave_out):
    """Both wavelength arrays as float64 Å (plain arrays are taken as Å)."""
    return _as_wavelength(wave_in, "wave_in"), _as_wavelength(wave_out, "wave_out")


def resample_spectrum(wave_in, flux_in, wave_out, fill_value=0.0):
    """Flux-conserving resampling onto another wavelength grid.

    The input is taken as constant over each input pixel (pixel edges half way
    between samples) and integrated exactly over each output pixel, so
    ∫ f dλ is conserved over any range both grids cover.

    Parameters
    ----------
    wave_in : `~astropy.units.Quantity` or array_like
        Increasing input wavelengths (Å when plain), shape (n_in,).
    flux_in : `~astropy.units.Quantity` or array_like
        Flux density per unit wavelength, shape (..., n_in); finite.
    wave_out : `~astropy.units.Quantity` or array_like
        Increasing output wavelengths (Å when plain), shape (n_out,).
    fill_value : float, optional
        Value of output pixels not wholly covered by the input pixels.

    Returns
    -------
    `~astropy.units.Quantity` or numpy.ndarray
        Shape (..., n_out), in the unit of ``flux_in``.

    Examples
    --------
    >>> out = resample_spectrum([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 3.0, 3.0], [1.5, 3.5])
    >>> out.tolist()
    [1.0, 3.0]
    """
    w_in, w_out = _wave_pair(wave_in, wave_out)
    unit = flux_in.unit if isinstance(flux_in, u.Quantity) else None
    flux = np.asarray(flux_in.value if unit is not None else flux_in, dtype=np.float64)
    if flux.shape[-1:] != w_in.shape:
        raise InputDataError(f"flux_in has shape {flux.shape}; its last axis must match wave_in ({w_in.size}).")
    if not np.all(np.isfinite(flux)):
        raise InputDataError("flux_in holds non-finite values; mask or interpolate them before resampling.")
    e_in, e_out = _bin_edges(w_in), _bin_edges(w_out)
    cum = np.concatenate([np.zeros(flux.shape[:-1] + (1,)), np.cumsum(flux * np.diff(e_in), axis=-1)], axis=-1)
    k = np.clip(np.searchsorted(e_in, e_out, side="right") - 1, 0, w_in.size - 1)
    t = np.clip((e_out - e_in[k]) / (e_in[k + 1] - e_in[k]), 0.0, 1.0)
    c_out = cum[..., k] + t * (cum[..., k + 1] - cum[..., k])
    out = np.diff(c_out, axis=-1) / np.diff(e_out)
    covered = (e_out[:-1] >= e_in[0]) & (e_out[1:] <= e_in[-1])
    out[..., ~covered] = fill_value
    return out * unit if unit is not None else out


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
    native = _as_wavelength(native_wavelength, "native_wavelength")
    target = _as_wavelength(target_wavelength, "target_wavelength")
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
    target = _as_wavelength(target_wavelength, "target_wavelength")
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


# ---------------------------------------------------------------------------
# Band fluxes of whole grids
# ---------------------------------------------------------------------------


def _band_layout(wave, band_names):
    """Sub-bin aggregator of the bands on the native grid.

    Returns (S, lam, covered, key): S is a CSR matrix (n_bands·NSUB, n_wave)
    whose row (b, j) holds the `band_flux_weights` of band b restricted to its
    j-th sub-bin (contiguous runs of equal numbers of pixels); ``lam`` (n_bands,
    NSUB) the weight-averaged wavelength of each sub-bin; ``covered`` which
    bands the grid covers; ``key`` a fingerprint of S.
    """
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


# ---------------------------------------------------------------------------
# Prepared grid
# ---------------------------------------------------------------------------


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
        self.wavelength = _as_wavelength(wavelength, "PreparedGrid.wavelength") * u.AA
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
        target = _as_wavelength(target_wavelength, "target_wavelength")
        bands = tuple(bands)
        ebv = _check_ebv_grid(ebv_grid)
        native = lib.wavelength.value
        layout = _band_layout(native, bands)
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
        _stamp_verified(folder)

    @classmethod
    def _load(cls, folder, key):
        arrays, meta = _load_mapped(folder)
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
