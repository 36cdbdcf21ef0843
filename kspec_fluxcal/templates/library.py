"""`TemplateLibrary`: a BOSZ 2024 or ck04 folder, indexed and cached as one binary grid.

The library recognises a BOSZ 2024 folder (Mészáros et al. 2024; MAST layout
or everything in one folder) or a Castelli & Kurucz (2004) ``ck04models``
folder in the STScI CDBS layout, indexes it from the file names, and parses
the whole grid ONCE into a binary cache of float32 arrays (memory-mapped
afterwards; see `kspec_fluxcal.cache`).
"""

import logging
import time
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import Table

from ..bosz import parse_bosz_filename
from ..cache import cache_dir, fingerprint, load_arrays, load_verified_arrays, save_arrays, stamp_verified
from ..containers import FLAM, StellarTemplate, as_wavelength
from ..exceptions import CacheError, InputDataError, TemplateLibraryError
from .correction import resolve_template_correction
from .formats import (
    ck04_logg,
    ck04_parameters,
    is_ck04_model_file,
    read_bosz_surface_flux,
    read_bosz_wave_grid,
    read_ck04_file,
    upper_envelope,
)

__all__ = ["TemplateLibrary", "PARAMETER_SCALES"]

log = logging.getLogger(__name__)


_CACHE_VERSION = 1
"""Bump when the layout or the maths of any cache entry written here changes."""

PARAMETER_SCALES = {"teff": 250.0, "logg": 0.5, "feh": 0.25, "alpha_m": 0.25}
"""Parameter steps that count as one unit of distance in `TemplateLibrary.get_template`
(the steps of the BOSZ subgrid: K, dex, dex, dex)."""


def _stat_key(paths, root):
    """(relative path, size, mtime) of each file: the library's content key."""
    out = []
    for path in paths:
        st = path.stat()
        out.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return out


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
    correction : 'auto', 'none', None, str, os.PathLike or `~kspec_fluxcal.templates.correction.TemplateCorrection`
        Multiplicative correction applied to every model's flux and continuum
        as it enters the binary grid (so before any LSF). ``'auto'`` (default):
        the shipped CALSPEC-derived correction when the library is ck04models,
        none for BOSZ (and SYNTHETIC) libraries; None or ``'none'``: none; a
        path: a correction file (see
        `~kspec_fluxcal.templates.correction.resolve_template_correction`). The
        correction's fingerprint is part of `fingerprint`, so corrected and
        uncorrected grids never share a cache entry.

    Attributes
    ----------
    path : pathlib.Path
        The library folder.
    kind : str
        ``'bosz2024'`` or ``'ck04models'``.
    resolution : int or None
        Resolving power of the BOSZ models; None for ck04.
    fingerprint : str
        Content key of the library (changes when any model file or the
        correction changes).
    correction : `~kspec_fluxcal.templates.correction.TemplateCorrection` or None
        The correction applied to every model (each model receives
        ``correction.factor_for(λ, Teff, [M/H])``: 1 outside its domain).
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

    def __init__(self, path, resolution=None, correction="auto"):
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_dir():
            raise TemplateLibraryError(f"template library folder {self.path} does not exist.")
        self._grid = None
        self._detect(resolution)
        self.correction = resolve_template_correction(correction, self.kind)
        if self.correction is not None:
            self.fingerprint = fingerprint(self.fingerprint, "template-correction", self.correction.fingerprint)
        self.entries = self._load_index()

    # -- layout ----------------------------------------------------------------

    def _detect(self, resolution):
        root = self.path
        ck_files = sorted(
            p for p in root.glob("ck[mp][0-9][0-9]/ck[mp][0-9][0-9]_*.fits")
            if is_ck04_model_file(p)
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
            wave = read_bosz_wave_grid(self._wave_file)
            for path in self._files:
                p = self._bosz_names[path]
                rows.append((p.teff, p.logg, p.feh, p.alpha_m, p.carbon_m, p.vmicro, p.atmos, path, ""))
        else:
            wave = None
            for path in self._files:
                file_wave, columns = read_ck04_file(path)
                if wave is None:
                    wave = file_wave
                elif file_wave.shape != wave.shape or np.any(file_wave != wave):
                    raise TemplateLibraryError(
                        f"ck04 model file {path} has a wavelength grid different from {self._files[0]}; "
                        "every file of a ck04models library must share one grid."
                    )
                teff, feh = ck04_parameters(path)
                for name, flux in columns.items():
                    if np.any(flux != 0):
                        rows.append((teff, ck04_logg(name), feh, 0.0, 0.0, 2.0, "ck04", path, name))
        wave = as_wavelength(wave, f"wavelength grid of {self.path}")
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
        cor = f", corrected by {self.correction.label}" if self.correction is not None else ""
        return f"<TemplateLibrary {self.kind}{res}{cor}: {len(self)} models in {self.path}>"

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
            arrays, meta = load_verified_arrays(folder)
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
            if self.correction is not None:  # before any LSF
                self._apply_correction(flux, cont)
            save_arrays(
                folder,
                {"wavelength": self._wavelength, "flux": flux, "continuum": cont},
                meta={"fingerprint": self.fingerprint, "path": str(self.path), "kind": self.kind},
            )
            del flux, cont
            stamp_verified(folder)
            arrays, _ = load_arrays(folder, mmap=True, verify=False)
        self._grid = (np.asarray(arrays["wavelength"], dtype=np.float64), arrays["flux"], arrays["continuum"])
        return self._grid

    def _apply_correction(self, flux, cont):
        """Multiply each model's flux and continuum (in place) by the factor of its Teff and [M/H]."""
        teff = np.asarray(self.entries["teff"], dtype=np.float64)
        feh = np.asarray(self.entries["feh"], dtype=np.float64)
        n_out = 0
        for t, f in sorted(set(zip(teff.tolist(), feh.tolist()))):
            rows = (teff == t) & (feh == f)
            factor = self.correction.factor_for(self._wavelength, t, f).astype(np.float32)
            flux[rows] *= factor
            cont[rows] *= factor
            n_out += 0 if self.correction.covers(t, f) else int(np.count_nonzero(rows))
        log.info("template correction %s applied to %d of %d models (the others lie outside its domain)",
                 self.correction.label, len(teff) - n_out, len(teff))

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
                flux[k], cont[k] = read_bosz_surface_flux(Path(path), self._wave_file, n_wave)
                if (k + 1) % step == 0 or k + 1 == n:
                    log.info("  %d/%d models parsed (%.1f s)", k + 1, n, time.perf_counter() - start)
        else:
            paths = np.asarray(self.entries["path"])
            files = list(dict.fromkeys(paths))
            for k, path in enumerate(files):
                _, columns = read_ck04_file(Path(path))
                rows = np.flatnonzero(paths == path)
                flux[rows] = np.array([columns[c] for c in self.entries["column"][rows]])
                if (k + 1) % max(1, len(files) // 10) == 0 or k + 1 == len(files):
                    log.info("  %d/%d files parsed (%.1f s)", k + 1, len(files), time.perf_counter() - start)
            cont[:] = upper_envelope(flux.astype(np.float64))
        return flux, cont
