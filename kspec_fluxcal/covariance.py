"""The calibration's error as a small covariance: a pixel-independent variance plus a few correlated terms.

A `~astropy.nddata.VarianceUncertainty` holds the diagonal of the
calibration's covariance only, but most of the calibration's error is shared
by neighbouring pixels: the level (photometric scale and catalogue zero
points) moves the whole vector, the smooth form's coefficients move a knot
interval together, the template misfit is common over its own scale.
`CalibrationCovariance` keeps the covariance of ln(Cal) (relative, so the same
for the calibration per ct and per ct/s) in low-rank form:

.. math::

    R(\\lambda_i, \\lambda_j) = \\delta_{ij}\\,v(\\lambda_i)
        + \\sum_c a_c(\\lambda_i)\\,a_c(\\lambda_j)\\,
          \\frac{\\mathbf b_c(\\lambda_i)\\cdot\\mathbf b_c(\\lambda_j)}
               {\\lVert\\mathbf b_c(\\lambda_i)\\rVert\\,\\lVert\\mathbf b_c(\\lambda_j)\\rVert}

``v`` is the pixel-independent variance; each correlated term ``c`` has a
fractional σ ``a_c(λ)`` and a basis ``b_c``: one constant function (a
*level* term, fully correlated) or the cubic B-splines on uniform knots at
the term's correlation length (independent coefficients, each row normalised
so that its own variance is exactly ``a_c²``). The diagonal is therefore the
per-pixel budget unchanged: ``v + Σ a_c²`` is ``CAL_VARIANCE / CAL_FACTOR²``
(`from_budget`), and the per-pixel pulls stay as they were.

The terms are those of `kspec_fluxcal.error_budget`: ``scale`` is a level
term; ``zero_point`` is carried by two signed level profiles in the span of
1 and k(λ) (``zero_point_1``, ``zero_point_2``: a catalogue offset moves the
stars' fitted scale and reddening, so it tilts the vector as well as
lifting it); the part of ``noise`` that is the reddening tilt of the stars'
photometric fits likewise (``tilt_1``, ``tilt_2``,
`kspec_fluxcal.error_budget.photometric_profiles`), the rest of it
pixel-independent for the per-pixel form and following the knots of the
smooth form; ``smoothing`` (structure the knots miss) and ``bridging``
(throughput structure the spline leaves between knots or bridges across masked
pixels, `kspec_fluxcal.bridging`) are correlated over half a knot interval;
``template_misfit`` over `MISFIT_CORRELATION_LENGTH` or the knot spacing when
that is longer (the smooth form cannot hold finer structure), except the share
`MISFIT_BROAD_SHARE` of its variance, correlated over `MISFIT_BROAD_LENGTH`
(``template_misfit_broad``).
"""

from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.io import fits

from .exceptions import InputDataError
from .splines import bspline_basis

__all__ = ["MISFIT_BROAD_LENGTH", "MISFIT_BROAD_SHARE", "MISFIT_CORRELATION_LENGTH", "META_KEY", "CovarianceTerm",
           "CalibrationCovariance", "read_covariance"]

MISFIT_CORRELATION_LENGTH = 200.0
"""Correlation length (Å) of the short part of the template-misfit term (or the knot spacing when longer).

The misfit of F/G models against real stars is correlated on two scales. Fitted to the
correlogram of the 17 CALSPEC F/G stars' leave-one-star-out residuals against the ck04
correction (``benchmarks/fit_misfit_correlation.py``: one-length and two-length models of
this module's own bases, least squares over lags 0–2000 Å), a single length leaves the
long tail (ρ ≈ 0.45 at 500 Å, 0.2 at 1000 Å; 400 Å matches only the half-correlation lag,
420 Å); two lengths fit it to 0.02 in Σ(Δρ)²: `MISFIT_BROAD_SHARE` of the variance over
`MISFIT_BROAD_LENGTH`, the rest over 200 Å (bootstrap over the stars 150–200 Å: the
Balmer-line wings, the G band and metal-line blends)."""

