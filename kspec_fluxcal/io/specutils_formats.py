"""KSPEC frames and calibrations in specutils: ``Spectrum.read`` / ``SpectrumList.read`` / ``.write``.

Importing `kspec_fluxcal` registers these formats with
`specutils.io.registers` (as PypeIt does for its spec1d files):

``"KSPEC-RED"`` (reader and writer; found without ``format=``)
    A RED frame, raw or calibrated (PRIMARY, ``VARIANCE``, ``WAVELA``,
    ``FIBRES``; see the formats page).
    ``SpectrumList.read(path)`` gives one 1-D `~specutils.Spectrum` per fiber:
    flux in ``BUNIT`` (read by `kspec_fluxcal.io.units.parse_unit`),
    `~astropy.nddata.VarianceUncertainty`, mask (True = bad: flux or
    variance not finite, variance negative, or flagged in the optional
    ``MASK`` extension), the fiber's own wavelengths (Å, air), and ``meta``
    with ``header`` (the PRIMARY header), ``fibre`` (its ``FIBRES`` row as a
    dict) and ``fiber`` (its index). ``Spectrum.read(path)`` gives one 2-D
    `~specutils.Spectrum` (NFIB, NPIX) when every fiber has the same
    wavelengths (``meta``: ``header``, ``fibres`` as a Table); otherwise it
    raises `~kspec_fluxcal.RedFileError` pointing to ``SpectrumList.read``.
    Writing (``spectrum.write(path, format="KSPEC-RED")``, also for a
    `~specutils.SpectrumList` of fibers of equal length) produces a RED
    frame that reads back to the same values, units, masks and meta.

``"KSPEC-FLUXCAL"`` (reader; found without ``format=`` for calibration products)
    The combined calibration vector of a calibration product or (with
    ``format="KSPEC-FLUXCAL"``) of a calibrated RED file, as a 1-D
    `~specutils.Spectrum` (`kspec_fluxcal.containers.CalibrationVector.to_spectrum`).
"""

import logging
import os
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import VarianceUncertainty
from astropy.table import Table
from specutils import Spectrum, SpectrumList
from specutils.io.registers import custom_writer, data_loader

from ..containers import spectrum_variance
from ..exceptions import InputDataError, OutputWriteError, RedFileError
from .atomic import write_fits_atomic
from .fiber_spectra import fiber_spectra
from .header import copy_header
from .products import load_calibration
from .red import read_red_frame
from .units import fits_unit_string

__all__ = [
    "RED_FORMAT",
    "FLUXCAL_FORMAT",
    "identify_kspec_red",
    "identify_kspec_fluxcal",
    "read_red_spectrum_list",
    "read_red_spectrum",
    "read_fluxcal_spectrum",
    "write_red_spectrum",
    "write_red_spectrum_list",
    "red_hdulist",
]

log = logging.getLogger(__name__)

RED_FORMAT = "KSPEC-RED"
"""specutils format name of KSPEC RED frames (raw or calibrated)."""

FLUXCAL_FORMAT = "KSPEC-FLUXCAL"
"""specutils format name of the combined calibration vector (``FLUXCAL`` extension)."""

_RED_EXTENSIONS = ("VARIANCE", "WAVELA", "FIBRES")
_STRUCTURAL = ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BUNIT", "CHECKSUM", "DATASUM")


def _extension_names(args):
    """Names of the HDUs of the file in ``args`` (a path or an open HDUList), or () when it is not FITS."""
    target = args[0] if args else None
    if isinstance(target, fits.HDUList):
        return [h.name for h in target]
    if not isinstance(target, (str, os.PathLike)) or not Path(target).is_file():
        return ()
    with open(target, "rb") as handle:
        if handle.read(30) != b"SIMPLE  =                    T":
            return ()
    with fits.open(target, memmap=False) as hdul:
        return [h.name for h in hdul]


def identify_kspec_red(origin, *args, **kwargs):
    """True for a FITS file with the KSPEC RED layout (``VARIANCE``, ``WAVELA`` and ``FIBRES`` extensions)."""
    names = _extension_names(args)
    return all(name in names for name in _RED_EXTENSIONS)


def identify_kspec_fluxcal(origin, *args, **kwargs):
    """True for a calibration product: a FITS file with ``FLUXCAL`` that is not a RED frame."""
    names = _extension_names(args)
    return "FLUXCAL" in names and "WAVELA" not in names


def _path(file_obj):
    if isinstance(file_obj, (str, os.PathLike)):
        return Path(file_obj)
    name = getattr(file_obj, "name", None)  # astropy's registry hands over an open file when it guessed the format
    if isinstance(name, (str, os.PathLike)) and Path(name).is_file():
        return Path(name)
    raise InputDataError(f"read KSPEC frames from a file name; got {type(file_obj).__name__}.")


