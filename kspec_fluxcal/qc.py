"""Quality-control figures and text summaries of a flux calibration.

Every plotting function returns a `matplotlib.figure.Figure` built with the
object-oriented API (no pyplot state is created or left behind). Single-panel
functions accept an ``ax`` to draw into; multi-panel ones accept an empty
``fig``. Masked pixels are never drawn: they are NaN in the plotted data, so
lines show gaps there. Rejected standard stars are drawn dashed and grey and
labelled with the reason for their rejection.

Wavelengths are in Å (air) throughout; fractional residuals are shown in
percent and photometric residuals in magnitudes (synthetic − observed).
"""

import logging
from pathlib import Path

import numpy as np
from astropy import units as u
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from specutils import Spectrum

from .containers import FLAM, spectrum_variance
from .exceptions import InputDataError

__all__ = [
    "plot_calibration_summary",
    "plot_per_star_vectors",
    "plot_calibration_residuals",
    "plot_photometric_residuals",
    "plot_template_match",
    "plot_calibrated_spectrum",
    "summarize_calibration",
    "save_figures",
]

logger = logging.getLogger(__name__)

BAND_ORDER = (
    "sdss_u",
    "ps1_g",
    "sdss_g",
    "gaia_bp",
    "ps1_r",
    "sdss_r",
    "gaia_g",
    "ps1_i",
    "sdss_i",
    "gaia_rp",
    "ps1_z",
    "sdss_z",
    "ps1_y",
    "2mass_j",
    "2mass_h",
    "2mass_ks",
)
"""Known filter names in order of increasing pivot wavelength."""

MAX_LEGEND_ENTRIES = 12
"""Legends with more entries than this collapse the used stars into one entry."""

PHOT_TOLERANCE_MAG = 0.02
"""Half-width (mag) of the shaded band around zero in photometric-residual plots."""

SAVE_DPI = 110
"""Resolution (dots per inch) of the PNG files written by `save_figures`."""

_WAVELENGTH_LABEL = "Wavelength in air (Å)"
_REJECTED_STYLE = {"color": "0.55", "linestyle": "--", "linewidth": 0.9, "alpha": 0.9}

# Order and display names of unit bases in axis labels (energy, time, area, wavelength, counts).
_UNIT_RANK = {
    "erg": 0, "J": 0, "W": 0, "mW": 0,
    "s": 1,
    "cm": 2, "m": 2,
    "Angstrom": 3, "nm": 3, "um": 3,
    "ct": 4, "electron": 4, "adu": 4, "ph": 4,
}  # fmt: skip
_UNIT_TEXT = {"Angstrom": "Å", "um": "µm", "electron": "e$^{-}$"}


# --------------------------------------------------------------------------- helpers


def _unit_label(unit):
    """Render ``unit`` for an axis label, e.g. ``erg s$^{-1}$ cm$^{-2}$ Å$^{-1}$ ct$^{-1}$``.

    Positive powers come first, then energy, time, area, wavelength and
    counts in that order; a power-of-ten scale is written as ``10$^{n}$``.
    Dimensionless units give an empty string.
    """
    unit = u.Unit(unit)
    if unit == u.dimensionless_unscaled:
        return ""
    if unit == u.percent:
        return "%"
    parts = []
    bases = sorted(
        zip(unit.bases, unit.powers, strict=True),
        key=lambda bp: (bp[1] < 0, _UNIT_RANK.get(bp[0].to_string(), 5)),
    )
    for base, power in bases:
        name = base.to_string()
        text = _UNIT_TEXT.get(name, name)
        if power != 1:
            exponent = int(power) if float(power).is_integer() else float(power)
            text += f"$^{{{exponent}}}$"
        parts.append(text)
    scale = unit.scale
    if scale != 1:
        exponent = np.log10(abs(scale))
        prefix = f"10$^{{{int(round(exponent))}}}$" if np.isclose(exponent, round(exponent)) else f"{scale:g}"
        parts.insert(0, prefix)
    return " ".join(parts)


def _axis_label(name, unit, exponent=0):
    """``'name (10$^{e}$ unit)'``, ``'name (unit)'`` or ``'name'`` for dimensionless data."""
    text = _unit_label(unit)
    if exponent:
        text = f"10$^{{{exponent}}}$ {text}".strip()
    return f"{name} ({text})" if text else name


def _display_exponent(values):
    """Power of ten to factor out of ``values`` for display (0 when 0.01 ≤ median |value| < 1000)."""
    values = np.abs(np.asarray(values, dtype=float))
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return 0
    exponent = int(np.floor(np.log10(np.median(values))))
    return exponent if abs(exponent) >= 3 else 0