MISFIT_BROAD_LENGTH = 1500.0
"""Correlation length (Å) of the broad part of the template-misfit term (the misfit of the
SED's slope: the Balmer jump against the red continuum), ``template_misfit_broad`` (fitted:
1500 Å, bootstrap 1500–2000 Å)."""

MISFIT_BROAD_SHARE = 0.6
"""Share of the template-misfit variance correlated over `MISFIT_BROAD_LENGTH` (fitted: 0.6,
bootstrap over the stars 0.5–0.7; see `MISFIT_CORRELATION_LENGTH`)."""

DEGREE = 3
"""Degree of the B-spline bases of the correlated terms."""

EXTNAME = "FCALCOV"
"""FITS extension holding a `CalibrationCovariance`."""

META_KEY = "fluxcal_covariance"
"""Key of a calibrated `~specutils.Spectrum`'s ``meta`` holding its calibration's `CalibrationCovariance`."""


def read_covariance(path):
    """The `CalibrationCovariance` stored in a calibrated RED file or a product (``FCALCOV``), or None.

    Parameters
    ----------
    path : str or Path
        A FITS file.
    """
    with fits.open(path, memmap=False) as hdul:
        if EXTNAME not in hdul:
            return None
        return CalibrationCovariance.from_hdu(hdul[EXTNAME])


_NEGLIGIBLE = 1e-9
"""A remainder of a term below this fraction of its largest variance is rounding, not a term."""


def _profile_terms(label, columns, variance, exact):
    """Level terms ``label_1``, ``label_2`` … of signed ``columns`` (n, r) rescaled per row, and what is left.

    Each row is scaled so that its variance (the sum of its squares) is the
    term's ``variance`` (``exact``) or at most it; the rest is returned.
    """
    model = np.sum(columns**2, axis=1)
    share = variance if exact else np.minimum(model, variance)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(model > 0, np.sqrt(share / model), 0.0)
    rows = columns * scale[:, None]
    level = [CovarianceTerm(f"{label}_{j + 1}", rows[:, j]) for j in range(rows.shape[1])
             if np.any(rows[:, j] != 0)]
    return level, np.maximum(variance - np.sum(rows**2, axis=1), 0.0)


@dataclass
class CovarianceTerm:
    """One correlated term of a calibration's covariance.

    Attributes
    ----------
    name : str
        The budget term (``'scale'``, ``'zero_point'``, ``'noise'``, ``'smoothing'``, ``'template_misfit'``).
    sigma : ndarray
        Fractional 1σ of the term at each sample of the covariance's grid; a
        level term's may be signed (its profile: a tilt changes sign).
    length : float or None
        Correlation length (Å): the knot spacing of the term's B-spline basis; None for a level term
        (one constant function: fully correlated over the whole vector).
    """

    name: str
    sigma: np.ndarray
    length: float = None


