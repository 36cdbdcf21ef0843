"""QC figures of the telluric transmission: one panel per window, every star's estimate and the combination."""

import logging
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .exceptions import InputDataError

__all__ = ["plot_telluric_window", "save_telluric_figures"]

log = logging.getLogger(__name__)


def plot_telluric_window(transmission, window, margin=20.0):
    """A figure of one telluric window: each star's transmission, the combined one with ±1σ, masked pixels.

    Parameters
    ----------
    transmission : `~kspec_fluxcal.telluric.TelluricTransmission`
        With ``per_star`` (as derived on the standards).
    window : tuple of float
        (start, end) of the window, Å.
    margin : float
        Å shown on either side of the window.

    Returns
    -------
    `~matplotlib.figure.Figure`
    """
    if transmission.per_star is None:
        raise InputDataError("this transmission has no per-star estimates (it was read from a file); "
                             "QC figures need the derivation's own result.")
    a, b = window
    wave = transmission.wavelength
    sel = (wave >= a - margin) & (wave <= b + margin)
    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    names = transmission.star_names or [f"star {i + 1}" for i in range(transmission.per_star.shape[0])]
    for row, name in zip(transmission.per_star, names):
        ax.plot(wave[sel], row[sel], lw=0.6, alpha=0.6, label=str(name))
    t = transmission.transmission[sel]
    sigma = np.sqrt(transmission.variance[sel])
    ax.fill_between(wave[sel], t - sigma, t + sigma, color="k", alpha=0.25, lw=0)
    ax.plot(wave[sel], t, color="k", lw=1.2, label="combined")
    masked = transmission.mask[sel]
    if masked.any():
        ax.plot(wave[sel][masked], np.zeros(np.count_nonzero(masked)), "r|", ms=8, label="masked")
    ax.axvspan(a, b, color="0.9", zorder=-1)
    ax.set_xlabel("observed air wavelength (Å)")
    ax.set_ylabel("transmission")
    ax.set_title(f"telluric window {a:.0f}–{b:.0f} Å ({transmission.n_stars} standards)")
    ax.set_ylim(-0.05, 1.15)
    ax.legend(fontsize=6, ncol=3, loc="lower left")
    return fig


def save_telluric_figures(transmission, directory, prefix="fluxcal", dpi=110):
    """Write ``{prefix}_telluric_{start}.png`` for every corrected window; return the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for a, b in transmission.windows:
        fig = plot_telluric_window(transmission, (a, b))
        path = directory / f"{prefix}_telluric_{a:.0f}.png"
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    log.info("wrote %d telluric QC figure(s) to %s", len(paths), directory)
    return paths