def _frame_arrays(path):
    """(frame, mask) of a RED file: its `~kspec_fluxcal.io.red.RedFrame` and the bad-pixel mask."""
    frame = read_red_frame(path)
    with np.errstate(invalid="ignore"):
        mask = ~np.isfinite(frame.counts) | ~np.isfinite(frame.variance) | (frame.variance < 0)
    with fits.open(path, memmap=False) as hdul:
        if "MASK" in hdul:
            flagged = np.asarray(hdul["MASK"].data)
            if flagged.shape != mask.shape:
                raise RedFileError(f"MASK of {path.name} has shape {flagged.shape}, not {mask.shape}.")
            mask |= flagged.astype(bool)
    return frame, mask


def _fibre_dict(row):
    out = {}
    for name in row.colnames:
        value = row[name]
        if isinstance(value, np.generic):
            value = value.item()
        out[name] = value.strip() if isinstance(value, str) else value
    return out


@data_loader(RED_FORMAT, identifier=identify_kspec_red, dtype=SpectrumList, extensions=["fits", "fit"],
             priority=10, force=True)
def read_red_spectrum_list(file_obj, **kwargs):
    """A RED frame as a `~specutils.SpectrumList`, one 1-D `~specutils.Spectrum` per fiber.

    Parameters
    ----------
    file_obj : str or Path
        The RED file (raw or calibrated).

    Returns
    -------
    `~specutils.SpectrumList`
        Spectral axes in Å (air); flux in the frame's ``BUNIT``;
        `~astropy.nddata.VarianceUncertainty`; mask True = bad; ``meta``
        ``header``, ``fibre`` (the ``FIBRES`` row as a dict), ``fiber`` and,
        for a calibrated frame with ``FCALCOV``, ``fluxcal_covariance`` (its
        `~kspec_fluxcal.covariance.CalibrationCovariance`, for
        `kspec_fluxcal.band_flux`).
    """
    path = _path(file_obj)
    frame, mask = _frame_arrays(path)
    covariance = _covariance_meta(path)
    metas = [{"header": copy_header(frame.header), "fibre": _fibre_dict(frame.fibres[i]), "fiber": i, **covariance}
             for i in range(frame.counts.shape[0])]
    wave = frame.wavelength
    if len(wave) and np.array_equal(wave, np.broadcast_to(wave[0], wave.shape)):  # one axis: one WCS, shared
        return SpectrumList(fiber_spectra(wave[0] * u.AA, frame.counts * frame.counts_unit, frame.variance, mask,
                                          metas, copy=False))  # the frame's arrays, read for these spectra
    return SpectrumList(Spectrum(spectral_axis=wave[i] * u.AA, flux=frame.counts[i] * frame.counts_unit,
                                 uncertainty=VarianceUncertainty(frame.variance[i], unit=frame.counts_unit**2),
                                 mask=mask[i].copy(), meta=meta) for i, meta in enumerate(metas))


def _covariance_meta(path):
    """``{META_KEY: covariance}`` for a calibrated frame with ``FCALCOV``, else an empty dict.

    A frame telluric-corrected with its own calibration (``TELBRID = T``) gets
    the corrected flux's covariance: no ``bridging`` where ``TELLURIC`` was
    measured (`kspec_fluxcal.containers.telluric_covariance`).
    """
    from ..containers import BRIDGING_CANCELLED, TelluricTransmission, telluric_covariance
    from ..covariance import META_KEY, read_covariance

    covariance = read_covariance(path)
    if covariance is None:
        return {}
    with fits.open(path, memmap=False) as hdul:
        if hdul[0].header.get(BRIDGING_CANCELLED) and "TELLURIC" in hdul:
            # idempotent: a copy written from such spectra holds the corrected covariance already
            covariance = telluric_covariance(covariance, TelluricTransmission.from_hdu(hdul["TELLURIC"]))
    return {META_KEY: covariance}


@data_loader(RED_FORMAT, identifier=identify_kspec_red, dtype=Spectrum, extensions=["fits", "fit"],
             priority=10, force=True, autogenerate_spectrumlist=False)
