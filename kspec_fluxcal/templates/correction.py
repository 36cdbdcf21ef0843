"""Template corrections: the misfit a synthetic grid shares across stars, as a multiplicative curve.

Synthetic grids are wrong in the same way for every star of a kind (opacity
deficits in the blue and around the Balmer jump, for instance). A
`TemplateCorrection` holds what was learned from real CALSPEC standards (see
`kspec_fluxcal.calspec_correction`): each star's spectrum / model curve, a
multiplicative factor, its fractional 1σ for a new star (the template-misfit
term of the error budget) and its provenance, read and written as ECSV.

A correction may depend on the template's [M/H] (``meta['model']``, kind
``'feh-kernel'``): the factor of a template at [M/H] = f is the mean of the
training stars' curves weighted by exp(−½((f − f_s)/h)²), f_s each star's
fitted [M/H]. It applies only inside its domain — the training stars' span of
Teff and [M/H] widened by a margin — and a template outside it is left
uncorrected (factor 1). A standard fitted beyond the training stars' span
has the correction's σ at the span's end grown by an extrapolation term
learned by holding stars out beyond the others' span (``extrapolation``);
a correction without that term gives a standard outside the domain the
library's misfit floor instead.
`~kspec_fluxcal.templates.TemplateLibrary` applies the correction to every
template before the LSF (``correction=`` keyword; the shipped ck04
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

__all__ = ["TemplateCorrection", "distance_beyond", "kernel_factor", "resolve_template_correction",
           "shipped_correction_path"]

log = logging.getLogger(__name__)

SHIPPED_CORRECTIONS = {"ck04models": "template_correction_ck04.ecsv"}
"""Library kind → file in ``kspec_fluxcal/data`` of the correction applied by default."""

_FORMAT = "kspec_fluxcal template correction 1"

FEH_KERNEL = "feh-kernel"
"""``meta['model']['kind']`` of a correction that depends on the template's [M/H]."""


def kernel_factor(stack, train_feh, bandwidth, feh, shrink=False):
    """The factor a template at [M/H] = ``feh`` (dex) receives from the training curves.

    Parameters
    ----------
    stack : ndarray, shape (n_star, n_wave)
        The training stars' spectrum / model curves.
    train_feh : ndarray, shape (n_star,)
        Their fitted [M/H] (dex).
    bandwidth : float
        Kernel width h (dex).
    feh : float
        [M/H] of the template (dex).
    shrink : bool
        Multiply the mean's departure from 1, wavelength by wavelength, by
        m²/(m² + s²/n_eff) — m that departure, s² the stars' scatter about
        their mean, n_eff = (Σw)²/Σw² — the empirical-Bayes weight of a mean
        of n_eff noisy curves, so that the correction stays near 1 where the
        stars disagree.

    Returns
    -------
    ndarray, shape (n_wave,)
        The kernel-weighted mean of the curves, weights exp(−½((feh − f_s)/h)²),
        shrunk towards 1 when ``shrink``.
    """
    weights = np.exp(-0.5 * ((np.asarray(train_feh, dtype=np.float64) - feh) / bandwidth) ** 2)
    mean = weights @ stack / np.sum(weights)
    if not shrink or stack.shape[0] < 2:
        return mean
    n_eff = np.sum(weights) ** 2 / np.sum(weights**2)
    departure = mean - 1.0
    noise = np.var(stack, axis=0, ddof=1) / n_eff
    with np.errstate(invalid="ignore", divide="ignore"):
        weight = np.where(departure**2 > 0, departure**2 / (departure**2 + noise), 0.0)
    return 1.0 + weight * departure


