"""Template corrections: the misfit a synthetic grid shares across stars, as a multiplicative curve.

Synthetic grids are wrong in the same way for every star of a kind (opacity
deficits in the blue and around the Balmer jump, for instance). A
`TemplateCorrection` holds the curve learned from real CALSPEC standards (see
`kspec_fluxcal.calspec_correction`): a multiplicative factor, its fractional
1σ (the template-misfit term of the error budget) and its provenance, read
and written as ECSV. `~kspec_fluxcal.templates.TemplateLibrary` applies it to
every template before the LSF (``correction=`` keyword; the shipped ck04
correction by default for ck04 libraries, none for other libraries).

All wavelengths are in Å, in air.
"""

import logging
import os
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import Table

from ..cache import fingerprint
from ..exceptions import InputDataError
from ..io.atomic import atomic_output

__all__ = ["TemplateCorrection", "resolve_template_correction", "shipped_correction_path"]

log = logging.getLogger(__name__)

SHIPPED_CORRECTIONS = {"ck04models": "template_correction_ck04.ecsv"}
"""Library kind → file in ``kspec_fluxcal/data`` of the correction applied by default."""

_FORMAT = "kspec_fluxcal template correction 1"


def shipped_correction_path(kind):
    """The shipped correction file for a library kind (``'ck04models'`` …), or None."""
    name = SHIPPED_CORRECTIONS.get(str(kind))
    return None if name is None else Path(__file__).parents[1] / "data" / name