def _masked(values, mask):
    """Float copy of ``values`` with masked pixels set to NaN."""
    out = np.array(values, dtype=float)
    if mask is not None:
        out[np.asarray(mask, dtype=bool)] = np.nan
    return out


def _single_axes(ax, figsize):
    """``(figure, axes)``: a new one-panel figure, or ``ax`` and its root figure."""
    if ax is not None:
        return ax.get_figure(root=True), ax
    fig = _new_figure(figsize)
    return fig, fig.add_subplot()


def _new_figure(figsize):
    """A pyplot-free figure with constrained layout and an Agg canvas."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _empty_figure(fig, figsize):
    """``fig`` checked to hold no axes yet, or a new figure."""
    if fig is None:
        return _new_figure(figsize)
    if fig.axes:
        raise InputDataError("fig must be empty: it already holds axes.")
    return fig


def _float(value):
    """``value`` as a float; None, strings that are not numbers and Quantities handled."""
    if value is None:
        return np.nan
    if isinstance(value, dict) and "value" in value:  # a Quantity after a JSON round trip
        value = value["value"]
    if isinstance(value, u.Quantity):
        value = value.value
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _percent(value):
    """A fraction (float, dimensionless Quantity or JSON form) in percent, NaN if absent."""
    if isinstance(value, dict) and "value" in value:
        value = u.Quantity(value["value"], value.get("unit") or u.one)
    if isinstance(value, u.Quantity):
        return float(value.to_value(u.percent))
    return 100.0 * _float(value)


def _star_info(result, index):
    """The metadata of star ``index``: its vector's meta, completed from ``per_star_metrics``."""
    info = dict(result.per_star_vectors[index].meta)
    metrics = result.summary.get("per_star_metrics") or []
    match = None
    if len(metrics) == len(result.per_star_vectors):
        match = metrics[index]
    else:
        for record in metrics:
            if record.get("fiber_id") == info.get("fiber_id") and record.get("star_name") == info.get("star_name"):
                match = record
                break
    for key, value in (match or {}).items():
        info.setdefault(key, value)
    return info


def _is_used(info):
    """Whether a star's metadata says it entered the combination (default True)."""
    return bool(info.get("used", True))


def _star_label(info, index):
    """``'name (fiber N)'`` for a star, falling back to its position in the list."""
    name = info.get("star_name") or f"star {index + 1}"
    fiber = info.get("fiber_id")
    return f"{name} (fiber {fiber})" if fiber is not None else str(name)


def _line_label(info, index):
    """Legend label of a star's line, naming the rejection reason of a rejected star."""
    label = _star_label(info, index)
    if _is_used(info):
        return label
    return f"{label}: rejected ({info.get('reject_reason') or 'no reason given'})"


def _star_styles(result):
    """Per star: (info, label, line style dict); used stars coloured, rejected grey dashed."""
    infos = [_star_info(result, i) for i in range(len(result.per_star_vectors))]
    n_used = sum(_is_used(info) for info in infos)
    cmap_name = "tab10" if n_used <= 10 else "viridis"
    cmap = colormaps[cmap_name]
    styles = []
    k = 0
    for i, info in enumerate(infos):
        if _is_used(info):
            colour = cmap(k % 10) if cmap_name == "tab10" else cmap(k / max(n_used - 1, 1))
            style = {"color": colour, "linestyle": "-", "linewidth": 0.9}
            k += 1
        else:
            style = dict(_REJECTED_STYLE)
        styles.append((info, _line_label(info, i), style))
    return styles


