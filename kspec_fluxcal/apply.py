"""Apply a calibration to every fiber of a frame, propagating the variance.

For counts C with variance V and a calibration K with variance V_K, the
calibrated flux is F = C·K with variance V_F = V·K² + C²·V_K (first order,
independent errors). Where the calibration is undefined the result is NaN,
never 0.
"""

import numpy as np
from astropy import units as u

from .containers import FLAM, CalibrationVector, FluxCalibrationResult, is_spectrum, spectrum_variance
from .covariance import META_KEY as COVARIANCE_KEY
from .exceptions import InputDataError
from .io.fiber_spectra import fiber_spectra
from .io.header import copy_header, update_calibration_header
from .wavelength import interpolate_masked

__all__ = ["apply_flux_calibration", "calibrate_spectra", "calibration_on_grid", "fiber_blocks"]


def calibration_on_grid(calibration, wavelength):
    """Interpolate a calibration vector onto ``wavelength`` (any shape, Å).

    Returns (factor, variance, mask) as plain arrays in the vector's unit; a
    pixel that touches a masked sample of the vector, or lies outside it, is
    masked.
    """
    wave = u.Quantity(wavelength, u.AA).to_value(u.AA)
    bad = calibration.mask | ~np.isfinite(calibration.cal_factor.value) | ~np.isfinite(calibration.cal_variance.value)
    (factor, variance), out_bad = interpolate_masked(wave, calibration.wavelength.to_value(u.AA),
                                                     [calibration.cal_factor.value, calibration.cal_variance.value],
                                                     bad)
    return factor, variance, out_bad