class TemplateCorrection:
    """A multiplicative correction of a template grid: corrected template = template × factor.

    Parameters
    ----------
    wavelength : `~astropy.units.Quantity` or array_like
        Increasing wavelengths (Å, air; plain arrays are taken as Å).
    factor : array_like
        Multiplicative factor at ``wavelength`` (dimensionless, positive).
    sigma : array_like
        Fractional 1σ uncertainty of the factor as applied to one star (the
        stars' scatter about it plus the error of the median), ≥ 0.
    meta : dict, optional
        Provenance: ``name``, ``library_kind``, ``library_fingerprint``,
        ``stars`` (one dict per CALSPEC star: parameters, used or why not),
        ``fit`` (settings), ``date``, ``command``.
    curves : dict, optional
        Name → array on ``wavelength``: each star's own normalised
        spectrum / model (kept for figures and checks; NaN where undefined).

    Notes
    -----
    Outside its wavelength range the factor and the uncertainty are held at
    their values at the nearest end.
    """

    def __init__(self, wavelength, factor, sigma, meta=None, curves=None):
        wave = u.Quantity(wavelength, u.AA).to_value(u.AA) if isinstance(wavelength, u.Quantity) else wavelength
        self._wave = np.asarray(wave, dtype=np.float64)
        self._factor = np.asarray(factor, dtype=np.float64)
        self._sigma = np.asarray(sigma, dtype=np.float64)
        if self._wave.ndim != 1 or self._wave.size < 2 or np.any(np.diff(self._wave) <= 0):
            raise InputDataError("a template correction needs at least two strictly increasing wavelengths (Å).")
        for name, values in (("factor", self._factor), ("sigma", self._sigma)):
            if values.shape != self._wave.shape:
                raise InputDataError(
                    f"template correction {name} has shape {values.shape}; it needs one value per wavelength "
                    f"({self._wave.size})."
                )
        if not np.all(np.isfinite(self._factor) & (self._factor > 0)):
            raise InputDataError("template correction factors must be finite and positive; fix or re-derive the file.")
        if not np.all(np.isfinite(self._sigma) & (self._sigma >= 0)):
            raise InputDataError("template correction uncertainties must be finite and ≥ 0; fix or re-derive the file.")
        self.meta = dict(meta or {})
        self.curves = {str(k): np.asarray(v, dtype=np.float64) for k, v in (curves or {}).items()}

    def __repr__(self):
        return (
            f"<TemplateCorrection {self.name} for {self.meta.get('library_kind', '?')}: {self._wave[0]:.0f}–"
            f"{self._wave[-1]:.0f} Å, factor {self._factor.min():.3f}–{self._factor.max():.3f}>"
        )

    @property
    def wavelength(self):
        """Wavelengths of the tabulated factor (Å, air), a Quantity."""
        return self._wave * u.AA

    @property
    def factor(self):
        """The tabulated factor (dimensionless)."""
        return self._factor.copy()

    @property
    def sigma(self):
        """The tabulated fractional 1σ uncertainty."""
        return self._sigma.copy()

    @property
    def name(self):
        """Short name (``meta['name']``, else 'custom')."""
        return str(self.meta.get("name") or "custom")

    @property
    def fingerprint(self):
        """Content key of the correction (wavelength, factor, uncertainty)."""
        return fingerprint("template-correction", self._wave, self._factor, self._sigma)

    @property
    def label(self):
        """``name:fingerprint`` as recorded in headers (``FCALTCOR``)."""
        return f"{self.name}:{self.fingerprint[:12]}"

    def factor_at(self, wavelength):
        """The factor at ``wavelength`` (Å; a Quantity or plain floats), held at the ends."""
        wave = u.Quantity(wavelength, u.AA).to_value(u.AA) if isinstance(wavelength, u.Quantity) else wavelength
        return np.interp(np.asarray(wave, dtype=np.float64), self._wave, self._factor)

    def fractional_sigma(self, wavelength):
        """Fractional 1σ template-misfit uncertainty at ``wavelength`` (Å, ndarray), held at the ends.

        This is the signature of ``EngineOptions.template_misfit``: the
        combined calibration's variance gains (fraction × C)².
        """
        return np.interp(np.asarray(wavelength, dtype=np.float64), self._wave, self._sigma)

    def apply(self, wavelength, flux):
        """``flux × factor(wavelength)`` (any array or Quantity whose last axis matches ``wavelength``)."""
        return flux * self.factor_at(wavelength)

    # -- files -------------------------------------------------------------

    def to_table(self):
        """The correction as an `~astropy.table.Table` (what `write` stores)."""
        table = Table()
        table["wavelength"] = self._wave * u.AA
        table["factor"] = self._factor
        table["sigma"] = self._sigma
        for name, values in self.curves.items():
            table[f"star_{name}"] = values
        table.meta.update({"format": _FORMAT, **self.meta})
        return table

    def write(self, path, overwrite=True):
        """Write the correction as ECSV (atomically).

        Parameters
        ----------
        path : str or os.PathLike
            Target file (``.ecsv``).
        overwrite : bool
            Replace an existing file.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise InputDataError(f"{path} exists; remove it or allow overwriting.")
        with atomic_output(path) as tmp:
            self.to_table().write(tmp, format="ascii.ecsv", overwrite=True)
            os.chmod(tmp, 0o644)

    @classmethod
    def read(cls, path):
        """Read a correction written by `write`.

        Raises
        ------
        InputDataError
            If the file is missing or is not a template correction.
        """
        path = Path(path)
        if not path.is_file():
            raise InputDataError(
                f"template correction file {path} does not exist; give an ECSV file written by "
                "'kspec-fluxcal derive-correction', 'auto' or 'none'."
            )
        try:
            table = Table.read(path, format="ascii.ecsv")
        except Exception as exc:  # noqa: BLE001 — any parse failure is the same user error
            raise InputDataError(
                f"template correction file {path} is not a readable ECSV table ({exc}); re-derive it with "
                "'kspec-fluxcal derive-correction'."
            ) from exc
        missing = [c for c in ("wavelength", "factor", "sigma") if c not in table.colnames]
        if missing or table.meta.get("format") != _FORMAT:
            raise InputDataError(
                f"{path} is not a kspec_fluxcal template correction (columns wavelength, factor, sigma and "
                f"meta format '{_FORMAT}' expected); re-derive it with 'kspec-fluxcal derive-correction'."
            )
        wave = table["wavelength"]
        wave = wave.quantity.to_value(u.AA) if wave.unit is not None else np.asarray(wave)
        meta = {k: v for k, v in table.meta.items() if k != "format"}
        curves = {c[5:]: np.asarray(table[c], float) for c in table.colnames if c.startswith("star_")}
        return cls(wave, np.asarray(table["factor"]), np.asarray(table["sigma"]), meta, curves)


def resolve_template_correction(correction, library_kind):
    """The correction to apply to a library of ``library_kind``.

    Parameters
    ----------
    correction : 'auto', 'none', None, str, os.PathLike or `TemplateCorrection`
        ``'auto'``: the shipped correction for this kind of library if there
        is one (ck04models), else none. ``None`` or ``'none'``: none. A path:
        that file. A `TemplateCorrection`: itself.
    library_kind : str
        ``TemplateLibrary.kind``.

    Returns
    -------
    `TemplateCorrection` or None
    """
    if correction is None or isinstance(correction, TemplateCorrection):
        result = correction
    elif isinstance(correction, str) and correction.strip().lower() in ("none", ""):
        result = None
    elif isinstance(correction, str) and correction.strip().lower() == "auto":
        path = shipped_correction_path(library_kind)
        result = TemplateCorrection.read(path) if path is not None and path.is_file() else None
    elif isinstance(correction, (str, os.PathLike)):
        result = TemplateCorrection.read(correction)
    else:
        raise InputDataError(
            f"template correction must be 'auto', 'none', a file path or a TemplateCorrection; got {correction!r}."
        )
    if result is not None and result.meta.get("library_kind") not in (None, library_kind):
        log.warning("applying the template correction %s, derived for a %s library, to a %s library",
                    result.label, result.meta.get("library_kind"), library_kind)
    return result