def _legend_handles(styles):
    """Legend handles and labels: every star, or one entry for all used stars plus the rejected."""
    handles = [Line2D([], [], **style) for _, _, style in styles]
    labels = [label for _, label, _ in styles]
    if len(handles) <= MAX_LEGEND_ENTRIES:
        return handles, labels
    used = [s for s in styles if _is_used(s[0])]
    rejected = [s for s in styles if not _is_used(s[0])]
    out_h, out_l = [], []
    if used:
        out_h.append(Line2D([], [], **used[len(used) // 2][2]))
        out_l.append(f"{len(used)} used stars")
    if len(rejected) < MAX_LEGEND_ENTRIES:
        out_h += [Line2D([], [], **style) for _, _, style in rejected]
        out_l += [label for _, label, _ in rejected]
    elif rejected:
        out_h.append(Line2D([], [], **_REJECTED_STYLE))
        out_l.append(f"{len(rejected)} rejected stars (reasons in the text summary)")
    return out_h, out_l


def _add_legend(ax, styles):
    """A legend of the stars below the axes, where it hides no data."""
    if not styles:
        return
    handles, labels = _legend_handles(styles)
    ax.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncols=min(len(labels), 2),
        fontsize="small",
        frameon=False,
    )


def _no_data(ax, text):
    """Write ``text`` in the middle of an empty panel."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _residual_percent(result, index):
    """Wavelength (Å) and residual (%) of star ``index``, NaN where it or the combination is masked."""
    vec = result.per_star_vectors[index]
    res = result.per_star_residuals[index]
    res = res.to_value(u.percent) if isinstance(res, u.Quantity) else 100.0 * np.asarray(res, float)
    combined = result.combined_vector
    if res.shape == vec.wavelength.shape:
        wave, mask = vec.wavelength.to_value(u.AA), vec.mask
        if res.shape == combined.wavelength.shape:
            mask = mask | combined.mask
    elif res.shape == combined.wavelength.shape:
        wave, mask = combined.wavelength.to_value(u.AA), combined.mask
    else:
        raise InputDataError(
            f"per_star_residuals[{index}] has shape {res.shape}, matching neither the star's "
            f"wavelength grid {vec.wavelength.shape} nor the combined grid {combined.wavelength.shape}."
        )
    return wave, _masked(res, mask)


def _normalised_vector(vec):
    """A star's per-pixel calibration factor divided by its median over good pixels (NaN where masked)."""
    values = _masked(vec.cal_factor.value, vec.mask)
    good = values[np.isfinite(values) & (values > 0)]
    if good.size == 0:
        return np.full_like(values, np.nan)
    return values / np.median(good)


# --------------------------------------------------------------------------- panel drawers


def _form_label(vec):
    """'smooth' or 'per pixel': which form of the calibration ``vec`` holds (or applies)."""
    if vec.smooth_factor is not None or vec.meta.get("representation") == "smooth":
        return "smooth"
    return "per pixel"


def _draw_combined(ax, vec):
    """Combined vector with its ±1σ band: smooth form solid, per-pixel form faint behind it."""
    wave = vec.wavelength.to_value(u.AA)
    factor, variance = vec.best()
    exponent = _display_exponent(factor.value[~vec.mask])
    scale = 10.0**-exponent
    if vec.smooth_factor is not None:
        ax.plot(
            wave,
            _masked(vec.cal_factor.value, vec.mask) * scale,
            color="0.6",
            linewidth=0.5,
            alpha=0.6,
            label="per pixel",
            gid="combined-pixel",
        )
    y = _masked(factor.value, vec.mask) * scale
    sigma = np.sqrt(_masked(np.clip(variance.value, 0, None), vec.mask)) * scale
    ax.fill_between(wave, y - sigma, y + sigma, color="C0", alpha=0.3, linewidth=0, label="±1σ")
    ax.plot(
        wave,
        y,
        color="C0",
        linewidth=1.4,
        label=_form_label(vec),
        gid="combined",
    )
    ax.set_xlabel(_WAVELENGTH_LABEL)
    ax.set_ylabel(_axis_label("Calibration factor", vec.unit, exponent))
    ax.set_title("Combined calibration vector")
    ax.legend(fontsize="small", loc="upper right", frameon=False)


def _draw_per_star(ax, result, styles, normalize):
    """One line per star vector: per pixel, divided by its median when ``normalize``."""
    vectors = result.per_star_vectors
    if not vectors:
        _no_data(ax, "no per-star vectors")
        return
    exponent = 0
    if not normalize:
        exponent = _display_exponent(np.concatenate([_masked(v.cal_factor.value, v.mask) for v in vectors]))
    for i, (vec, (_, label, style)) in enumerate(zip(vectors, styles, strict=True)):
        if normalize:
            y = _normalised_vector(vec)
        else:
            y = _masked(vec.cal_factor.value, vec.mask) * 10.0**-exponent
        ax.plot(vec.wavelength.to_value(u.AA), y, label=label, gid=f"star:{i}", **style)
    ax.set_xlabel(_WAVELENGTH_LABEL)
    if normalize:
        ax.set_ylabel("Calibration factor / star median")
        ax.set_title("Per-star vectors (gray term removed)")
    else:
        ax.set_ylabel(_axis_label("Calibration factor", vectors[0].unit, exponent))
        ax.set_title("Per-star calibration vectors")


def _draw_residuals(ax, result, styles):
    """Each star's fractional deviation from the combined vector (%), against wavelength."""
    if not result.per_star_residuals:
        _no_data(ax, "no per-star residuals")
        return
    ax.axhline(0.0, color="k", linewidth=0.8, gid="reference")
    used = []
    for i, (info, label, style) in enumerate(styles):
        wave, res = _residual_percent(result, i)
        ax.plot(wave, res, label=label, gid=f"star:{i}", **style)
        if _is_used(info):
            used.append(res)
    ax.set_xlabel(_WAVELENGTH_LABEL)
    ax.set_ylabel("Star / combined − 1 (%)")
    title = "Per-star residuals"
    values = np.concatenate(used) if used else np.array([])
    values = values[np.isfinite(values)]
    if values.size and len(used) < len(styles):
        # keep the used stars readable: a rejected star may run off the axes
        lo, hi = np.percentile(values, [0.1, 99.9])
        pad = 0.25 * max(hi - lo, 0.1)
        ax.set_ylim(min(lo, 0.0) - pad, max(hi, 0.0) + pad)
        title += " (y range fits the used stars)"
    ax.set_title(title)


def _draw_histogram(ax, result, styles):
    """Histogram of the used stars' residual pixels (%), outliers piled in the edge bins."""
    chunks = []
    if result.per_star_residuals:
        chunks = [_residual_percent(result, i)[1] for i, (info, _, _) in enumerate(styles) if _is_used(info)]
    values = np.concatenate(chunks) if chunks else np.array([])
    values = values[np.isfinite(values)]
    ax.set_xlabel("Star / combined − 1 (%)")
    ax.set_ylabel("Pixels")
    ax.set_title("Residual distribution (used stars)")
    if values.size == 0:
        _no_data(ax, "no finite residuals")
        return
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    n_clipped = int(np.count_nonzero((values < lo) | (values > hi)))
    bins = int(np.clip(np.sqrt(values.size), 10, 80))
    counts, _, _ = ax.hist(np.clip(values, lo, hi), bins=bins, range=(lo, hi), color="C0", alpha=0.75)
    ax.set_ylim(0, 1.45 * counts.max())  # headroom for the annotation
    rms = float(np.sqrt(np.mean(values**2)))
    lines = [f"pixel rms = {rms:.2f} %", f"{values.size} px, {len(chunks)} stars"]
    summary_rms = _percent(result.summary.get("rms_scatter"))
    if np.isfinite(summary_rms):
        lines.insert(0, f"rms scatter (summary) = {summary_rms:.2f} %")
    if n_clipped:
        lines.append(f"{n_clipped} px beyond the range piled in the edge bins")
    ax.text(
        0.02,
        0.97,
        "\n".join(lines),
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize="small",
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"},
    )


# --------------------------------------------------------------------------- public figures


def _counts(result, styles):
    """(n used, n rejected): from the summary when it says so, else counted from the stars."""
    n_used = result.summary.get("n_stars_used")
    n_rejected = result.summary.get("n_stars_rejected")
    if n_used is None:
        n_used = sum(_is_used(info) for info, _, _ in styles)
    if n_rejected is None:
        n_rejected = sum(not _is_used(info) for info, _, _ in styles)
    return int(n_used), int(n_rejected)


def plot_calibration_summary(result, fig=None):
    """Four-panel overview of a flux calibration.

    Panels: the combined vector with its ±1σ band (smooth form solid when
    present, per-pixel form faint behind it); the per-star vectors divided by
    their own medians (gray terms removed); the per-star fractional residuals
    from the combined vector against wavelength (%); and the histogram of the
    used stars' residual pixels (%) with their rms.

    Parameters
    ----------
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        The calibration to show.
    fig : `~matplotlib.figure.Figure`, optional
        An empty figure to draw into; a 13 × 9 inch one is made otherwise.

    Returns
    -------
    `~matplotlib.figure.Figure`
    """
    fig = _empty_figure(fig, (13, 9))
    (ax_comb, ax_star), (ax_res, ax_hist) = fig.subplots(2, 2)
    ax_star.sharex(ax_comb)
    ax_res.sharex(ax_comb)
    styles = _star_styles(result)
    _draw_combined(ax_comb, result.combined_vector)
    _draw_per_star(ax_star, result, styles, normalize=True)
    _draw_residuals(ax_res, result, styles)
    _draw_histogram(ax_hist, result, styles)
    if styles:
        handles, labels = _legend_handles(styles)
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=min(len(labels), 3),
            fontsize="small",
            frameon=False,
        )
    n_used, n_rejected = _counts(result, styles)
    rms = _percent(result.summary.get("rms_scatter"))
    rms_text = f", rms scatter {rms:.2f} %" if np.isfinite(rms) else ""
    fig.suptitle(f"Flux calibration: {n_used} standard stars used, {n_rejected} rejected{rms_text}")
    return fig


def plot_per_star_vectors(result, normalize=True, ax=None):
    """The per-pixel calibration vector of every standard star, one line each.

    Parameters
    ----------
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        The calibration to show.
    normalize : bool, optional
        Divide each vector by its median over good pixels (removes the gray
        term, so shapes compare directly). Otherwise plot the factors in
        their unit.
    ax : `~matplotlib.axes.Axes`, optional
        Axes to draw into; a new figure is made otherwise.

    Returns
    -------
    `~matplotlib.figure.Figure`
    """
    fig, ax = _single_axes(ax, (10, 5))
    styles = _star_styles(result)
    _draw_per_star(ax, result, styles, normalize)
    _add_legend(ax, styles)
    return fig


def plot_calibration_residuals(result, ax=None):
    """Each star's fractional deviation from the combined vector (%) against wavelength.

    Parameters
    ----------
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        The calibration to show.
    ax : `~matplotlib.axes.Axes`, optional
        Axes to draw into; a new figure is made otherwise.

    Returns
    -------
    `~matplotlib.figure.Figure`
    """
    fig, ax = _single_axes(ax, (10, 5))
    styles = _star_styles(result)
    _draw_residuals(ax, result, styles)
    _add_legend(ax, styles)
    return fig


def _band_order(names):
    """``names`` sorted by `BAND_ORDER` (case-insensitive); unknown bands follow in given order."""
    rank = {name: i for i, name in enumerate(BAND_ORDER)}
    return sorted(names, key=lambda n: rank.get(n.lower(), len(BAND_ORDER)))


def plot_photometric_residuals(result, ax=None):
    """Synthetic − observed magnitude of every star in every band.

    Bands run along the x axis by increasing wavelength (`BAND_ORDER`);
    each star's points are offset slightly sideways and joined by a thin
    line. A zero line and a ±0.02 mag band guide the eye.

    Parameters
    ----------
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        The calibration to show; residuals come from each star's
        ``band_residuals`` (mag).
    ax : `~matplotlib.axes.Axes`, optional
        Axes to draw into; a new figure is made otherwise.

    Returns
    -------
    `~matplotlib.figure.Figure`
    """
    fig, ax = _single_axes(ax, (10, 5))
    styles = _star_styles(result)
    residuals = [info.get("band_residuals") or {} for info, _, _ in styles]
    bands = _band_order(list(dict.fromkeys(b for r in residuals for b in r)))
    ax.set_ylabel("Synthetic − observed (mag)")
    ax.set_title("Photometric residuals")
    if not bands:
        _no_data(ax, "no band residuals")
        return fig
    ax.axhspan(
        -PHOT_TOLERANCE_MAG,
        PHOT_TOLERANCE_MAG,
        color="0.85",
        alpha=0.6,
        linewidth=0,
        label=f"±{PHOT_TOLERANCE_MAG} mag",
    )
    ax.axhline(0.0, color="k", linewidth=0.8, gid="reference")
    n = len(styles)
    offsets = np.linspace(-0.25, 0.25, n) if n > 1 else np.zeros(1)
    styles = [(info, label, {**style, "marker": "o" if _is_used(info) else "x"}) for info, label, style in styles]
    for i, ((_, label, style), res) in enumerate(zip(styles, residuals, strict=True)):
        y = np.array([_float(res.get(b)) for b in bands])
        ax.plot(np.arange(len(bands)) + offsets[i], y, markersize=5, label=label, gid=f"star:{i}", **style)
    ax.set_xticks(np.arange(len(bands)), bands)
    ax.set_xlabel("Band (increasing wavelength)")
    ax.set_xlim(-0.6, len(bands) - 0.4)
    _add_legend(ax, styles)
    return fig


def _spectrum_parts(obj, name):
    """``(wavelength Å or None, values Quantity, variance Quantity or None, mask or None)``."""
    if isinstance(obj, Spectrum):
        return (
            obj.spectral_axis.to_value(u.AA),
            u.Quantity(obj.flux),
            spectrum_variance(obj),
            None if obj.mask is None else np.asarray(obj.mask, dtype=bool),
        )
    if obj is None:
        raise InputDataError(f"{name} is required.")
    return None, u.Quantity(obj), None, None


def _format_params(params):
    """``'Teff = 6250 K, log g = 4.50, [M/H] = −0.50, RV = +12.3 km/s'`` from a parameter dict."""
    formats = (
        ("teff", "$T_\\mathrm{{eff}}$ = {:.0f} K"),
        ("logg", "log g = {:.2f}"),
        ("feh", "[M/H] = {:+.2f}"),
        ("alpha_m", "[α/M] = {:+.2f}"),
        ("rv_kms", "RV = {:+.1f} km/s"),
        ("ebv", "E(B−V) = {:.3f}"),
    )
    parts = []
    for key, fmt in formats:
        value = _float(params.get(key))
        if np.isfinite(value):
            parts.append(fmt.format(value))
    return ", ".join(parts)


def plot_template_match(wavelength, observed, model, variance=None, mask=None, title=None, params=None, fig=None):
    """A standard star's spectrum with its best template over it and the residual below.

    Pass continuum-normalised spectra (dimensionless) for the normalised
    view; spectra with a unit are plotted in it. The lower panel shows the
    residual observed / model − 1 in percent, with the ±1σ band.

    Parameters
    ----------
    wavelength : `~astropy.units.Quantity` or array_like or None
        Wavelengths (Å when plain). May be None when ``observed`` is a
        `~specutils.Spectrum`, whose spectral axis is then used.
    observed : `~astropy.units.Quantity`, array_like or `~specutils.Spectrum`
        Observed spectrum. A Spectrum also supplies ``variance`` and
        ``mask`` when those are not given.
    model : `~astropy.units.Quantity`, array_like or `~specutils.Spectrum`
        Best-fitting template, on the same grid or as a Spectrum (then
        interpolated onto ``wavelength``). Converted to the observed unit; a
        plain array takes it.
    variance : `~astropy.units.Quantity` or array_like, optional
        Variance of ``observed`` (its unit squared), drawn as a ±1σ band and
        used for the reduced χ² printed on the residual panel.
    mask : array_like of bool, optional
        True marks bad pixels; they are not drawn.
    title : str, optional
        First line of the title (e.g. the star's name).
    params : dict, optional
        ``teff`` (K), ``logg``, ``feh``, ``alpha_m``, ``rv_kms`` (km/s),
        ``ebv`` (mag); the finite ones are shown in the title.
    fig : `~matplotlib.figure.Figure`, optional
        An empty figure to draw into.

    Returns
    -------
    `~matplotlib.figure.Figure`
        Two panels sharing the wavelength axis.
    """
    obs_wave, obs, obs_var, obs_mask = _spectrum_parts(observed, "observed")
    if wavelength is None:
        if obs_wave is None:
            raise InputDataError("wavelength is required unless observed is a Spectrum.")
        wave = obs_wave
    else:
        wave = u.Quantity(wavelength, u.AA).to_value(u.AA)
    if obs.shape != wave.shape:
        raise InputDataError(f"observed has shape {obs.shape} but wavelength has shape {wave.shape}.")
    model_wave, mod, _, _ = _spectrum_parts(model, "model")
    if model_wave is not None and not np.array_equal(model_wave, wave):
        mod = np.interp(wave, model_wave, mod.value, left=np.nan, right=np.nan) * mod.unit
    if mod.shape != wave.shape:
        raise InputDataError(f"model has shape {mod.shape} but wavelength has shape {wave.shape}.")
    if mod.unit == u.one and obs.unit != u.one and not isinstance(model, u.Quantity | Spectrum):
        mod = mod.value * obs.unit
    try:
        mod = mod.to(obs.unit, equivalencies=u.spectral_density(wave * u.AA))
    except u.UnitConversionError as exc:
        raise InputDataError(f"model unit '{mod.unit}' does not convert to observed unit '{obs.unit}'.") from exc
    if variance is not None:
        obs_var = u.Quantity(variance, obs.unit**2)
    if mask is not None:
        obs_mask = np.asarray(mask, dtype=bool)

    exponent = _display_exponent(obs.value)
    scale = 10.0**-exponent
    y_obs = _masked(obs.value, obs_mask) * scale
    y_mod = mod.value * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_model = np.where(y_mod != 0, 100.0 / y_mod, np.nan)  # residuals in % of the model

    fig = _empty_figure(fig, (11, 6))
    ax_top, ax_res = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    sigma = None
    if obs_var is not None:
        sigma = np.sqrt(_masked(np.clip(obs_var.to_value(obs.unit**2), 0, None), obs_mask)) * scale
        ax_top.fill_between(wave, y_obs - sigma, y_obs + sigma, color="0.7", linewidth=0, label="±1σ")
        ax_res.fill_between(wave, -sigma * np.abs(inv_model), sigma * np.abs(inv_model), color="0.7", linewidth=0)
    ax_top.plot(wave, y_obs, color="k", linewidth=0.7, label="observed", gid="observed")
    ax_top.plot(wave, y_mod, color="C3", linewidth=0.9, alpha=0.9, label="best template", gid="model")
    ax_top.legend(fontsize="small", loc="upper right", frameon=False)
    name = "Continuum-normalised flux" if obs.unit == u.one else "Flux"
    ax_top.set_ylabel(_axis_label(name, obs.unit, exponent))
    ax_res.axhline(0.0, color="C3", linewidth=0.8, gid="reference")
    ax_res.plot(wave, (y_obs - y_mod) * inv_model, color="k", linewidth=0.6, gid="residual")
    ax_res.set_ylabel("Obs. / model − 1 (%)")
    ax_res.set_xlabel(_WAVELENGTH_LABEL)
    if sigma is not None:
        good = np.isfinite(y_obs - y_mod) & np.isfinite(sigma) & (sigma > 0)
        if good.any():
            chi2 = float(np.mean(((y_obs - y_mod)[good] / sigma[good]) ** 2))
            ax_res.text(
                0.01,
                0.95,
                f"χ²/N = {chi2:.2f} ({good.sum()} px)",
                transform=ax_res.transAxes,
                ha="left",
                va="top",
                fontsize="small",
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
            )
    lines = [title or "Template match"]
    if params:
        lines.append(_format_params(params))
    ax_top.set_title("\n".join(line for line in lines if line))
    return fig


def plot_calibrated_spectrum(spectrum, truth=None, title=None, ax=None):
    """A flux-calibrated spectrum with its ±1σ band; NaN or masked pixels show as gaps.

    Parameters
    ----------
    spectrum : `~specutils.Spectrum`
        Calibrated spectrum; its flux must convert to erg s⁻¹ cm⁻² Å⁻¹.
    truth : `~specutils.Spectrum` or `~astropy.units.Quantity`, optional
        The true flux density to overlay: a Spectrum (any grid) or a
        Quantity on the spectrum's grid.
    title : str, optional
        Axes title.
    ax : `~matplotlib.axes.Axes`, optional
        Axes to draw into; a new figure is made otherwise.

    Returns
    -------
    `~matplotlib.figure.Figure`
    """
    if not isinstance(spectrum, Spectrum):
        raise InputDataError(f"spectrum must be a specutils Spectrum; got {type(spectrum).__name__}.")
    wave = spectrum.spectral_axis.to_value(u.AA)
    equiv = u.spectral_density(wave * u.AA)
    try:
        flux = u.Quantity(spectrum.flux).to_value(FLAM, equivalencies=equiv)
    except u.UnitConversionError as exc:
        raise InputDataError(
            f"spectrum flux has unit '{spectrum.flux.unit}', which is not a flux density; "
            "plot_calibrated_spectrum shows calibrated spectra."
        ) from exc
    flux = _masked(flux, spectrum.mask)
    exponent = _display_exponent(flux)
    scale = 10.0**-exponent
    fig, ax = _single_axes(ax, (11, 4.5))
    variance = spectrum_variance(spectrum)
    if variance is not None:
        # the conversion to FLAM is linear at each pixel, so σ scales by the flux ratio
        raw = np.asarray(spectrum.flux.value, dtype=float)
        ratio = np.divide(flux, raw, out=np.full_like(flux, np.nan), where=raw != 0)
        sigma = np.sqrt(np.clip(variance.value, 0, None)) * np.abs(ratio)
        ax.fill_between(
            wave,
            (flux - sigma) * scale,
            (flux + sigma) * scale,
            color="C0",
            alpha=0.3,
            linewidth=0,
            label="±1σ",
        )
    ax.plot(wave, flux * scale, color="C0", linewidth=0.8, label="calibrated", gid="calibrated")
    if truth is not None:
        if isinstance(truth, Spectrum):
            t_wave = truth.spectral_axis.to_value(u.AA)
            t_flux = _masked(
                u.Quantity(truth.flux).to_value(FLAM, equivalencies=u.spectral_density(t_wave * u.AA)),
                truth.mask,
            )
        else:
            t_wave = wave
            t_flux = u.Quantity(truth).to_value(FLAM, equivalencies=equiv)
            if t_flux.shape != wave.shape:
                raise InputDataError(
                    f"truth has shape {t_flux.shape} but the spectrum has {wave.shape} pixels; "
                    "give a Spectrum to overlay a truth on another grid."
                )
        ax.plot(t_wave, t_flux * scale, color="C3", linewidth=0.9, alpha=0.85, label="truth", gid="truth")
    ax.set_xlim(wave[0], wave[-1])
    ax.set_xlabel(_WAVELENGTH_LABEL)
    ax.set_ylabel(_axis_label("Flux density", FLAM, exponent))
    ax.set_title(title or "Calibrated spectrum")
    ax.legend(fontsize="small", loc="upper right", frameon=False)
    return fig


# --------------------------------------------------------------------------- text and files


def _fmt(value, spec):
    """``value`` formatted with ``spec``, or ``'-'`` when missing or not finite."""
    value = _float(value) + 0.0  # + 0.0 turns -0.0 into 0.0
    return format(value, spec) if np.isfinite(value) else "-"


def _wavelength_range_text(value):
    """``'3600.0–9800.0 Å'`` from a (min, max) pair of Quantities, floats (Å) or JSON forms."""
    if value is None:
        return "-"
    if isinstance(value, dict) and "value" in value:
        value = u.Quantity(value["value"], value.get("unit") or u.AA)
    values = [
        _float(v) if not isinstance(v, u.Quantity) else v.to_value(u.AA)
        for v in (value if not isinstance(value, u.Quantity) else value.to(u.AA))
    ]
    if len(values) != 2:
        return str(value)
    return f"{values[0]:.1f}–{values[1]:.1f} Å"


def summarize_calibration(result):
    """A plain-text report of a flux calibration.

    Parameters
    ----------
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        The calibration to describe.

    Returns
    -------
    str
        Several lines: the numbers of stars used and rejected, the rms
        scatter between stars (%), the wavelength range (Å) and one table
        row per standard star (fiber, name, Teff, log g, [M/H], RV, E(B−V),
        scale, χ²/ν, and "used" or the rejection reason).
    """
    records = result.summary.get("per_star_metrics") or [
        _star_info(result, i) for i in range(len(result.per_star_vectors))
    ]
    n_used = result.summary.get("n_stars_used", sum(_is_used(r) for r in records))
    n_rejected = result.summary.get("n_stars_rejected", sum(not _is_used(r) for r in records))
    combined = result.combined_vector
    wave_range = result.summary.get("wavelength_range")
    if wave_range is None:
        good = combined.wavelength[~combined.mask]
        wave_range = (good.min(), good.max()) if good.size else None
    rms = _percent(result.summary.get("rms_scatter"))
    unit_form = "smooth form" if _form_label(combined) == "smooth" else "per pixel"
    items = [
        ("standard stars used", str(n_used)),
        ("standard stars rejected", str(n_rejected)),
        ("rms scatter between stars", f"{_fmt(rms, '.2f')} %"),
        ("wavelength range", _wavelength_range_text(wave_range)),
        ("calibration unit", f"{combined.unit.to_string()} ({unit_form})"),
    ]
    width = max(len(key) for key, _ in items)
    lines = ["Flux calibration summary"] + [f"  {key.ljust(width)} : {value}" for key, value in items]
    header = ("fiber", "name", "Teff", "logg", "[M/H]", "RV", "E(B-V)", "scale", "chi2/nu", "status")
    rows = []
    for rec in records:
        ndof = _float(rec.get("ndof"))
        chi2_nu = _float(rec.get("chi2")) / ndof if ndof > 0 else np.nan
        status = "used" if _is_used(rec) else f"rejected: {rec.get('reject_reason') or 'no reason given'}"
        fiber = rec.get("fiber_id")
        rows.append(
            (
                "-" if fiber is None else str(fiber),
                str(rec.get("star_name") or "-"),
                _fmt(rec.get("teff"), ".0f"),
                _fmt(rec.get("logg"), ".2f"),
                _fmt(rec.get("feh"), "+.2f"),
                _fmt(rec.get("rv_kms"), "+.1f"),
                _fmt(rec.get("ebv"), ".3f"),
                _fmt(rec.get("scale_factor"), ".4g"),
                _fmt(chi2_nu, ".2f"),
                status,
            )
        )
    if rows:
        widths = [max(len(r[k]) for r in (header, *rows)) for k in range(len(header) - 1)]
        lines.append("")
        for row in (header, *rows):
            cells = [cell.rjust(w) if k != 1 else cell.ljust(w) for k, (cell, w) in enumerate(zip(row, widths))]
            lines.append("  " + "  ".join(cells) + "  " + row[-1])
    else:
        lines.append("  (no per-star records)")
    return "\n".join(lines)


def save_figures(result, directory, prefix="fluxcal", extra=None):
    """Write the QC figures of a calibration as PNG files.

    Parameters
    ----------
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        The calibration to show.
    directory : str or `~pathlib.Path`
        Output folder (created if needed).
    prefix : str, optional
        File-name prefix: files are ``{prefix}_summary.png``,
        ``{prefix}_per_star.png``, ``{prefix}_residuals.png``,
        ``{prefix}_photometry.png`` and ``{prefix}_{name}.png`` per extra.
    extra : dict of str → `~matplotlib.figure.Figure`, optional
        More figures to save (e.g. template matches), keyed by name.

    Returns
    -------
    list of `~pathlib.Path`
        The files written, in the order above. Every figure, the extra
        ones included, is closed after it is saved.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    figures = {
        "summary": plot_calibration_summary(result),
        "per_star": plot_per_star_vectors(result),
        "residuals": plot_calibration_residuals(result),
        "photometry": plot_photometric_residuals(result),
    }
    for name, fig in (extra or {}).items():
        if name in figures:
            raise InputDataError(f"extra figure name '{name}' clashes with a standard QC figure.")
        figures[name] = fig
    from matplotlib import pyplot as plt  # only to release figures the caller made with pyplot

    paths = []
    for name, fig in figures.items():
        path = directory / f"{prefix}_{name}.png"
        fig.savefig(path, dpi=SAVE_DPI)
        plt.close(fig)
        logger.debug("wrote QC figure %s", path)
        paths.append(path)
    logger.info("wrote %d QC figures to %s", len(paths), directory)
    return paths