def distance_beyond(teff, feh, span, unit):
    """How far (Teff K, [M/H] dex) lies beyond the training ``span``, in ``unit`` (domain margins); 0 inside.

    d = √((Δ[M/H] / unit_feh)² + (ΔTeff / unit_teff)²), Δ each parameter's
    distance outside its span (0 within it).
    """
    d_feh = max(span["feh"][0] - feh, feh - span["feh"][1], 0.0) / float(unit["feh_dex"])
    d_teff = max(span["teff"][0] - teff, teff - span["teff"][1], 0.0) / float(unit["teff_K"])
    return float(np.hypot(d_feh, d_teff))


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
        Fractional 1σ uncertainty of the correction as applied to a star that
        was not used to derive it (dimensionless), ≥ 0.
    meta : dict, optional
        Provenance: ``name``, ``library_kind``, ``library_fingerprint``,
        ``stars`` (one dict per CALSPEC star: parameters, used or why not),
        ``fit`` (settings), ``date``, ``command``; and ``model`` for a
        correction that depends on [M/H]: ``{'kind': 'feh-kernel',
        'bandwidth_dex': h, 'training': [names], 'feh': [fitted [M/H] of each],
        'domain': {'teff': [lo, hi] (K), 'feh': [lo, hi] (dex)}}``.
    curves : dict, optional
        Name → array on ``wavelength``: each star's own normalised
        spectrum / model (NaN where undefined). A ``'feh-kernel'`` model needs
        the curve of every training star.
    residuals : dict, optional
        Training star name → its leave-one-out residual on ``wavelength``
        (its curve / the correction derived without it − 1); with them the
        uncertainty depends on [M/H] (`sigma_for`).
    extrapolation : array_like, optional
        Fractional 1σ the misfit gains, in quadrature, per unit of distance
        beyond the training stars' span (``model['span']``, distance in
        ``model['distance_unit']``: the domain margins), on ``wavelength``;
        learned by holding stars out beyond the others' span
        (`~kspec_fluxcal.calspec_correction.derive_template_correction`).
        Without it a standard outside the domain has the library floor.

    Notes
    -----
    Outside its wavelength range the factor and the uncertainty are held at
    their values at the nearest end. Without a model, ``factor`` applies to
    every template; with one, ``factor`` is the training stars' plain mean
    (for reference) and `factor_for` gives what a template receives.
    """

    def __init__(self, wavelength, factor, sigma, meta=None, curves=None, residuals=None, extrapolation=None):
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
        self.residuals = {str(k): np.asarray(v, dtype=np.float64) for k, v in (residuals or {}).items()}
        self.extrapolation = None if extrapolation is None else np.asarray(extrapolation, dtype=np.float64)
        if self.extrapolation is not None and (self.extrapolation.shape != self._wave.shape
                                               or not np.all(np.isfinite(self.extrapolation)
                                                             & (self.extrapolation >= 0))):
            raise InputDataError("template correction extrapolation must be finite, ≥ 0 and have one value per "
                                 "wavelength; re-derive the file.")
        self.model = self.meta.get("model") or None
        if self.model is not None:
            self._check_model()

    def _check_model(self):
        model = self.model
        if model.get("kind") != FEH_KERNEL:
            raise InputDataError(f"unknown template correction model {model.get('kind')!r}; re-derive the file.")
        names = list(model.get("training") or [])
        missing = [n for n in names if n not in self.curves]
        if len(names) < 2 or missing or len(model.get("feh") or []) != len(names):
            raise InputDataError(
                "a 'feh-kernel' template correction needs at least two training stars, each with its curve and "
                f"fitted [M/H] (missing curves: {', '.join(missing) or 'none'}); re-derive the file."
            )
        stack = np.array([self.curves[n] for n in names])
        if not np.all(np.isfinite(stack) & (stack > 0)):
            raise InputDataError("the training curves of a template correction must be finite and positive.")
        if not float(model.get("bandwidth_dex", 0)) > 0:
            raise InputDataError("a 'feh-kernel' template correction needs a bandwidth_dex > 0.")
        self._stack = stack
        self._train_feh = np.asarray(model["feh"], dtype=np.float64)
        self._residuals = None
        if self.residuals:
            absent = [n for n in names if n not in self.residuals]
            if absent:
                raise InputDataError(f"template correction residuals missing for training stars {absent}; "
                                     "re-derive the file.")
            self._residuals = np.array([self.residuals[n] for n in names])
            if not np.all(np.isfinite(self._residuals)):
                raise InputDataError("the leave-one-out residuals of a template correction must be finite.")
        if self.extrapolation is not None and not (model.get("span") and model.get("distance_unit")):
            raise InputDataError("a template correction with an extrapolation term needs model['span'] and "
                                 "model['distance_unit']; re-derive the file.")

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
        if self.model is None:
            return fingerprint("template-correction", self._wave, self._factor, self._sigma)
        if self._residuals is None:
            return fingerprint("template-correction", self._wave, self._factor, self._sigma, self.model, self._stack)
        if self.extrapolation is None:
            return fingerprint("template-correction", self._wave, self._factor, self._sigma, self.model, self._stack,
                               self._residuals)
        return fingerprint("template-correction", self._wave, self._factor, self._sigma, self.model, self._stack,
                           self._residuals, self.extrapolation)

    @property
    def label(self):
        """``name:fingerprint`` as recorded in headers (``FCALTCOR``)."""
        return f"{self.name}:{self.fingerprint[:12]}"

    def factor_at(self, wavelength):
        """The factor at ``wavelength`` (Å; a Quantity or plain floats), held at the ends."""
        wave = u.Quantity(wavelength, u.AA).to_value(u.AA) if isinstance(wavelength, u.Quantity) else wavelength
        return np.interp(np.asarray(wave, dtype=np.float64), self._wave, self._factor)

    def covers(self, teff, feh):
        """Whether a template or star of ``teff`` (K) and ``feh`` (dex) lies inside the correction's domain.

        A correction without a model covers everything.
        """
        if self.model is None:
            return True
        domain = self.model["domain"]
        return bool(domain["teff"][0] <= float(teff) <= domain["teff"][1]
                    and domain["feh"][0] <= float(feh) <= domain["feh"][1])

    def factor_for(self, wavelength, teff, feh):
        """The factor a template of ``teff`` (K) and ``feh`` (dex) receives at ``wavelength`` (Å).

        Without a model: `factor_at`. With a ``'feh-kernel'`` model: the
        kernel-weighted mean of the training curves at ``feh`` inside the
        domain, 1 outside it.
        """
        if self.model is None:
            return self.factor_at(wavelength)
        wave = u.Quantity(wavelength, u.AA).to_value(u.AA) if isinstance(wavelength, u.Quantity) else wavelength
        wave = np.asarray(wave, dtype=np.float64)
        if not self.covers(teff, feh):
            return np.ones(wave.shape)
        curve = kernel_factor(self._stack, self._train_feh, float(self.model["bandwidth_dex"]), float(feh),
                              shrink=bool(self.model.get("shrinkage", False)))
        return np.interp(wave, self._wave, curve)

    def fractional_sigma(self, wavelength):
        """Fractional 1σ template-misfit uncertainty at ``wavelength`` (Å, ndarray), held at the ends.

        This is the signature of ``EngineOptions.template_misfit``: the
        combined calibration's variance gains (fraction × C)².
        """
        return np.interp(np.asarray(wavelength, dtype=np.float64), self._wave, self._sigma)

    def _kernel_weights(self, feh):
        """The training stars' normalised [M/H]-kernel weights at ``feh`` (dex), held at the training span."""
        feh = float(np.clip(float(feh), np.min(self._train_feh), np.max(self._train_feh)))
        weights = np.exp(-0.5 * ((self._train_feh - feh) / float(self.model["bandwidth_dex"])) ** 2)
        return weights / np.sum(weights)

    def distance(self, teff, feh):
        """How far a star of ``teff`` (K) and ``feh`` (dex) lies beyond the training span, in domain margins.

        0 inside the span or without an extrapolation term
        (`distance_beyond`).
        """
        if self.extrapolation is None or self.model is None:
            return 0.0
        return distance_beyond(float(teff), float(feh), self.model["span"], self.model["distance_unit"])

    def _extrapolation_variance(self, teff, feh):
        """(d × growth)² on the table grid: what a star d margins beyond the training span adds."""
        if self.extrapolation is None:
            return np.zeros(self._wave.size)
        return (self.distance(teff, feh) * self.extrapolation) ** 2

    def _loo_variance(self, feh):
        """The kernel-weighted mean square of the leave-one-out residuals at ``feh``, on the table grid, floored."""
        variance = self._kernel_weights(feh) @ self._residuals**2
        return np.maximum(variance, float(self.model.get("sigma_floor", 0.0)) ** 2)

    def sigma_for(self, wavelength, teff, feh):
        """Fractional 1σ misfit of a star of ``teff`` (K) and ``feh`` (dex) after correction, at ``wavelength`` (Å).

        With the training stars' leave-one-out residuals (``residuals``): their
        kernel-weighted rms at ``feh`` (the model's bandwidth; held at the
        training span), at least ``model['sigma_floor']`` — how well the
        correction predicted the training stars most like this one — and,
        for a star d domain margins beyond the training span, the
        extrapolation term d × ``extrapolation`` added in quadrature.
        Otherwise `fractional_sigma`.
        """
        if self._residuals is None or self.model is None:
            return self.fractional_sigma(wavelength)
        variance = self._loo_variance(feh) + self._extrapolation_variance(teff, feh)
        return np.interp(np.asarray(wavelength, dtype=np.float64), self._wave, np.sqrt(variance))

    def sigma_parts(self, wavelength, teff, feh):
        """The shared and the star's own parts of `sigma_for`, at ``wavelength`` (Å).

        A new star's misfit after correction is partly the error of the
        kernel mean at its [M/H] — which every star of similar [M/H] shares —
        and partly the star's own departure from the mean of stars like it,
        which is independent from star to star. The own part is the
        kernel-weighted scatter of the training curves about their kernel
        mean at ``feh`` (unbiased for the weights: divided by 1 − Σŵ², at
        least ½), at most the kernel rms of `sigma_for`; the shared part is
        the rest of `sigma_for` (with the whole extrapolation term: stars
        beyond the span on one side err together), so that own² + shared² is
        the square of `sigma_for`.

        Returns
        -------
        shared, own : ndarray
            Fractional 1σ at ``wavelength``.
        """
        wave = np.asarray(wavelength, dtype=np.float64)
        if self._residuals is None or self.model is None:
            return self.fractional_sigma(wave), np.zeros(wave.shape)
        shared2, own2 = self._variance_parts(teff, feh)
        return (np.interp(wave, self._wave, np.sqrt(shared2)), np.interp(wave, self._wave, np.sqrt(own2)))

    def _variance_parts(self, teff, feh):
        weights = self._kernel_weights(feh)
        mean = weights @ self._stack
        scatter = weights @ (self._stack / mean - 1.0) ** 2 / max(1.0 - float(np.sum(weights**2)), 0.5)
        total = self._loo_variance(feh)
        own2 = np.minimum(scatter, total)
        return total - own2 + self._extrapolation_variance(teff, feh), own2

    def misfit_for_standards(self, standards, floor=None, weights=None):
        """The template-misfit term of a frame whose used standards have the fitted ``standards`` parameters.

        The combined vector is the mean of the standards' vectors, so its
        misfit is the mean of theirs. Without leave-one-out residuals each
        standard inside the domain contributes `sigma_for` at its own fitted
        Teff and [M/H] and the term is their rms (shared, not averaged down).
        With them each misfit is split (`sigma_parts`): the standards' own
        parts average down, σ²_own = Σ own²/N²; their shared parts are
        correlated as the kernel means they come from, ρ_jk = ŵ_j·ŵ_k /
        (‖ŵ_j‖ ‖ŵ_k‖) with ŵ the training stars' kernel weights at each
        standard's [M/H] (1 for stars of one [M/H], 0 for stars the kernel
        sees through disjoint training stars), σ²_shared = Σ ρ_jk s_j s_k / N².
        A standard beyond the training span has its kernel held at the span's
        end and the extrapolation term in its shared part (`sigma_for`); with
        an extrapolation term that rule holds outside the domain too, where
        the standard's template is uncorrected (the term was learned from
        stars held out that far). A correction without one gives standards
        outside the domain the library ``floor``, which they all share (none
        when None): it adds (n_out/N)² floor².

        Parameters
        ----------
        standards : sequence of (float, float)
            (Teff in K, [M/H] in dex) of each used standard.
        floor : callable, optional
            λ (Å, ndarray) → the library's fractional misfit floor.
        weights : tuple of (ndarray, ndarray), optional
            (λ in Å, shape (n_λ,); each standard's normalised weight in the
            combined shape, shape (n_standards, n_λ)) when the combination
            weighed the standards by their misfit
            (`~kspec_fluxcal.combine.combine_calibration_vectors`): then
            σ² = Σ ρ_jk w_j w_k s_j s_k + Σ w_j² own_j² at each λ instead of
            the equal weights 1/N (only when every standard is modelled).

        Returns
        -------
        function
            λ (Å, ndarray) → fractional 1σ.
        int
            How many standards lie inside the domain.
        """
        standards = [(float(t), float(f)) for t, f in standards]
        inside = [self.covers(t, f) for t, f in standards]
        n_in = int(sum(inside))
        if self._residuals is None or self.model is None:
            return self._rms_misfit(standards, inside, floor), n_in
        n_all = len(standards)
        modelled = [s for s, covered in zip(standards, inside) if covered or self.extrapolation is not None]
        variance = np.zeros(self._wave.size)
        if modelled:
            parts = [self._variance_parts(t, f) for t, f in modelled]
            shared = np.sqrt(np.array([p[0] for p in parts]))
            kernels = np.array([self._kernel_weights(f) for _, f in modelled])
            gram = kernels @ kernels.T
            norm = np.sqrt(np.diag(gram))
            rho = gram / np.outer(norm, norm)
            variance = (np.einsum("jk,jl,kl->l", rho, shared, shared) + sum(p[1] for p in parts)) / n_all**2
            if weights is not None and len(modelled) == n_all:
                grid, w = np.asarray(weights[0], dtype=np.float64), np.asarray(weights[1], dtype=np.float64)
                if w.shape != (n_all, grid.size):
                    raise ValueError(f"weights of shape {w.shape} for {n_all} standards on {grid.size} wavelengths")
                shared_w = w * np.array([np.interp(grid, self._wave, row) for row in shared])
                own_w = w**2 * np.array([np.interp(grid, self._wave, p[1]) for p in parts])
                on_grid = np.einsum("jk,jl,kl->l", rho, shared_w, shared_w) + own_w.sum(axis=0)
                variance = np.interp(self._wave, grid, on_grid)

        def misfit(wavelength):
            wave = np.asarray(wavelength, dtype=np.float64)
            if not inside:
                return self.fractional_sigma(wave)
            out = np.interp(wave, self._wave, variance)
            if floor is not None and len(modelled) < n_all:
                out = out + ((n_all - n_in) / n_all) ** 2 * np.asarray(floor(wave), dtype=np.float64) ** 2
            return np.sqrt(out)

        return misfit, n_in

    def _rms_misfit(self, standards, inside, floor):
        n_in = int(sum(inside))

        def misfit(wavelength):
            wave = np.asarray(wavelength, dtype=np.float64)
            if not inside:
                return self.fractional_sigma(wave)
            out = np.zeros(wave.shape)
            for (teff, feh), covered in zip(standards, inside):
                if covered:
                    out += self.sigma_for(wave, teff, feh) ** 2
            if floor is not None and n_in < len(inside):
                out += (len(inside) - n_in) * np.asarray(floor(wave), dtype=np.float64) ** 2
            return np.sqrt(out / len(inside))

        return misfit

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
        for name, values in self.residuals.items():
            table[f"loo_{name}"] = values
        if self.extrapolation is not None:
            table["extrapolation"] = self.extrapolation
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
        residuals = {c[4:]: np.asarray(table[c], float) for c in table.colnames if c.startswith("loo_")}
        extrapolation = np.asarray(table["extrapolation"], float) if "extrapolation" in table.colnames else None
        return cls(wave, np.asarray(table["factor"]), np.asarray(table["sigma"]), meta, curves, residuals,
                   extrapolation)


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
