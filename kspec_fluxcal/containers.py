"""Unit-safe containers: spectra, photometry, filters, templates and calibrations.

Observed and template spectra are `specutils.Spectrum` objects with a
spectral axis in Å (air), flux with units, a `~astropy.nddata.VarianceUncertainty`
and a boolean mask where **True marks a bad pixel** (the astropy convention).
The dataclasses below validate themselves on creation and name the field at
fault in every error.
"""

import json
import sys
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from .exceptions import InputDataError
from .io.header import set_card
from .io.units import read_fits_table, table_to_fits_hdu
from .wavelength import as_wavelength

__all__ = [
    "FLAM",
    "make_spectrum",
    "ArraySpectrum",
    "ArrayVariance",
    "is_spectrum",
    "validate_spectrum",
    "spectrum_variance",
    "Photometry",
    "FilterCurve",
    "StellarTemplate",
    "CalibrationVector",
    "FluxCalibrationResult",
    "TelluricTransmission",
    "BRIDGING_CANCELLED",
    "measured_on_grid",
    "telluric_covariance",
]

FLAM = u.erg / (u.s * u.cm**2 * u.AA)
"""Flux density unit of calibrated spectra: erg s⁻¹ cm⁻² Å⁻¹."""


def _as_quantity(value, unit, name):
    """Return ``value`` as a Quantity; a plain array takes ``unit``."""
    if isinstance(value, u.Quantity):
        return value
    if unit is None:
        raise InputDataError(f"{name} has no unit; pass a Quantity or give its unit.")
    return np.asarray(value, dtype=float) * u.Unit(unit)


