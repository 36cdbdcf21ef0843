"""Wavelength regions to leave out of fits: telluric bands and user-defined masks.

A region list is a Quantity array of shape (n, 2) in Å (air), one
``(start, end)`` row per region, sorted and non-overlapping once passed through
`combine_regions`. Masks follow the package convention: **True = masked (bad)**.
"""

import functools
import logging
from importlib import resources
from pathlib import Path

import numpy as np
from astropy import units as u

from .containers import make_spectrum, spectrum_variance, validate_spectrum
from .exceptions import InputDataError
from .io.text import read_columns
from .wavelength import as_wavelength

__all__ = [
    "load_mask_regions",
    "load_mask_array",
    "apply_mask_regions",
    "apply_named_mask",
    "combine_regions",
    "mask_coverage_fraction",
]

log = logging.getLogger(__name__)


def _named_path(name):
    candidate = resources.files("kspec_fluxcal") / "data" / f"{name}.dat"
    return Path(str(candidate)) if candidate.is_file() else None


def as_regions(regions):
    """Float array (n, 2) in Å of a region list (Quantity, plain numbers in Å, or a name/path)."""
    if isinstance(regions, (str, Path)):
        regions = load_mask_regions(regions)
    if isinstance(regions, u.Quantity):
        if regions.unit.physical_type != "length":
            raise InputDataError(f"mask regions have unit '{regions.unit}', which is not a wavelength.")
        regions = regions.to_value(u.AA)
    arr = np.asarray(regions, dtype=float)
    if arr.size == 0:
        return np.empty((0, 2))
    arr = np.atleast_2d(arr)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputDataError(f"mask regions must have shape (n, 2) (start, end); got {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise InputDataError("mask regions hold non-finite values.")
    if np.any(arr[:, 1] < arr[:, 0]):
        k = int(np.flatnonzero(arr[:, 1] < arr[:, 0])[0])
        raise InputDataError(f"mask region {k} ends ({arr[k, 1]}) before it starts ({arr[k, 0]}); swap them.")
    return arr


@functools.lru_cache(maxsize=32)
def _read_regions(path):
    data = read_columns(path, "mask file", "two columns, start and end in Å")
    data = data[:, :2] if data.size else np.empty((0, 2))
    data.setflags(write=False)
    return data


def load_mask_regions(name_or_path="telluric_default"):
    """Read a region list: a packaged name (``'telluric_default'``) or a text file.

    The file holds two columns, start and end wavelength in Å (air), with
    ``#`` comments. Results are cached.

    Returns
    -------
    `~astropy.units.Quantity`
        Shape (n, 2), Å, sorted and merged (`combine_regions`).

    Examples
    --------
    >>> regions = load_mask_regions()
    >>> regions.unit, bool(regions[0, 0] < 7000 * u.AA)
    (Unit("Angstrom"), True)
    """
    path = _named_path(name_or_path) if isinstance(name_or_path, str) else None
    if path is None:
        path = Path(name_or_path)
        if not path.is_file():
            raise InputDataError(
                f"no mask named {name_or_path!r} and no such file; packaged masks: telluric_default, "
                "or give a path to a two-column text file (start end, Å)."
            )
    return combine_regions(_read_regions(str(path.resolve())) * u.AA)


def combine_regions(*regions):
    """Merge region lists: sorted by start, overlapping or touching regions joined.

    Parameters
    ----------
    *regions : `~astropy.units.Quantity` (n, 2) or array_like in Å, or mask names/paths

    Returns
    -------
    `~astropy.units.Quantity`
        Shape (m, 2), Å.

    Examples
    --------
    >>> combine_regions([[10, 20], [15, 30]] * u.AA, [[40, 50]] * u.AA)
    <Quantity [[10., 30.],
               [40., 50.]] Angstrom>
    """
    parts = [as_regions(r) for r in regions]
    arr = np.concatenate(parts) if parts else np.empty((0, 2))
    if arr.shape[0] == 0:
        return np.empty((0, 2)) * u.AA
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    merged = [arr[0].copy()]
    for start, end in arr[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append(np.array([start, end]))
    return np.array(merged) * u.AA


def load_mask_array(wavelength, regions):
    """Boolean mask (True = inside a region, ends included) on ``wavelength``.

    Parameters
    ----------
    wavelength : `~astropy.units.Quantity` or array_like
        Increasing wavelengths (plain numbers are Å).
    regions : `~astropy.units.Quantity` (n, 2), array_like in Å, or a mask name/path

    Returns
    -------
    numpy.ndarray of bool
    """
    wave = as_wavelength(wavelength, "wavelength")
    arr = as_regions(regions)
    mask = np.zeros(wave.size, dtype=bool)
    for start, end in arr:
        lo, hi = np.searchsorted(wave, start, side="left"), np.searchsorted(wave, end, side="right")
        mask[lo:hi] = True
    return mask


def apply_mask_regions(spectrum, regions):
    """A copy of ``spectrum`` whose mask also covers ``regions`` (the original is untouched).

    Parameters
    ----------
    spectrum : `~specutils.Spectrum`
    regions : `~astropy.units.Quantity` (n, 2), array_like in Å, or a mask name/path

    Returns
    -------
    `~specutils.Spectrum`
        Same flux, uncertainty and meta; mask = old mask OR regions.
    """
    spectrum = validate_spectrum(spectrum)
    wave = spectrum.spectral_axis.to_value(u.AA)
    mask = np.asarray(spectrum.mask, dtype=bool) | load_mask_array(wave, regions)
    return make_spectrum(
        wave * u.AA,
        spectrum.flux.copy(),
        variance=spectrum_variance(spectrum),
        mask=mask,
        meta=dict(spectrum.meta),
    )


def apply_named_mask(spectrum, name="telluric_default"):
    """`apply_mask_regions` with a packaged mask name or a region file."""
    return apply_mask_regions(spectrum, load_mask_regions(name))


def mask_coverage_fraction(wavelength, regions):
    """Fraction (0–1) of the span of ``wavelength`` that lies inside ``regions``.

    Measured in wavelength (not in pixels): the overlap length of the merged
    regions with [λ_min, λ_max] divided by λ_max − λ_min.

    Examples
    --------
    >>> mask_coverage_fraction(np.linspace(6000, 8000, 101), [[6500, 7000]] * u.AA)
    0.25
    """
    wave = as_wavelength(wavelength, "wavelength")
    lo, hi = wave[0], wave[-1]
    arr = combine_regions(regions).to_value(u.AA)
    covered = np.clip(arr[:, 1], lo, hi) - np.clip(arr[:, 0], lo, hi)
    return float(np.sum(covered) / (hi - lo))


def spectrum_arrays(spectrum, mask_regions=None, name="spectrum"):
    """Plain arrays of a spectrum for numerical work.

    Returns
    -------
    wavelength, flux, variance, good : ndarray
        Wavelengths (Å), flux and variance values (variance None when the
        spectrum has none), and the usable pixels: not masked, finite flux,
        finite positive variance, outside ``mask_regions`` ((n, 2) Å or a
        mask name, see `load_mask_array`).
    """
    spec = validate_spectrum(spectrum, name)
    wave = spec.spectral_axis.to_value(u.AA)
    flux = np.asarray(spec.flux.value, dtype=float)
    var_q = spectrum_variance(spec)
    var = None if var_q is None else np.asarray(var_q.value, dtype=float)
    good = ~np.asarray(spec.mask, dtype=bool) & np.isfinite(flux)
    if var is not None:
        good &= np.isfinite(var) & (var > 0)
    if mask_regions is not None:
        good &= ~load_mask_array(wave, mask_regions)
    return wave, flux, var, good