def read_red_spectrum(file_obj, **kwargs):
    """A RED frame as one 2-D `~specutils.Spectrum` (NFIB, NPIX), when the fibers share their wavelengths.

    Parameters
    ----------
    file_obj : str or Path
        The RED file (raw or calibrated).

    Returns
    -------
    `~specutils.Spectrum`
        Flux (NFIB, NPIX) in the frame's ``BUNIT``, the shared spectral axis
        (Å, air), `~astropy.nddata.VarianceUncertainty`, mask True = bad;
        ``meta`` ``header`` and ``fibres`` (the ``FIBRES`` table), and
        ``fluxcal_covariance`` as for `read_red_spectrum_list`.

    Raises
    ------
    RedFileError
        The fibers have different wavelengths (read them with
        ``SpectrumList.read(path, format="KSPEC-RED")``), or the file is no
        valid RED frame.
    """
    path = _path(file_obj)
    frame, mask = _frame_arrays(path)
    wave = frame.wavelength
    if not np.array_equal(wave, np.broadcast_to(wave[0], wave.shape)):
        spread = float(np.max(np.ptp(wave, axis=0)))
        raise RedFileError(
            f"the fibers of {path.name} have different wavelengths (up to {spread:.3g} Å apart), so they do not "
            f"form one 2-D Spectrum; read them with SpectrumList.read(path, format='{RED_FORMAT}') (one Spectrum "
            "per fiber)."
        )
    return Spectrum(
        spectral_axis=wave[0] * u.AA,
        flux=frame.counts * frame.counts_unit,
        uncertainty=VarianceUncertainty(frame.variance, unit=frame.counts_unit**2),
        mask=mask,
        meta={"header": frame.header.copy(), "fibres": frame.fibres, **_covariance_meta(path)},
    )


@data_loader(FLUXCAL_FORMAT, identifier=identify_kspec_fluxcal, dtype=Spectrum, extensions=["fits", "fit"],
             priority=10, force=True)
def read_fluxcal_spectrum(file_obj, **kwargs):
    """The combined calibration vector of a product or calibrated RED file as a 1-D `~specutils.Spectrum`.

    Parameters
    ----------
    file_obj : str or Path
        A calibration product (`kspec_fluxcal.products.save_calibration`) or
        a calibrated RED file.

    Returns
    -------
    `~specutils.Spectrum`
        See `kspec_fluxcal.containers.CalibrationVector.to_spectrum`; the
        flux is the calibration factor (e.g. erg s⁻¹ cm⁻² Å⁻¹ per ct);
        ``meta['fluxcal_covariance']`` holds the stored
        `~kspec_fluxcal.covariance.CalibrationCovariance` when there is one.
    """
    from ..covariance import META_KEY

    result = load_calibration(_path(file_obj))
    spectrum = result.combined_vector.to_spectrum()
    if result.covariance is not None:
        spectrum.meta[META_KEY] = result.covariance
    return spectrum


def _fibres_table(fibres, n):
    if fibres is None:
        return Table({"TYPE": ["U"] * n, "NAME": [f"fiber{i}" for i in range(n)]})
    table = fibres if isinstance(fibres, Table) else Table(rows=list(fibres))
    if len(table) != n:
        raise InputDataError(f"the FIBRES table in meta has {len(table)} rows for {n} spectra.")
    if "TYPE" not in table.colnames:
        table = table.copy()
        table["TYPE"] = ["U"] * n
    return table


def red_hdulist(flux, variance, wavelength, mask, header=None, fibres=None):
    """The HDUs of a RED frame.

    Parameters
    ----------
    flux : `~astropy.units.Quantity`, shape (NFIB, NPIX)
        Counts or calibrated flux.
    variance : `~astropy.units.Quantity` or None
        Its variance (unit squared); None writes NaN, so every pixel reads
        back as masked.
    wavelength : `~astropy.units.Quantity`, shape (NPIX,) or (NFIB, NPIX)
        Wavelengths (written in Å).
    mask : ndarray of bool or None
        True = bad. A ``MASK`` extension (uint8, 1 = bad) is written when
        some masked pixel has finite flux and variance.
    header : `~astropy.io.fits.Header` or dict, optional
        PRIMARY header cards to keep (structural keys are rewritten).
    fibres : `~astropy.table.Table` or list of dict, optional
        The ``FIBRES`` rows; default ``TYPE='U'`` and ``NAME='fiber<i>'``.

    Returns
    -------
    `~astropy.io.fits.HDUList`
    """
    flux = u.Quantity(flux)
    values = np.asarray(flux.value, dtype=float)
    if values.ndim != 2:
        raise InputDataError(f"a RED frame needs 2-D flux (NFIB, NPIX); got shape {values.shape}.")
    if variance is None:
        var = np.full(values.shape, np.nan)
    else:
        var = u.Quantity(variance).to_value(flux.unit**2)
    wave = u.Quantity(wavelength, u.AA).to_value(u.AA)
    primary_header = fits.Header()
    for card in fits.Header(header or {}).cards:
        if card.keyword not in _STRUCTURAL:
            primary_header.append(card)
    primary_header["BUNIT"] = fits_unit_string(flux.unit)
    hdus = [fits.PrimaryHDU(values, header=primary_header)]
    hdus.append(fits.ImageHDU(var, name="VARIANCE"))
    hdus[-1].header["BUNIT"] = fits_unit_string(flux.unit**2)
    hdus.append(fits.ImageHDU(wave, name="WAVELA"))
    hdus[-1].header["BUNIT"] = "Angstrom"
    fib = fits.table_to_hdu(_fibres_table(fibres, values.shape[0]))
    fib.name = "FIBRES"
    hdus.append(fib)
    if mask is not None:
        mask = np.broadcast_to(np.asarray(mask, dtype=bool), values.shape)
        with np.errstate(invalid="ignore"):
            implied = ~np.isfinite(values) | ~np.isfinite(var) | (var < 0)
        if np.any(mask & ~implied):
            hdus.append(fits.ImageHDU(mask.astype(np.uint8), name="MASK"))
            hdus[-1].header["COMMENT"] = "1 = bad pixel (kspec_fluxcal; also bad: non-finite flux or variance)"
    return fits.HDUList(hdus)