def make_spectrum(wavelength, flux, variance=None, mask=None, flux_unit=None, meta=None, light=False):
    """Build a `~specutils.Spectrum` that follows the package conventions.

    Parameters
    ----------
    wavelength : `~astropy.units.Quantity` or array_like
        Increasing wavelengths (Å, nm or µm; plain arrays are taken as Å, air).
    flux : `~astropy.units.Quantity` or array_like
        Flux, same length as ``wavelength``. Plain arrays need ``flux_unit``.
    variance : `~astropy.units.Quantity` or array_like, optional
        Variance of ``flux`` in flux unit squared.
    mask : array_like of bool, optional
        True marks a bad pixel.
    flux_unit : str or `~astropy.units.Unit`, optional
        Unit of a plain-array ``flux`` (``variance`` gets its square).
    meta : dict, optional
        Stored on the spectrum.
    light : bool, optional
        Return an `ArraySpectrum` (same attributes, no specutils import)
        instead, for spectra made only to be calibrated.

    Returns
    -------
    `~specutils.Spectrum` or `ArraySpectrum`
        Spectral axis in Å; `~astropy.nddata.VarianceUncertainty`; boolean mask.

    Examples
    --------
    >>> import numpy as np
    >>> spec = make_spectrum(np.linspace(400, 500, 5) * u.nm, np.ones(5), flux_unit="ct")
    >>> spec.spectral_axis.unit, spec.mask.any()
    (Unit("Angstrom"), np.False_)
    """
    wave = as_wavelength(wavelength, "wavelength")
    flux = _as_quantity(flux, flux_unit, "flux")
    if flux.shape != wave.shape:
        raise InputDataError(
            f"flux has shape {flux.shape} but wavelength has shape {wave.shape}; "
            "they must match."
        )
    uncertainty = None
    if variance is not None:
        var = _as_quantity(variance, flux.unit**2, "variance")
        if var.shape != wave.shape:
            raise InputDataError(
                f"variance has shape {var.shape} but wavelength has shape {wave.shape}."
            )
        try:
            var = var.to(flux.unit**2)
        except u.UnitConversionError as exc:
            raise InputDataError(
                f"variance unit '{var.unit}' is not the square of the flux unit "
                f"'{flux.unit}'."
            ) from exc
        uncertainty = (var.value, flux.unit**2)
    if mask is None:
        mask = np.zeros(wave.shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != wave.shape:
        raise InputDataError(f"mask has shape {mask.shape} but wavelength has shape {wave.shape}.")
    if light:
        variance = None if uncertainty is None else ArrayVariance(*uncertainty)
        return ArraySpectrum(wave * u.AA, flux, variance, mask.copy(), dict(meta or {}))
    from astropy.nddata import VarianceUncertainty
    from specutils import Spectrum

    if uncertainty is not None:
        uncertainty = VarianceUncertainty(*uncertainty)

    return Spectrum(
        spectral_axis=wave * u.AA,
        flux=flux,
        uncertainty=uncertainty,
        mask=mask.copy(),
        meta=dict(meta or {}),
    )


@dataclass(frozen=True)
class ArrayVariance:
    """The variance of an `ArraySpectrum`: what the stages read of a `~astropy.nddata.VarianceUncertainty`.

    A process that only calibrates does not import astropy.nddata (with astropy.wcs and
    astropy.coordinates, a few tenths of a second).

    Attributes
    ----------
    array : ndarray
        Variance values.
    unit : `~astropy.units.Unit`
        Their unit (the flux unit squared).
    """

    array: np.ndarray
    unit: u.UnitBase


@dataclass(frozen=True)
class ArraySpectrum:
    """A 1-D spectrum in the package conventions, without specutils: what the stages read of a ``Spectrum``.

    Built by ``make_spectrum(..., light=True)`` where a process makes
    spectra only to calibrate them (`kspec_fluxcal.pipeline`), so that it does
    not pay for importing specutils (about a second: ndcube, matplotlib,
    dask.array). Every function that accepts a `~specutils.Spectrum` for a
    standard accepts it too (`validate_spectrum` passes it through).

    Attributes
    ----------
    spectral_axis : `~astropy.units.Quantity`
        Wavelengths in Å (air), increasing.
    flux : `~astropy.units.Quantity`
        Flux.
    uncertainty : `~kspec_fluxcal.containers.ArrayVariance` or None
        Variance in flux unit squared.
    mask : ndarray of bool
        True = bad.
    meta : dict
        Anything.
    """

    spectral_axis: u.Quantity
    flux: u.Quantity
    uncertainty: object
    mask: np.ndarray
    meta: dict


def is_spectrum(obj, kind="Spectrum"):
    """True when ``obj`` is a specutils ``Spectrum`` (or, with ``kind='SpectrumList'``, a ``SpectrumList``).

    specutils is not imported for the check (it is slow to import): before it
    is imported, no spectrum exists.
    """
    specutils = sys.modules.get("specutils")
    return specutils is not None and isinstance(obj, getattr(specutils, kind))


def validate_spectrum(spectrum, name="spectrum"):
    """Return ``spectrum`` in the package conventions, converting where safe.

    Accepts `~specutils.Spectrum` (or the deprecated ``Spectrum1D``) with a
    1-D flux. A spectral axis in nm or µm is converted to Å, any uncertainty
    class is converted to a `~astropy.nddata.VarianceUncertainty`, and a
    missing mask becomes all False. A pixel axis, a decreasing axis or a
    non-spectrum raises `~kspec_fluxcal.InputDataError`.
    """
    if isinstance(spectrum, ArraySpectrum) and spectrum.flux.ndim == 1:
        return spectrum  # made by make_spectrum, in the conventions already
    if not is_spectrum(spectrum):
        raise InputDataError(
            f"{name} must be a specutils Spectrum; got {type(spectrum).__name__}. "
            "Build one with kspec_fluxcal.containers.make_spectrum."
        )
    if spectrum.flux.ndim != 1:
        raise InputDataError(
            f"{name} must hold one spectrum (1-D flux); got flux shape {spectrum.flux.shape}."
        )
    wave = as_wavelength(spectrum.spectral_axis.view(u.Quantity), f"{name}.spectral_axis")
    variance = spectrum_variance(spectrum)
    mask = spectrum.mask if spectrum.mask is not None else None
    from astropy.nddata import VarianceUncertainty  # a Spectrum exists: specutils has imported it

    if (
        spectrum.spectral_axis.unit == u.AA
        and isinstance(spectrum.uncertainty, (VarianceUncertainty, type(None)))
        and mask is not None
        and np.asarray(mask).dtype == bool
    ):
        return spectrum
    return make_spectrum(wave, spectrum.flux, variance, mask, meta=spectrum.meta)


def spectrum_variance(spectrum):
    """Variance of a spectrum's flux as a Quantity, or None when it has none.

    Converts `~astropy.nddata.StdDevUncertainty` and
    `~astropy.nddata.InverseVariance` analytically.
    """
    unc = spectrum.uncertainty
    if unc is None:
        return None
    unit = spectrum.flux.unit**2
    arr = np.asarray(unc.array, dtype=float)
    if isinstance(unc, ArrayVariance):  # made by make_spectrum, in the flux unit squared
        return arr * unit
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    if isinstance(unc, VarianceUncertainty):
        return arr * unit
    if isinstance(unc, StdDevUncertainty):
        return arr**2 * unit
    if isinstance(unc, InverseVariance):
        with np.errstate(divide="ignore"):
            return np.where(arr > 0, 1.0 / arr, np.inf) * unit
    raise InputDataError(
        f"uncertainty of type {type(unc).__name__} is not supported; use "
        "VarianceUncertainty, StdDevUncertainty or InverseVariance."
    )


@dataclass
class Photometry:
    """Broadband magnitudes of one star, in the AB system.

    Parameters
    ----------
    filter_names : list of str
        Names in the filter registry (e.g. ``'ps1_g'``, ``'gaia_bp'``).
    magnitudes, mag_errors : array_like
        AB magnitudes and their 1σ errors (mag); NaN marks a missing band.
    meta : dict
        Anything else (``ra``, ``dec``, ``objid``, ``teff_catalog`` …).
    """

    filter_names: list
    magnitudes: np.ndarray
    mag_errors: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.filter_names = [str(n) for n in self.filter_names]
        self.magnitudes = np.atleast_1d(np.asarray(_strip_mag(self.magnitudes, "magnitudes"), float))
        self.mag_errors = np.atleast_1d(np.asarray(_strip_mag(self.mag_errors, "mag_errors"), float))
        n = len(self.filter_names)
        for fname in ("magnitudes", "mag_errors"):
            if getattr(self, fname).shape != (n,):
                raise InputDataError(
                    f"Photometry.{fname} has shape {getattr(self, fname).shape} but there "
                    f"are {n} filter_names; give one value per filter."
                )
        if len(set(self.filter_names)) != n:
            raise InputDataError("Photometry.filter_names holds duplicate names.")
        bad = np.isfinite(self.mag_errors) & (self.mag_errors < 0)
        if np.any(bad):
            raise InputDataError("Photometry.mag_errors must not be negative.")

    @property
    def valid(self):
        """Boolean array: True where magnitude and error are finite and error > 0."""
        return np.isfinite(self.magnitudes) & np.isfinite(self.mag_errors) & (self.mag_errors > 0)

    def __getitem__(self, name):
        """(magnitude, error) of the band ``name``."""
        i = self.filter_names.index(name)
        return self.magnitudes[i], self.mag_errors[i]

    def select(self, names):
        """A new `Photometry` with only the bands in ``names`` that it holds."""
        idx = [self.filter_names.index(n) for n in names if n in self.filter_names]
        return Photometry(
            [self.filter_names[i] for i in idx],
            self.magnitudes[idx],
            self.mag_errors[idx],
            dict(self.meta),
        )


def _strip_mag(value, name):
    if isinstance(value, u.Quantity):
        if value.unit not in (u.mag, u.ABmag, u.dimensionless_unscaled):
            raise InputDataError(f"Photometry.{name} has unit '{value.unit}'; expected magnitudes.")
        return value.value
    return value


@dataclass
class FilterCurve:
    """A photometric band: a synphot bandpass and its magnitude system.

    Parameters
    ----------
    name : str
        Registry name.
    bandpass : `synphot.SpectralElement`
        Transmission on an air wavelength grid in Å.
    system : {'AB', 'Vega'}
        Native magnitude system of catalogue values in this band.
    vega_to_ab : float
        m_AB − m_Vega (mag); 0 for AB bands.
    source : str
        Where the curve and the offset come from.
    """

    name: str
    bandpass: object
    system: str = "AB"
    vega_to_ab: float = 0.0
    source: str = ""

    def __post_init__(self):
        from synphot import SpectralElement

        if not isinstance(self.bandpass, SpectralElement):
            raise InputDataError(
                f"FilterCurve.bandpass of '{self.name}' must be a synphot SpectralElement; "
                f"got {type(self.bandpass).__name__}."
            )
        if self.system not in ("AB", "Vega"):
            raise InputDataError(
                f"FilterCurve.system of '{self.name}' must be 'AB' or 'Vega'; got {self.system!r}."
            )
        self.vega_to_ab = float(self.vega_to_ab)
        if self.system == "AB" and self.vega_to_ab != 0.0:
            raise InputDataError(f"FilterCurve.vega_to_ab of AB band '{self.name}' must be 0.")

    @property
    def wavelength(self):
        """Wavelengths of the tabulated transmission (Å, air)."""
        return self.bandpass.waveset.to(u.AA)

    @property
    def transmission(self):
        """Transmission (0–1) at `wavelength`."""
        return self.bandpass(self.wavelength).value

    @property
    def pivot_wavelength(self):
        """Pivot wavelength (Å)."""
        return self.bandpass.pivot().to(u.AA)


def _field_quantity(value, unit, name, owner):
    """``value`` converted to ``unit``; plain arrays take ``unit``."""
    if not isinstance(value, u.Quantity):
        value = np.asarray(value, dtype=float) * u.Unit(unit)
    if value.unit == unit:
        return value
    try:
        return value.to(unit)
    except u.UnitConversionError:
        pass
    try:
        return value.to(unit, equivalencies=u.spectral_density(1 * u.AA))
    except u.UnitConversionError as exc:
        raise InputDataError(
            f"{owner}.{name} has unit '{value.unit}', which does not convert to '{unit}'."
        ) from exc


@dataclass
class StellarTemplate:
    """A synthetic stellar spectrum with its atmospheric parameters.

    ``flux`` and ``continuum`` are surface flux densities F_λ = 4πH_λ in
    erg s⁻¹ cm⁻² Å⁻¹ on ``wavelength`` (Å, air).
    """

    wavelength: u.Quantity
    flux: u.Quantity
    continuum: u.Quantity
    teff: float
    logg: float
    feh: float
    alpha_m: float = 0.0
    carbon_m: float = 0.0
    vmicro: float = None
    atmos_model: str = None
    source: str = None
    resolution: float = None

    def __post_init__(self):
        self.wavelength = as_wavelength(self.wavelength, "StellarTemplate.wavelength") * u.AA
        self.flux = _field_quantity(self.flux, FLAM, "flux", "StellarTemplate")
        if self.continuum is None:
            raise InputDataError("StellarTemplate.continuum is required (use the flux if unknown).")
        self.continuum = _field_quantity(self.continuum, FLAM, "continuum", "StellarTemplate")
        for fname in ("flux", "continuum"):
            if getattr(self, fname).shape != self.wavelength.shape:
                raise InputDataError(
                    f"StellarTemplate.{fname} has shape {getattr(self, fname).shape} but "
                    f"wavelength has shape {self.wavelength.shape}."
                )
        for pname in ("teff", "logg", "feh", "alpha_m", "carbon_m"):
            value = float(getattr(self, pname))
            if not np.isfinite(value):
                raise InputDataError(f"StellarTemplate.{pname} must be finite; got {value}.")
            setattr(self, pname, value)
        if self.teff <= 0:
            raise InputDataError(f"StellarTemplate.teff must be positive; got {self.teff}.")

    @property
    def params(self):
        """(teff, logg, feh, alpha_m) as a tuple."""
        return (self.teff, self.logg, self.feh, self.alpha_m)

    def to_spectrum(self, normalized=False):
        """The template as a `~specutils.Spectrum` (continuum-normalised if asked), its continuum in ``meta``."""
        flux = self.flux / self.continuum if normalized else self.flux
        meta = {
            "continuum": self.continuum.copy(),
            "teff": self.teff,
            "logg": self.logg,
            "feh": self.feh,
            "alpha_m": self.alpha_m,
            "source": self.source,
        }
        return make_spectrum(self.wavelength, flux, meta=meta)


CAL_META_KEYS = (
    "star_name",
    "fiber_id",
    "teff",
    "logg",
    "feh",
    "alpha_m",
    "scale_factor",
    "band_residuals",
    "chi2",
    "ndof",
    "rv_kms",
    "ebv",
)


@dataclass
class CalibrationVector:
    """Flux per count as a function of wavelength.

    Parameters
    ----------
    wavelength : `~astropy.units.Quantity`
        Wavelengths (Å, air), strictly increasing.
    cal_factor : `~astropy.units.Quantity`
        Calibration factor, e.g. erg s⁻¹ cm⁻² Å⁻¹ per ct (or per ct/s).
    cal_variance : `~astropy.units.Quantity`
        Variance of ``cal_factor`` (its unit squared).
    mask : array_like of bool
        True where the calibration is undefined or unreliable.
    smooth_factor : `~astropy.units.Quantity`, optional
        A smooth representation of ``cal_factor`` (same unit), free of line
        residuals; used in preference when present.
    smooth_variance : `~astropy.units.Quantity`, optional
        Variance of ``smooth_factor``.
    meta : dict
        ``star_name``, ``fiber_id``, ``teff``, ``logg``, ``feh``, ``alpha_m``,
        ``scale_factor``, ``band_residuals``, ``chi2``, ``ndof``, ``rv_kms``,
        ``ebv`` and anything else worth keeping.
    """

    wavelength: u.Quantity
    cal_factor: u.Quantity
    cal_variance: u.Quantity
    mask: np.ndarray = None
    smooth_factor: u.Quantity = None
    smooth_variance: u.Quantity = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        owner = "CalibrationVector"
        self.wavelength = as_wavelength(self.wavelength, f"{owner}.wavelength") * u.AA
        n = self.wavelength.shape
        if not isinstance(self.cal_factor, u.Quantity):
            raise InputDataError(
                f"{owner}.cal_factor must be a Quantity (e.g. erg / (Angstrom s cm2 ct))."
            )
        unit = self.cal_factor.unit
        if self.cal_factor.shape != n:
            raise InputDataError(
                f"{owner}.cal_factor has shape {self.cal_factor.shape} but wavelength has shape {n}."
            )
        self.cal_variance = _field_quantity(self.cal_variance, unit**2, "cal_variance", owner)
        if self.cal_variance.shape != n:
            raise InputDataError(
                f"{owner}.cal_variance has shape {self.cal_variance.shape} but wavelength has shape {n}."
            )
        if self.mask is None:
            self.mask = ~(np.isfinite(self.cal_factor.value) & (self.cal_factor.value > 0))
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.shape != n:
            raise InputDataError(f"{owner}.mask has shape {self.mask.shape} but wavelength has shape {n}.")
        if self.smooth_factor is not None:
            self.smooth_factor = _field_quantity(self.smooth_factor, unit, "smooth_factor", owner)
            if self.smooth_factor.shape != n:
                raise InputDataError(f"{owner}.smooth_factor has shape {self.smooth_factor.shape}, not {n}.")
            if self.smooth_variance is None:
                raise InputDataError(f"{owner}.smooth_variance is required with smooth_factor.")
            self.smooth_variance = _field_quantity(self.smooth_variance, unit**2, "smooth_variance", owner)
            if self.smooth_variance.shape != n:
                raise InputDataError(f"{owner}.smooth_variance has shape {self.smooth_variance.shape}, not {n}.")
        elif self.smooth_variance is not None:
            raise InputDataError(f"{owner}.smooth_variance given without smooth_factor.")
        if np.any(self.cal_variance.value[~self.mask] < 0):
            raise InputDataError(f"{owner}.cal_variance must not be negative on unmasked pixels.")

    @property
    def unit(self):
        """Unit of the calibration factor."""
        return self.cal_factor.unit

    def best(self, smooth=None):
        """(factor, variance) of the smooth form when present (or asked), else per pixel."""
        use_smooth = self.smooth_factor is not None if smooth is None else smooth
        if use_smooth:
            if self.smooth_factor is None:
                raise InputDataError("this CalibrationVector has no smooth form; use smooth=False.")
            return self.smooth_factor, self.smooth_variance
        return self.cal_factor, self.cal_variance

    def to_table(self):
        """The vector as an `~astropy.table.Table` (columns with units, meta kept)."""
        table = Table()
        table["WAVELENGTH"] = self.wavelength
        table["CAL_FACTOR"] = self.cal_factor
        table["CAL_VARIANCE"] = self.cal_variance
        table["MASK"] = self.mask
        if self.smooth_factor is not None:
            table["SMOOTH_FACTOR"] = self.smooth_factor
            table["SMOOTH_VARIANCE"] = self.smooth_variance
        table.meta["CALMETA"] = json.dumps(jsonable(self.meta))
        return table

    def to_spectrum(self):
        """The vector as a `~specutils.Spectrum`, without loss.

        Returns
        -------
        `~specutils.Spectrum`
            Spectral axis: ``wavelength`` (Å, air); flux: ``cal_factor``;
            uncertainty: `~astropy.nddata.VarianceUncertainty` of
            ``cal_variance``; mask: ``mask`` (True = bad). ``meta`` holds
            ``calibration_meta`` (this vector's ``meta``) and, when present,
            ``smooth_factor`` and ``smooth_variance`` (Quantities).
        """
        meta = {"calibration_meta": dict(self.meta)}
        if self.smooth_factor is not None:
            meta["smooth_factor"] = self.smooth_factor.copy()
            meta["smooth_variance"] = self.smooth_variance.copy()
        from astropy.nddata import VarianceUncertainty
        from specutils import Spectrum

        return Spectrum(
            spectral_axis=self.wavelength.copy(),
            flux=self.cal_factor.copy(),
            uncertainty=VarianceUncertainty(self.cal_variance.value.copy(), unit=self.cal_variance.unit),
            mask=self.mask.copy(),
            meta=meta,
        )

    @classmethod
    def from_spectrum(cls, spectrum):
        """Inverse of `to_spectrum`; any 1-D `~specutils.Spectrum` of flux per count is accepted.

        A spectrum without uncertainty gets zero variance; one without mask
        is masked where its flux is not finite and positive. Standard
        deviations and inverse variances are converted to variances.
        """
        if not is_spectrum(spectrum) or spectrum.flux.ndim != 1:
            raise InputDataError(
                "CalibrationVector.from_spectrum needs a 1-D specutils Spectrum (flux per count on a wavelength axis)."
            )
        variance = spectrum_variance(spectrum)
        if variance is None:
            variance = np.zeros(spectrum.flux.shape) * spectrum.flux.unit**2
        meta = dict(spectrum.meta or {})
        return cls(
            wavelength=spectrum.spectral_axis.view(u.Quantity),
            cal_factor=spectrum.flux.copy(),
            cal_variance=variance,
            mask=None if spectrum.mask is None else np.asarray(spectrum.mask, dtype=bool).copy(),
            smooth_factor=meta.get("smooth_factor"),
            smooth_variance=meta.get("smooth_variance"),
            meta=dict(meta.get("calibration_meta", {})),
        )

    @classmethod
    def from_table(cls, table):
        """Inverse of `to_table`."""
        cols = table.colnames
        smooth = "SMOOTH_FACTOR" in cols
        meta = json.loads(table.meta.get("CALMETA", "{}"))
        return cls(
            wavelength=u.Quantity(table["WAVELENGTH"]),
            cal_factor=u.Quantity(table["CAL_FACTOR"]),
            cal_variance=u.Quantity(table["CAL_VARIANCE"]),
            mask=np.asarray(table["MASK"], dtype=bool),
            smooth_factor=u.Quantity(table["SMOOTH_FACTOR"]) if smooth else None,
            smooth_variance=u.Quantity(table["SMOOTH_VARIANCE"]) if smooth else None,
            meta=meta,
        )


def jsonable(obj):
    """Convert numpy scalars/arrays and Quantities inside ``obj`` for JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, u.Quantity):
        return {"value": jsonable(obj.value), "unit": obj.unit.to_string()}
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return repr(obj)
    return obj


@dataclass
class FluxCalibrationResult:
    """The outcome of calibrating one exposure.

    Parameters
    ----------
    combined_vector : `CalibrationVector`
        The calibration applied to the fibers.
    per_star_vectors : list of `CalibrationVector`
        One per standard star that reached the combination.
    per_star_residuals : list of `~astropy.units.Quantity`
        Each star's fractional deviation from the combined vector.
    summary : dict
        ``n_stars_used``, ``n_stars_rejected``, ``rms_scatter``,
        ``wavelength_range``, ``per_star_metrics`` and provenance.
    telluric : `~kspec_fluxcal.telluric.TelluricTransmission`, optional
        The exposure's telluric transmission, when measured (``TELLURIC``
        extension on disk).
    covariance : `~kspec_fluxcal.covariance.CalibrationCovariance`, optional
        The combined vector's error with its correlations over wavelength
        (``FCALCOV`` extension on disk); None when not known.
    """

    combined_vector: CalibrationVector
    per_star_vectors: list = field(default_factory=list)
    per_star_residuals: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    telluric: object = None
    covariance: object = None

    def __post_init__(self):
        if not isinstance(self.combined_vector, CalibrationVector):
            raise InputDataError("FluxCalibrationResult.combined_vector must be a CalibrationVector.")
        for i, vec in enumerate(self.per_star_vectors):
            if not isinstance(vec, CalibrationVector):
                raise InputDataError(
                    f"FluxCalibrationResult.per_star_vectors[{i}] is a {type(vec).__name__}, "
                    "not a CalibrationVector."
                )
        if self.per_star_residuals and len(self.per_star_residuals) != len(self.per_star_vectors):
            raise InputDataError(
                "FluxCalibrationResult.per_star_residuals must have one entry per star vector."
            )

    def to_hdulist(self):
        """The result as FITS HDUs: ``FLUXCAL``, then ``FCALVEC`` per star, ``FCALSUM``, ``TELLURIC``, ``FCALCOV``."""
        hdus = fits.HDUList([fits.PrimaryHDU()])
        combined = table_to_fits_hdu(self.combined_vector.to_table(), "FLUXCAL")
        hdus.append(combined)
        for i, vec in enumerate(self.per_star_vectors):
            table = vec.to_table()
            if self.per_star_residuals:
                table["RESIDUAL"] = u.Quantity(self.per_star_residuals[i]).to_value(u.one)
            hdu = table_to_fits_hdu(table, "FCALVEC")
            hdu.ver = i + 1
            hdus.append(hdu)
        summary = fits.table_to_hdu(Table({"SUMMARY_JSON": [json.dumps(jsonable(self.summary))]}))
        summary.name = "FCALSUM"
        hdus.append(summary)
        if self.telluric is not None:
            hdus.append(self.telluric.to_hdu())
        if self.covariance is not None:
            hdus.append(self.covariance.to_hdu())
        return hdus

    @classmethod
    def from_hdulist(cls, hdulist):
        """Inverse of `to_hdulist` (accepts an HDUList or a file name)."""
        if not isinstance(hdulist, fits.HDUList):
            with fits.open(hdulist) as opened:
                return cls.from_hdulist(fits.HDUList([h.copy() for h in opened]))
        names = [h.name for h in hdulist]
        if "FLUXCAL" not in names:
            raise InputDataError("no FLUXCAL extension: this is not a kspec_fluxcal calibration.")
        combined = CalibrationVector.from_table(read_fits_table(hdulist["FLUXCAL"]))
        vectors, residuals = [], []
        for hdu in hdulist:
            if hdu.name != "FCALVEC":
                continue
            table = read_fits_table(hdu)
            if "RESIDUAL" in table.colnames:
                residuals.append(np.asarray(table["RESIDUAL"], float) * u.one)
                table.remove_column("RESIDUAL")
            vectors.append(CalibrationVector.from_table(table))
        summary = {}
        if "FCALSUM" in names:
            summary = json.loads(hdulist["FCALSUM"].data["SUMMARY_JSON"][0])
        telluric = None
        if "TELLURIC" in names:
            telluric = TelluricTransmission.from_hdu(hdulist["TELLURIC"])
        covariance = None
        if "FCALCOV" in names:
            from .covariance import CalibrationCovariance

            covariance = CalibrationCovariance.from_hdu(hdulist["FCALCOV"])
        return cls(combined, vectors, residuals, summary, telluric, covariance)

    def write(self, path, overwrite=False):
        """Write the result to a FITS file."""
        self.to_hdulist().writeto(path, overwrite=overwrite)

    @classmethod
    def read(cls, path):
        """Read a result written by `write`."""
        return cls.from_hdulist(path)


MIN_TRANSMISSION = 0.2
"""Pixels whose combined transmission is below this are masked (the correction would amplify noise)."""


@dataclass
class TelluricTransmission:
    """An exposure's telluric transmission on a wavelength grid (plain arrays).

    Attributes
    ----------
    wavelength : ndarray
        Å, air, observed frame, increasing.
    transmission, variance : ndarray
        Transmission (1 = no absorption) and its variance.
    mask : ndarray of bool
        True where the transmission is unusable (below ``MIN_TRANSMISSION``,
        or no star measured it inside a corrected window).
    windows : ndarray, shape (n, 2)
        The windows (Å) that were corrected; T = 1 exactly outside them.
    per_star : ndarray, shape (n_star, n_pix), optional
        Each star's own estimate (NaN where not measured), for QC.
    star_names : list of str
        Names of the stars of ``per_star``.
    meta : dict
        ``n_stars``, ``source``, ``airmass`` (of the exposure it was measured
        on, or None) and what else the derivation records.
    """

    wavelength: np.ndarray
    transmission: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    windows: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))
    per_star: np.ndarray = None
    star_names: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.wavelength = np.asarray(u.Quantity(self.wavelength, u.AA).to_value(u.AA), dtype=float)
        self.transmission = np.asarray(self.transmission, dtype=float)
        self.variance = np.asarray(self.variance, dtype=float)
        self.mask = np.asarray(self.mask, dtype=bool)
        self.windows = np.asarray(self.windows, dtype=float).reshape(-1, 2)
        n = self.wavelength.size
        if any(a.shape != (n,) for a in (self.transmission, self.variance, self.mask)):
            raise InputDataError("a telluric transmission needs wavelength, transmission, variance and mask of "
                                 "one length.")
        if n < 2 or np.any(np.diff(self.wavelength) <= 0):
            raise InputDataError("the wavelengths of a telluric transmission must increase (at least 2 samples).")

    @property
    def n_stars(self):
        """Number of standards the transmission was measured on."""
        return int(self.meta.get("n_stars", 0))

    def to_hdu(self):
        """The ``TELLURIC`` binary-table extension (``WAVELENGTH``, ``TRANSMISSION``, ``VARIANCE``, ``MASK``)."""
        table = Table()
        table["WAVELENGTH"] = self.wavelength * u.AA
        table["TRANSMISSION"] = self.transmission
        table["VARIANCE"] = self.variance
        table["MASK"] = self.mask
        hdu = fits.table_to_hdu(table)
        hdu.name = "TELLURIC"
        hdu.header["TELNSTR"] = (self.n_stars, "standards the transmission was measured on")
        set_card(hdu.header, "TELWIN", telluric_window_string(self.windows) or "none", "corrected windows (A, air)")
        hdu.header["TELTMIN"] = (MIN_TRANSMISSION, "transmission below this is masked")
        set_card(hdu.header, "TELSRC", str(self.meta.get("source", "standards")), "where the transmission comes from")
        if self.meta.get("airmass") is not None:
            hdu.header["TELAIRM"] = (float(self.meta["airmass"]), "airmass the transmission was measured at")
        hdu.header["COMMENT"] = "Telluric transmission, observed frame; MASK True = bad; T = 1 outside TELWIN"
        return hdu

    @classmethod
    def from_hdu(cls, hdu):
        """Read a ``TELLURIC`` extension written by `to_hdu`."""
        try:
            table = Table.read(hdu)
            wave = u.Quantity(table["WAVELENGTH"]).to_value(u.AA) if table["WAVELENGTH"].unit else \
                np.asarray(table["WAVELENGTH"], float)
            windows = _parse_telluric_windows(hdu.header.get("TELWIN", ""))
            meta = {"n_stars": int(hdu.header.get("TELNSTR", 0)), "source": hdu.header.get("TELSRC", "standards"),
                    "airmass": hdu.header.get("TELAIRM")}
            return cls(wave, np.asarray(table["TRANSMISSION"], float), np.asarray(table["VARIANCE"], float),
                       np.asarray(table["MASK"], bool), windows, meta=meta)
        except (KeyError, ValueError, TypeError) as exc:
            raise InputDataError(f"the TELLURIC extension is not a readable transmission ({exc}).") from exc


BRIDGING_CANCELLED = "TELBRID"
"""Header keyword of a frame calibrated and telluric-corrected with one calibration: its variance and, when
read, its ``FCALCOV`` leave out the ``bridging`` term where ``TELLURIC`` was measured (`telluric_covariance`)."""


def measured_on_grid(transmission, wavelength):
    """True where ``transmission`` was fitted to the standards (inside a corrected window, T measured).

    Parameters
    ----------
    transmission : `TelluricTransmission`
    wavelength : ndarray
        Å, increasing.

    Returns
    -------
    ndarray of bool
        False outside the corrected windows and where a window keeps T = 1
        (no standard's samples reach there).
    """
    wave = np.asarray(u.Quantity(wavelength, u.AA).to_value(u.AA), dtype=float)
    x = transmission.wavelength
    fitted = (transmission.mask | ~(transmission.variance == 0)).astype(float)
    inside = np.zeros(wave.shape, dtype=bool)
    for a, b in transmission.windows:
        inside |= (wave >= a) & (wave <= b)
    return inside & (np.interp(wave, x, fitted, left=0.0, right=0.0) >= 0.5)


def telluric_covariance(covariance, transmission):
    """The covariance of the telluric-corrected flux's calibration: no ``bridging`` where T was measured.

    T is measured on the standards against their smooth calibration
    (T_i = counts_i · S_i / M_i), which bridges each window as the combined
    calibration Cal does. The throughput structure that bridge misses (the
    `kspec_fluxcal.bridging` term) is the same in Cal and in T and cancels in
    counts · Cal / T: inside the windows where T was fitted the corrected
    flux carries none of it. Beside the windows (and where a window keeps
    T = 1) the term stays.

    Parameters
    ----------
    covariance : `~kspec_fluxcal.covariance.CalibrationCovariance`
        The covariance of the calibration ``transmission`` was measured with.
    transmission : `TelluricTransmission`

    Returns
    -------
    `~kspec_fluxcal.covariance.CalibrationCovariance`
        The same, its ``bridging`` term zero at the samples where T was
        measured (``covariance`` itself when it has no such term).
    """
    term = next((t for t in covariance.terms if t.name == "bridging"), None)
    if term is None or not len(transmission.windows):
        return covariance
    measured = measured_on_grid(transmission, covariance.wavelength)
    return covariance.with_term("bridging", np.where(measured, 0.0, term.sigma), term.length)


def telluric_window_string(windows):
    """Telluric windows (n, 2) in Å as the header writes them: ``6860-6960,7590-7700``."""
    return ",".join(f"{a:.0f}-{b:.0f}" for a, b in windows)


def _parse_telluric_windows(text):
    rows = [part.split("-") for part in str(text).split(",") if part.strip() and part.strip() != "none"]
    return np.array([[float(a), float(b)] for a, b in rows]).reshape(-1, 2)