def apply_flux_calibration(spectra, variance=None, calibration=None, wavelength=None, update_header=None,
                           counts_unit=None):
    """Calibrate a frame of spectra.

    The documented path is specutils: ``apply_flux_calibration(spectrum, calibration)``
    with a 1-D or 2-D (fibers × pixels) `~specutils.Spectrum` or a
    `~specutils.SpectrumList` returns the same kind of object (see
    `calibrate_spectra`; the second positional
    argument is then the calibration). Arrays and Quantities are accepted as
    below and return ``(flux, flux_variance)``.

    Parameters
    ----------
    spectra : `~specutils.Spectrum`, `~specutils.SpectrumList`, `~astropy.units.Quantity` or ndarray
        Counts (ct or ct/s, matching the calibration's denominator), shape
        (NFIB, NPIX) or (NPIX, NFIB) for arrays. Plain arrays take
        ``counts_unit`` (default: the calibration's denominator).
    variance : `~astropy.units.Quantity` or ndarray
        Variance of array ``spectra``, same shape. (For a spectrum: the
        calibration, when ``calibration`` is not given.)
    calibration : `~kspec_fluxcal.containers.CalibrationVector` or `~kspec_fluxcal.containers.FluxCalibrationResult`
        The calibration (a result's combined vector is used).
    wavelength : `~astropy.units.Quantity` or ndarray, optional
        Each fiber's wavelengths (same shape as ``spectra``) or one shared axis
        (NPIX,), Å. Default: the calibration's own grid, which then must have
        NPIX samples.
    update_header : `~astropy.io.fits.Header`, optional
        Receives ``FLUXCAL``, ``BUNIT``, ``FCALNSTR``, ``FCALRMS``.
    counts_unit : str or `~astropy.units.Unit`, optional
        Unit of plain-array counts.

    Returns
    -------
    flux, flux_variance : `~astropy.units.Quantity`
        Same shape and layout as ``spectra``, in erg s⁻¹ cm⁻² Å⁻¹ (and its
        square); NaN where the calibration is undefined or the input is not
        finite. For `~specutils.Spectrum` / `~specutils.SpectrumList` input,
        one object of the same kind instead.
    """
    if is_spectrum(spectra) or is_spectrum(spectra, "SpectrumList"):
        return calibrate_spectra(spectra, variance if calibration is None else calibration)
    result = calibration if isinstance(calibration, FluxCalibrationResult) else None
    if result is not None:
        calibration = result.combined_vector
    if not isinstance(calibration, CalibrationVector):
        raise InputDataError("calibration must be a CalibrationVector or a FluxCalibrationResult.")
    cal_unit = calibration.unit
    counts_per = (FLAM / cal_unit).decompose()
    default_counts = FLAM / cal_unit
    counts = _as_counts(spectra, counts_unit or default_counts, "spectra")
    var = _as_counts(variance, counts.unit**2, "variance")
    if var.shape != counts.shape:
        raise InputDataError(f"variance has shape {var.shape} but spectra have shape {counts.shape}.")
    if counts.ndim == 1:
        counts, var = counts[None, :], var[None, :]
    if counts.ndim != 2:
        raise InputDataError(f"spectra must be 1-D or 2-D; got shape {counts.shape}.")
    out_unit = counts.unit * cal_unit
    if not out_unit.is_equivalent(FLAM):
        raise u.UnitsError(
            f"counts in '{counts.unit}' times a calibration in '{cal_unit}' is not a flux density; "
            f"the calibration expects counts in '{counts_per}'."
        )
    wave = _fiber_wavelengths(wavelength, calibration, counts.shape)
    transposed = wave.shape != counts.shape
    c = counts.value.T if transposed else counts.value
    v = var.value.T if transposed else var.value
    if wave.shape != c.shape:
        raise InputDataError(
            f"wavelength shape {wave.shape} fits neither spectra {counts.shape} nor its transpose."
        )
    flux, flux_var = np.empty(c.shape), np.empty(c.shape)
    shared = _shared_row(wave)
    on_grid = calibration_on_grid(calibration, shared) if shared is not None else None
    for rows in fiber_blocks(c.shape):
        factor, fvar, bad = on_grid if on_grid is not None else calibration_on_grid(calibration, wave[rows])
        cb, vb = np.asarray(c[rows], dtype=float), np.asarray(v[rows], dtype=float)
        bad = bad | ~np.isfinite(cb) | ~np.isfinite(vb) | (vb < 0)
        flux[rows] = np.where(bad, np.nan, cb * factor)
        flux_var[rows] = np.where(bad, np.nan, vb * factor**2 + cb**2 * fvar)
    if transposed:
        flux, flux_var = flux.T, flux_var.T
    if spectra is not None and np.ndim(spectra) == 1:
        flux, flux_var = flux[0], flux_var[0]
    scale = out_unit.to(FLAM)
    if update_header is not None:
        update_calibration_header(update_header, result or calibration)
    flux *= scale
    flux_var *= scale**2
    return u.Quantity(flux, FLAM, copy=False), u.Quantity(flux_var, FLAM**2, copy=False)


BLOCK_VALUES = 1 << 21
"""Values (fibers × pixels) of one block of `fiber_blocks`: 16 MB per float64 temporary."""