def _with_covariance(hdulist, metas):
    """``hdulist`` with ``FCALCOV`` when every spectrum carries the same calibration covariance."""
    from ..covariance import META_KEY

    covariances = {id(m.get(META_KEY)): m.get(META_KEY) for m in metas}
    if len(covariances) == 1 and None not in covariances.values():
        hdulist.append(next(iter(covariances.values())).to_hdu())
    elif any(c is not None for c in covariances.values()):
        log.warning("the spectra carry different calibration covariances; FCALCOV is not written")
    return hdulist


def _write(hdulist, path, overwrite):
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputWriteError(f"{path} exists already; pass overwrite=True to replace it.")
    write_fits_atomic(list(hdulist), path)


@custom_writer(RED_FORMAT, dtype=Spectrum, force=True)
def write_red_spectrum(spectrum, file_name, overwrite=False, **kwargs):
    """Write a 1-D or 2-D `~specutils.Spectrum` as a RED frame (atomically).

    ``meta['header']`` becomes the PRIMARY header and ``meta['fibres']`` (or,
    for a 1-D spectrum, ``meta['fibre']``) the ``FIBRES`` table. See
    `red_hdulist` for the layout; ``meta['fluxcal_covariance']`` becomes
    ``FCALCOV``.
    """
    flux = spectrum.flux
    meta = spectrum.meta or {}
    fibres = meta.get("fibres")
    if flux.ndim == 1:
        flux = flux[np.newaxis, :]
        fibres = [meta["fibre"]] if meta.get("fibre") else None
    variance = spectrum_variance(spectrum)
    if variance is not None:
        variance = variance.reshape(flux.shape)
    mask = None if spectrum.mask is None else np.asarray(spectrum.mask, dtype=bool).reshape(flux.shape)
    hdul = red_hdulist(flux, variance, spectrum.spectral_axis.view(u.Quantity), mask, meta.get("header"), fibres)
    _write(_with_covariance(hdul, [meta]), file_name, overwrite)


@custom_writer(RED_FORMAT, dtype=SpectrumList, force=True)
def write_red_spectrum_list(spectra, file_name, overwrite=False, **kwargs):
    """Write a `~specutils.SpectrumList` of 1-D fibers (all of one length and flux unit) as a RED frame.

    The first fiber's ``meta['header']`` becomes the PRIMARY header; each
    fiber's ``meta['fibre']`` its ``FIBRES`` row; each fiber keeps its own
    wavelengths (``WAVELA`` of shape (NFIB, NPIX)). A calibration covariance
    that every fiber carries (``meta['fluxcal_covariance']``, the same one)
    is written as ``FCALCOV``.
    """
    if len(spectra) == 0:
        raise InputDataError("the SpectrumList is empty; there is no frame to write.")
    shapes = {s.flux.shape for s in spectra}
    if len(shapes) != 1 or spectra[0].flux.ndim != 1:
        raise InputDataError(
            f"a RED frame holds 1-D fibers of one length; these spectra have shapes {sorted(shapes)}. "
            "Resample them onto one grid first (e.g. specutils FluxConservingResampler)."
        )
    unit = spectra[0].flux.unit
    flux = u.Quantity([s.flux.to(unit) for s in spectra])
    variances = [spectrum_variance(s) for s in spectra]
    variance = None if any(v is None for v in variances) else u.Quantity([v.to(unit**2) for v in variances])
    wave = u.Quantity([s.spectral_axis.to(u.AA).view(u.Quantity) for s in spectra])
    mask = np.array([np.zeros(s.flux.shape, bool) if s.mask is None else np.asarray(s.mask, bool) for s in spectra])
    metas = [s.meta or {} for s in spectra]
    fibres = [m["fibre"] for m in metas] if all(m.get("fibre") for m in metas) else None
    hdul = red_hdulist(flux, variance, wave, mask, metas[0].get("header"), fibres)
    _write(_with_covariance(hdul, metas), file_name, overwrite)