@dataclass
class CalibrationCovariance:
    """Covariance of ln(Cal) of one calibration, in low-rank form (see the module's docstring).

    Attributes
    ----------
    wavelength : ndarray
        Å (air), increasing: the calibration vector's grid.
    independent : ndarray
        Pixel-independent variance of ln(Cal) at each sample.
    terms : list of `CovarianceTerm`
        The correlated terms.
    mask : ndarray of bool
        True where the calibration is undefined.
    domain : tuple of float
        (lo, hi) Å, the ends of the B-spline bases (the defined range of the calibration).
    meta : dict
        ``representation`` of the calibration and what else the builder records.
    """

    wavelength: np.ndarray
    independent: np.ndarray
    terms: list
    mask: np.ndarray
    domain: tuple
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_budget(cls, wavelength, terms, defined, representation, knot_spacing=None, misfit_length=None,
                    profiles=None):
        """The covariance of a calibration from its error budget's per-pixel terms.

        Parameters
        ----------
        wavelength : ndarray
            Å, the calibration's grid.
        terms : dict of str to ndarray
            Variance of ln(Cal) of each term of `kspec_fluxcal.error_budget.BUDGET_TERMS`
            at each sample.
        defined : ndarray of bool
            Samples where the calibration is defined.
        representation : {'smooth', 'pixel'}
            Form of the calibration.
        knot_spacing : float, optional
            Knot spacing (Å) of the smooth form (default 250 Å).
        misfit_length : float, optional
            Correlation length (Å) of the short part of the template-misfit term (default
            `MISFIT_CORRELATION_LENGTH`).
        profiles : dict of str to ndarray, optional
            Signed profiles (n, r) of a term's low-rank structure over the
            whole vector (e.g. the span of 1 and k(λ) of a photometric fit's
            offset and reddening): ``'zero_point'`` is rescaled row by row to
            the term's variance; for ``'noise'`` they give the reddening tilt
            of the stars' fits (level terms ``tilt_1``, ``tilt_2``), up to the
            noise variance, and the rest of the noise keeps its own
            correlation.

        Returns
        -------
        `CalibrationCovariance`
            Its diagonal equals the sum of ``terms`` on ``defined``.
        """
        wave = np.asarray(wavelength, dtype=float)
        defined = np.asarray(defined, dtype=bool)
        if not defined.any():
            raise InputDataError("the calibration is undefined everywhere; it has no covariance.")
        spacing = float(knot_spacing or 250.0)
        misfit_length = MISFIT_CORRELATION_LENGTH if misfit_length is None else float(misfit_length)
        smooth = representation != "pixel"
        lengths = {"scale": None, "zero_point": None, "noise": spacing if smooth else 0.0,
                   "smoothing": 0.5 * spacing, "bridging": 0.5 * spacing,
                   "template_misfit": max(misfit_length, spacing if smooth else 0.0)}
        independent = np.zeros(wave.size)
        correlated = []
        profiles = profiles or {}
        for name, variance in terms.items():
            variance = np.where(defined, np.maximum(np.asarray(variance, dtype=float), 0.0), 0.0)
            if profiles.get(name) is not None:
                label = "tilt" if name == "noise" else name
                level, variance = _profile_terms(label, np.asarray(profiles[name], dtype=float), variance,
                                                 exact=name != "noise")
                correlated += level
            length = lengths.get(name, spacing)
            if name == "template_misfit" and length > 0.0:
                broad = MISFIT_BROAD_SHARE * variance
                variance = variance - broad
                if np.any(broad > _NEGLIGIBLE * np.max(terms[name], initial=0.0)):
                    correlated.append(CovarianceTerm("template_misfit_broad", np.sqrt(broad),
                                                     max(MISFIT_BROAD_LENGTH, length)))
            if length == 0.0:
                independent += variance
            elif np.any(variance > _NEGLIGIBLE * np.max(terms[name], initial=0.0)):
                correlated.append(CovarianceTerm(name, np.sqrt(variance), length))
        lo, hi = float(wave[defined].min()), float(wave[defined].max())
        return cls(wave, independent, correlated, ~defined, (lo, hi),
                   {"representation": representation, "knot_spacing": spacing})

    def term_sigma(self, name, wavelength):
        """Fractional σ of the term ``name`` on ``wavelength`` (Å; 0 where the term is absent, NaN outside)."""
        ok = ~self.mask
        x = np.asarray(wavelength, dtype=float)
        inside = (x >= self.domain[0] - 1e-6) & (x <= self.domain[1] + 1e-6)
        sigma = np.zeros(x.size)
        for term in self.terms:
            if term.name == name:
                sigma = np.interp(x, self.wavelength[ok], term.sigma[ok])
        return np.where(inside, sigma, np.nan)

    def with_term(self, name, sigma, length=None):
        """A copy with the term ``name`` replaced by (or, if absent, extended with) ``sigma`` on this grid.

        Parameters
        ----------
        name : str
            The term.
        sigma : ndarray or float
            Its fractional σ at each sample of `wavelength` (signed for a level term's profile).
        length : float, optional
            Its correlation length (Å); None for a level term.
        """
        sigma = np.broadcast_to(np.asarray(sigma, dtype=float), self.wavelength.shape).copy()
        terms = [t for t in self.terms if t.name != name] + [CovarianceTerm(name, sigma, length)]
        return CalibrationCovariance(self.wavelength, self.independent, terms, self.mask, self.domain, dict(self.meta))

    def factors(self, wavelength):
        """The pixel-independent variance and the low-rank factor of the covariance on ``wavelength``.

        Parameters
        ----------
        wavelength : `~astropy.units.Quantity` or ndarray
            Increasing wavelengths (Å; plain numbers are Å).

        Returns
        -------
        independent : ndarray, shape (n,)
            Pixel-independent variance of ln(Cal).
        factor : ndarray, shape (n, k)
            G with covariance ``diag(independent) + G Gᵀ``. Both are NaN
            outside the calibration's defined range.
        """
        x = u.Quantity(wavelength, u.AA).to_value(u.AA) if isinstance(wavelength, u.Quantity) \
            else np.asarray(wavelength, dtype=float)
        ok = ~self.mask
        lo, hi = self.domain
        inside = (x >= lo - 1e-6) & (x <= hi + 1e-6)
        grid = self.wavelength[ok]
        independent = np.where(inside, np.interp(x, grid, self.independent[ok]), np.nan)
        columns = []
        for term in self.terms:
            sigma = np.where(inside, np.interp(x, grid, term.sigma[ok]), np.nan)
            if term.length is None:
                columns.append(sigma[:, None])
                continue
            basis = bspline_basis(x, self._knots(term.length), DEGREE, lo, hi).toarray()
            norm = np.sqrt(np.sum(basis**2, axis=1))
            columns.append(sigma[:, None] * basis / norm[:, None])
        factor = np.hstack(columns) if columns else np.zeros((x.size, 0))
        return independent, factor

    def _knots(self, length):
        lo, hi = self.domain
        n_span = max(int(round((hi - lo) / length)), 1)
        return np.linspace(lo, hi, n_span + 1)[1:-1]

    def variance(self, wavelength):
        """Total variance of ln(Cal) per pixel on ``wavelength`` (the diagonal of the covariance)."""
        independent, factor = self.factors(wavelength)
        return independent + np.sum(factor**2, axis=1)

    def to_dense(self, wavelength, scale=None):
        """The covariance as a dense (n, n) array on ``wavelength``.

        Parameters
        ----------
        wavelength : `~astropy.units.Quantity` or ndarray
            Å.
        scale : ndarray, optional
            Values s(λ) (the calibration factor, or a calibrated flux): the
            covariance of s·(1 + δ ln Cal), diag(s) R diag(s); default the
            relative covariance R.
        """
        independent, factor = self.factors(wavelength)
        dense = factor @ factor.T + np.diag(independent)
        if scale is not None:
            s = np.asarray(scale, dtype=float)
            dense = s[:, None] * dense * s[None, :]
        return dense

    def to_covariance(self, wavelength, scale=None, unit=None):
        """The covariance on ``wavelength`` as an `astropy.nddata.Covariance`.

        Parameters
        ----------
        wavelength : `~astropy.units.Quantity` or ndarray
            Å; every sample must lie inside the calibration's defined range.
        scale : `~astropy.units.Quantity` or ndarray, optional
            See `to_dense`; a Quantity sets the unit (its square).
        unit : `~astropy.units.Unit`, optional
            Unit of the covariance when ``scale`` is a plain array.
        """
        from astropy.nddata import Covariance

        if isinstance(scale, u.Quantity):
            unit = scale.unit**2
            scale = scale.value
        dense = self.to_dense(wavelength, scale)
        if not np.all(np.isfinite(dense)):
            raise InputDataError(
                "some wavelengths lie outside the calibration's defined range "
                f"({self.domain[0]:.1f}–{self.domain[1]:.1f} Å); restrict the wavelength range."
            )
        return Covariance(array=dense, unit=unit)

    def to_hdu(self):
        """The covariance as the ``FCALCOV`` binary table (one row per sample of the calibration's grid)."""
        columns = [fits.Column("WAVELENGTH", "D", unit="Angstrom", array=self.wavelength),
                   fits.Column("MASK", "L", array=self.mask),
                   fits.Column("INDEPENDENT", "E", array=self.independent.astype(np.float32))]
        for term in self.terms:
            columns.append(fits.Column(f"SIGMA_{term.name.upper()}", "E", array=term.sigma.astype(np.float32)))
        hdu = fits.BinTableHDU.from_columns(columns, name=EXTNAME)
        header = hdu.header
        header["FCOVLO"] = (self.domain[0], "[Angstrom] start of the bases")
        header["FCOVHI"] = (self.domain[1], "[Angstrom] end of the bases")
        header["FCOVDEG"] = (DEGREE, "degree of the B-spline bases")
        header["FCOVNTRM"] = (len(self.terms), "correlated terms (columns SIGMA_*)")
        header["FCOVFORM"] = (str(self.meta.get("representation", "")), "form of the calibration")
        for i, term in enumerate(self.terms, start=1):
            header[f"FCOVN{i}"] = (term.name, "term (column SIGMA_<NAME>)")
            header[f"FCOVL{i}"] = (-1.0 if term.length is None else float(term.length),
                                   "[Angstrom] knot spacing; -1 = level")
        header["COMMENT"] = ("Covariance of ln(CAL_FACTOR): diag(INDEPENDENT) + sum over terms of "
                             "sigma_i sigma_j b(i).b(j)/(|b(i)||b(j)|), b = cubic B-splines on uniform knots "
                             "of spacing FCOVLn over [FCOVLO, FCOVHI] (or the constant 1 for FCOVLn = -1).")
        return hdu

    def to_columns(self):
        """The ``FCALCOV`` table as columns ``FCALCOV_<COLUMN>`` and its header cards as a dict (for ECSV)."""
        hdu = self.to_hdu()
        columns = {f"{EXTNAME}_{name}": np.asarray(hdu.data[name]) for name in hdu.columns.names}
        cards = {key: hdu.header[key] for key in hdu.header if key.startswith("FCOV")}
        return columns, cards

    @classmethod
    def from_columns(cls, table, cards):
        """Inverse of `to_columns`: ``table`` holds the ``FCALCOV_<COLUMN>`` columns, ``cards`` the header."""
        prefix = f"{EXTNAME}_"
        names = [c for c in table.colnames if c.startswith(prefix)]
        formats = {"WAVELENGTH": "D", "MASK": "L"}
        hdu = fits.BinTableHDU.from_columns(
            [fits.Column(c[len(prefix):], formats.get(c[len(prefix):], "E"), array=np.asarray(table[c]))
             for c in names], name=EXTNAME)
        for key, value in dict(cards).items():
            hdu.header[key] = value
        return cls.from_hdu(hdu)

    @classmethod
    def from_hdu(cls, hdu):
        """Inverse of `to_hdu`."""
        header, data = hdu.header, hdu.data
        try:
            wave = np.asarray(data["WAVELENGTH"], dtype=float)
            terms = []
            for i in range(1, int(header["FCOVNTRM"]) + 1):
                name = str(header[f"FCOVN{i}"])
                length = float(header[f"FCOVL{i}"])
                terms.append(CovarianceTerm(name, np.asarray(data[f"SIGMA_{name.upper()}"], dtype=float),
                                            None if length < 0 else length))
            return cls(wave, np.asarray(data["INDEPENDENT"], dtype=float), terms,
                       np.asarray(data["MASK"], dtype=bool), (float(header["FCOVLO"]), float(header["FCOVHI"])),
                       {"representation": str(header.get("FCOVFORM", ""))})
        except (KeyError, ValueError, TypeError) as exc:
            raise InputDataError(f"the {EXTNAME} extension is incomplete or corrupt ({exc}); "
                                 "recalibrate the frame to rewrite it.") from exc