def fiber_blocks(shape, values=BLOCK_VALUES):
    """Row slices of a (NFIB, NPIX) array, each of at most ``values`` values (at least one fiber).

    Frames are calibrated block by block, so that no step holds a
    (fibers × pixels) float64 temporary of a whole frame.
    """
    n_fib, n_pix = shape
    step = max(1, values // max(1, n_pix))
    return [slice(lo, min(lo + step, n_fib)) for lo in range(0, n_fib, step)]


def _shared_row(wave):
    """The one wavelength row of a (NFIB, NPIX) array broadcast from a shared axis, else None."""
    if wave.ndim == 2 and wave.strides[0] == 0:
        return wave[0]
    return None


def _as_counts(value, unit, name):
    """``value`` as a Quantity, not copied (converted to float block by block)."""
    if isinstance(value, u.Quantity):
        return value if value.dtype.kind == "f" else value.astype(float)
    value = np.asarray(value)
    return u.Quantity(value if value.dtype.kind == "f" else value.astype(float), unit, copy=False)


def _fiber_wavelengths(wavelength, calibration, shape):
    """A (NFIB, NPIX)-like wavelength array for the counts of ``shape``."""
    if wavelength is None:
        wave = calibration.wavelength.to_value(u.AA)
    else:
        wave = u.Quantity(wavelength, u.AA).to_value(u.AA)
    if wave.ndim == 1:
        if shape[-1] == wave.size:
            return np.broadcast_to(wave, shape)
        if shape[0] == wave.size:
            return np.broadcast_to(wave, shape[::-1])
        raise InputDataError(
            f"a shared wavelength axis of {wave.size} samples fits neither axis of spectra {shape}."
        )
    return wave


def _as_calibration(calibration):
    if is_spectrum(calibration):
        vector = CalibrationVector.from_spectrum(calibration)
        covariance = (calibration.meta or {}).get(COVARIANCE_KEY)
        return vector if covariance is None else FluxCalibrationResult(vector, covariance=covariance)
    if isinstance(calibration, (CalibrationVector, FluxCalibrationResult)):
        return calibration
    raise InputDataError(
        "calibration must be a CalibrationVector, a FluxCalibrationResult or a calibration Spectrum "
        f"(Spectrum.read(path, format='KSPEC-FLUXCAL')); got {type(calibration).__name__}."
    )


def _for_units(calibration, counts_unit, header):
    """The calibration in the unit the counts need (per ct ↔ per ct/s by the exposure times)."""
    if not isinstance(calibration, FluxCalibrationResult):
        return calibration
    from .products import calibration_for_frame, header_exptime

    return calibration_for_frame(calibration, counts_unit, header_exptime(header or {}))


def _check_spectrum(spectrum):
    if not is_spectrum(spectrum):
        raise InputDataError(f"every element of a SpectrumList must be a Spectrum; got {type(spectrum).__name__}.")
    if spectrum.flux.ndim not in (1, 2):
        raise InputDataError(f"a Spectrum to calibrate must be 1-D or 2-D (fibers, pixels); got {spectrum.flux.shape}.")


def _spectrum_variance_or_zero(spectrum):
    """The spectrum's variance Quantity; zero when it has no uncertainty."""
    variance = spectrum_variance(spectrum)
    return np.zeros(spectrum.flux.shape) * spectrum.flux.unit**2 if variance is None else variance


def _wrap(spectrum, flux, flux_var, calibration):
    """The calibrated `~specutils.Spectrum` of ``spectrum`` from its calibrated flux and variance."""
    meta = dict(spectrum.meta or {})
    mask = ~np.isfinite(flux.value) | ~np.isfinite(flux_var.value)
    if spectrum.mask is not None:
        mask |= np.asarray(spectrum.mask, dtype=bool)
    if meta.get("header") is not None:
        meta["header"] = update_calibration_header(meta["header"].copy(), calibration)
    meta.pop(COVARIANCE_KEY, None)
    if getattr(calibration, "covariance", None) is not None:
        meta[COVARIANCE_KEY] = calibration.covariance
    from astropy.nddata import VarianceUncertainty
    from specutils import Spectrum

    return Spectrum(
        spectral_axis=spectrum.spectral_axis.view(u.Quantity).to(u.AA),
        flux=flux,
        uncertainty=VarianceUncertainty(flux_var.value, unit=flux_var.unit),
        mask=mask,
        meta=meta,
    )


def _calibrate_one(spectrum, calibration):
    _check_spectrum(spectrum)
    calibration = _for_units(calibration, spectrum.flux.unit, (spectrum.meta or {}).get("header"))
    wave = spectrum.spectral_axis.view(u.Quantity).to(u.AA)
    variance = _spectrum_variance_or_zero(spectrum)
    flux, flux_var = apply_flux_calibration(spectrum.flux, variance, calibration, wavelength=wave)
    return _wrap(spectrum, flux, flux_var, calibration)


def _axis_aa(spectrum):
    """A fiber's spectral-axis values in Å (no copy when the axis is in Å already)."""
    axis = spectrum.spectral_axis
    return axis.view(np.ndarray) if axis.unit == u.AA else axis.view(u.Quantity).to_value(u.AA)


def _list_wavelengths(spectra):
    """The fibers' wavelengths (Å): one shared row when every fiber has the same axis, else (NFIB, NPIX)."""
    rows = [_axis_aa(s) for s in spectra]
    if all(row is rows[0] or np.array_equal(row, rows[0]) for row in rows):
        return rows[0]
    return np.stack(rows)


def _rows(arrays):
    """The (N, NPIX) array of the 1-D ``arrays``: read-only, without a copy when they are the rows of one array.

    Fibers read or calibrated as one frame (`~kspec_fluxcal.io.fiber_spectra.fiber_spectra`) hold views of the
    rows of one array; stacking them would copy it.
    """
    first = arrays[0]
    root = first
    while isinstance(root.base, np.ndarray):
        root = root.base
    step = first.nbytes
    start = first.__array_interface__["data"][0]
    low = root.__array_interface__["data"][0]
    high = low + root.nbytes
    if (
        root.flags.c_contiguous and first.ndim == 1 and first.flags.c_contiguous and step
        and low <= start and start + step * len(arrays) <= high
        and all(a.dtype == first.dtype and a.shape == first.shape and a.flags.c_contiguous
                and a.__array_interface__["data"][0] == start + i * step for i, a in enumerate(arrays))
    ):
        return np.lib.stride_tricks.as_strided(first, shape=(len(arrays), first.size),
                                               strides=(step, first.itemsize), writeable=False)
    return np.stack(arrays)


def _list_variance(spectra, unit):
    """(NFIB, NPIX) variance values of the fibers in ``unit`` (zero where a fiber has no uncertainty)."""
    from astropy.nddata import VarianceUncertainty  # the fibers are Spectrum objects: imported already

    return _rows([
        s.uncertainty.array if isinstance(s.uncertainty, VarianceUncertainty) and s.uncertainty.unit == unit
        else _spectrum_variance_or_zero(s).to_value(unit) for s in spectra
    ])


class _Headers:
    """Calibrated copies of the fibers' headers, each distinct header updated once.

    Fibers read from one frame carry copies of the same header; updating a
    FITS header card by card costs more than copying it, so a header equal
    (as FITS text) to one seen before gets a copy (`copy_header`) of that
    one's update.
    """

    def __init__(self, calibration):
        self.calibration = calibration
        self.updated = {}

    def __call__(self, header):
        text = header.tostring()
        if text not in self.updated:
            self.updated[text] = update_calibration_header(copy_header(header), self.calibration)
        return copy_header(self.updated[text])


def _calibrate_list(spectra, calibration):
    """Fibers of one length and unit are calibrated as one stack; others one by one.

    For the stack, masks and NaN checks are made on the whole stack. Fibers
    on one axis (a frame's) become `~kspec_fluxcal.io.fiber_spectra.fiber_spectra`,
    on the first fiber's spectral axis and WCS when it is in Å (the
    calibration leaves the axis as it is); otherwise each calibrated
    `~specutils.Spectrum` reuses its input fiber's axis and WCS when in Å, so
    specutils does not build a WCS per fiber.
    """
    for spectrum in spectra:
        _check_spectrum(spectrum)
    first = spectra[0] if len(spectra) else None
    vector = calibration.combined_vector if isinstance(calibration, FluxCalibrationResult) else calibration
    stackable = first is not None and all(
        s.data.ndim == 1 and s.data.shape == first.data.shape and s.unit == first.unit for s in spectra
    ) and (first.flux.unit * vector.unit).is_equivalent(FLAM)  # no per-fiber exposure-time conversion needed
    if not stackable:
        return type(spectra)([_calibrate_one(s, calibration) for s in spectra])
    from astropy.nddata import VarianceUncertainty
    from specutils import Spectrum

    unit = first.flux.unit
    flux = u.Quantity(_rows([s.data for s in spectra]), unit, copy=False)
    variance = u.Quantity(_list_variance(spectra, unit**2), unit**2, copy=False)
    wavelength = _list_wavelengths(spectra)
    out_flux, out_var = apply_flux_calibration(flux, variance, calibration, wavelength=wavelength)
    bad = ~np.isfinite(out_flux.value) | ~np.isfinite(out_var.value)
    headers = _Headers(calibration)
    covariance = getattr(calibration, "covariance", None)
    metas = []
    for s in spectra:
        meta = dict(s.meta or {})
        if meta.get("header") is not None:
            meta["header"] = headers(meta["header"])
        meta.pop(COVARIANCE_KEY, None)
        if covariance is not None:
            meta[COVARIANCE_KEY] = covariance
        metas.append(meta)
    if all(s.mask is not None for s in spectra):
        masks = bad | _rows([np.asarray(s.mask, dtype=bool) for s in spectra])
    else:
        masks = np.stack([bad[i] if s.mask is None else bad[i] | np.asarray(s.mask, dtype=bool)
                          for i, s in enumerate(spectra)])
    if wavelength.ndim == 1:  # one axis: the fibers share the first one's (its WCS too, when in Å)
        axis = first.spectral_axis
        wcs = first.wcs if axis.unit == u.AA else None
        return type(spectra)(fiber_spectra(axis if wcs is not None else wavelength * u.AA, out_flux, out_var.value,
                                           masks, metas, wcs=wcs, copy=False))  # fresh arrays: no copies
    out, built = [], None
    for i, s in enumerate(spectra):
        if s.spectral_axis.unit == u.AA:
            axis = {"spectral_axis": s.spectral_axis, "wcs": s.wcs}
        elif built is not None and np.array_equal(built.spectral_axis.value, s.spectral_axis.to_value(u.AA)):
            axis = {"spectral_axis": built.spectral_axis, "wcs": built.wcs}
        else:
            axis = {"spectral_axis": s.spectral_axis.view(u.Quantity).to(u.AA)}
        # the variance's unit (the flux unit squared) comes from the spectrum, saving a unit conversion per fiber
        spectrum = Spectrum(flux=out_flux[i], uncertainty=VarianceUncertainty(out_var.value[i]), mask=masks[i],
                            meta=metas[i], **axis)
        if "wcs" not in axis:
            built = spectrum
        out.append(spectrum)
    return type(spectra)(out)


def calibrate_spectra(spectra, calibration):
    """Calibrate a `~specutils.Spectrum` (1-D, or 2-D fibers × pixels) or a `~specutils.SpectrumList`.

    Parameters
    ----------
    spectra : `~specutils.Spectrum` or `~specutils.SpectrumList`
        Counts (ct, electron, adu … or per second) on a wavelength axis.
        The variance is taken from the uncertainty (none counts as zero).
        Fibers of a list that share length and unit are calibrated as one
        stack.
    calibration : `~kspec_fluxcal.containers.CalibrationVector`, `~kspec_fluxcal.containers.FluxCalibrationResult` \
or `~specutils.Spectrum`
        The calibration. A result is converted between per count and per
        count/s with the exposure time of ``meta['header']`` (``EXPTIME``)
        when the units need it.

    Returns
    -------
    `~specutils.Spectrum` or `~specutils.SpectrumList`
        The same kind as ``spectra``: flux in erg s⁻¹ cm⁻² Å⁻¹ (NaN where
        the calibration is undefined), `~astropy.nddata.VarianceUncertainty`
        propagated, mask True where the input was masked or the result is
        undefined; ``meta`` copied, with ``meta['header']`` (when present)
        carrying ``FLUXCAL``, ``BUNIT``, ``FCALNSTR``, ``FCALRMS``, and
        ``meta['fluxcal_covariance']`` the calibration's
        `~kspec_fluxcal.covariance.CalibrationCovariance` when the
        calibration is a result that has one (for `kspec_fluxcal.band_flux`).
    """
    calibration = _as_calibration(calibration)
    if is_spectrum(spectra, "SpectrumList"):
        return _calibrate_list(spectra, calibration)
    return _calibrate_one(spectra, calibration)
