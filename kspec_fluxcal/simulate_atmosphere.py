"""SYNTHETIC atmosphere for tests and benchmarks: telluric lines and a site extinction curve.

Built independently of what `kspec_fluxcal.telluric` and
`kspec_fluxcal.atmosphere` do, so that they can be checked against it:

* telluric absorption is a forest of lines of known optical depth (O2 B and A
  bands, H2O bands inside the package's telluric windows, and weaker O2 γ and
  H2O bands outside them) on a fine grid (0.02 Å);
* a frame is imprinted the way a spectrograph makes it: each star's spectrum
  times the transmission on that fine grid, then the instrument's Gaussian
  (numpy, not the package's LSF code), then the fiber's pixels — so dividing
  the counts by the blurred transmission is not exact (`imprint_telluric`);
* the extinction curve is a table of a typical mid-altitude site, interpolated
  with a cubic spline in ln k — not of the Rayleigh + aerosol + ozone form the
  package fits.
"""

import numpy as np
from astropy import units as u

__all__ = [
    "TELLURIC_BANDS",
    "OUTSIDE_BANDS",
    "telluric_line_transmission",
    "observed_transmission",
    "stellar_absorption_ratio",
    "imprint_telluric",
    "SITE_EXTINCTION",
    "site_extinction",
    "extincted_calibration",
]

TELLURIC_BANDS = (
    # start, end (Å, air), peak optical depth, mean line spacing (Å), molecule
    (6867.0, 6940.0, 2.5, 1.0, "O2"),
    (7165.0, 7320.0, 1.2, 1.4, "H2O"),
    (7594.0, 7690.0, 4.0, 0.9, "O2"),
    (8110.0, 8350.0, 0.9, 1.6, "H2O"),
    (8930.0, 9190.0, 2.0, 1.1, "H2O"),
    (9310.0, 9640.0, 2.2, 1.0, "H2O"),
)
"""The synthetic bands inside the package's telluric windows: lines of random strength under a smooth envelope."""

OUTSIDE_BANDS = (
    (6276.0, 6310.0, 0.5, 0.9, "O2 gamma"),
    (6470.0, 6580.0, 0.25, 1.3, "H2O"),
)
"""Weaker synthetic bands outside the package's windows (``telluric_default``): never corrected there."""

_FINE_STEP = 0.02
_LINE_SIGMA = 0.12  # Å, intrinsic (pressure + Doppler) width of a telluric line


def _line_list(seed, strength=1.0):
    """(centres, peak optical depths) of every synthetic line, from ``seed``."""
    rng = np.random.default_rng(seed)
    centres, taus = [], []
    for a, b, tau_max, spacing, _ in TELLURIC_BANDS + OUTSIDE_BANDS:
        n = int((b - a) / spacing)
        c = np.sort(rng.uniform(a + 2, b - 2, n))
        envelope = np.sin(np.pi * (c - a) / (b - a)) ** 0.7
        centres.append(c)
        taus.append(strength * tau_max * envelope * rng.lognormal(-0.6, 0.7, n))
    return np.concatenate(centres), np.concatenate(taus)


def telluric_line_transmission(wavelength, seed=0, strength=1.0):
    """Transmission exp(−Σ τ_j φ_j(λ)) of the synthetic line forest at full (intrinsic) resolution.

    Parameters
    ----------
    wavelength : array_like
        Å (air); should sample the lines (step ≲ 0.05 Å).
    seed : int
        Which random line list.
    strength : float
        Multiplies every optical depth (e.g. the airmass and water column).
    """
    lam = np.asarray(wavelength, dtype=float)
    tau = np.zeros_like(lam)
    for c, t in zip(*_line_list(seed, strength)):
        lo, hi = np.searchsorted(lam, [c - 6 * _LINE_SIGMA, c + 6 * _LINE_SIGMA])
        tau[lo:hi] += t * np.exp(-0.5 * ((lam[lo:hi] - c) / _LINE_SIGMA) ** 2)
    return np.exp(-tau)


def observed_transmission(wavelength, fwhm, seed=0, strength=1.0):
    """The line forest seen at the instrument's resolution on ``wavelength`` (any shape, Å).

    The fine-grid transmission is convolved with a Gaussian of FWHM ``fwhm``
    (Å) by direct summation with numpy and interpolated linearly onto
    ``wavelength`` (fine enough that this is exact to < 1e-4).
    """
    wave = np.asarray(wavelength, dtype=float)
    lo, hi = np.nanmin(wave) - 5 * fwhm, np.nanmax(wave) + 5 * fwhm
    fine = np.arange(lo, hi, _FINE_STEP)
    t = telluric_line_transmission(fine, seed, strength)
    return np.interp(wave, fine, 1.0 - _gaussian_blur(1.0 - t, fwhm))


def _gaussian_blur(values, fwhm):
    """``values`` on the fine grid convolved with a unit-area Gaussian of FWHM ``fwhm`` (Å), numpy direct sum."""
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
    half = int(np.ceil(5 * sigma / _FINE_STEP))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * _FINE_STEP / sigma) ** 2)
    return np.convolve(values, kernel / kernel.sum(), mode="same")


def stellar_absorption_ratio(wavelength, star_flux, fwhm, seed=0, strength=1.0):
    """What the atmosphere does to one star's counts: LSF(F·T) / LSF(F) on ``wavelength`` (Å).

    ``star_flux(fine)`` gives the star's flux above the atmosphere on a fine
    grid (Å, air; at least the resolution of its lines). Around every band
    (`TELLURIC_BANDS` and `OUTSIDE_BANDS`, ± 8 FWHM) the star times the
    transmission is convolved on a 0.02 Å grid with a Gaussian of FWHM
    ``fwhm`` (numpy) and divided by the star convolved alone; elsewhere the
    ratio is 1. Where the star has lines inside a band this differs from the
    blurred transmission (`observed_transmission`): the spectrograph blurs
    star × transmission together.
    """
    wave = np.asarray(wavelength, dtype=float)
    ratio = np.ones_like(wave)
    segments = [np.arange(a - 8 * fwhm, b + 8 * fwhm, _FINE_STEP) for a, b, *_ in TELLURIC_BANDS + OUTSIDE_BANDS]
    segments = [fine for fine in segments if np.any((wave > fine[0]) & (wave < fine[-1]))]
    if not segments:
        return ratio
    fluxes = np.split(np.asarray(star_flux(np.concatenate(segments)), dtype=float),
                      np.cumsum([fine.size for fine in segments])[:-1])
    for fine, flux in zip(segments, fluxes):
        near = (wave > fine[0]) & (wave < fine[-1])
        t = telluric_line_transmission(fine, seed, strength)
        ratio[near] *= np.interp(wave[near], fine, _gaussian_blur(flux * t, fwhm) / _gaussian_blur(flux, fwhm))
    return ratio


def imprint_telluric(exposure, fwhm, seed=0, strength=1.0, calibration=None, noise_seed=None):
    """Put the synthetic line forest into a `~kspec_fluxcal.simulate.SimulatedExposure` made without tellurics.

    The imprint is physical: each non-sky fiber's star is rebuilt on a fine
    grid from its true parameters (`~kspec_fluxcal.simulate.synthetic_stellar_spectrum`
    at Teff, log g, [M/H], R = 20 000 as `~kspec_fluxcal.simulate.make_exposure`
    made it, Doppler shifted by its RV), multiplied by the transmission,
    convolved with the instrument's Gaussian and sampled at the fiber's pixels
    (`stellar_absorption_ratio`; its scale and reddening, smooth, cancel in
    the ratio); its noise-free counts (from
    ``truth['true_flux']``) are multiplied by that ratio and fresh noise is
    drawn at the fiber's S/N with the simulator's noise model. The exposure is
    changed in place; ``truth['transmission']`` (NFIB, NPIX: the blurred
    transmission, `observed_transmission`) and ``truth['absorption']`` (NFIB,
    NPIX: the ratio each fiber's counts received) are added.
    ``truth['true_flux']`` stays the flux above the atmosphere.

    Parameters
    ----------
    exposure : `~kspec_fluxcal.simulate.SimulatedExposure`
        Made by `~kspec_fluxcal.simulate.make_exposure` with ``telluric=False``.
    fwhm : float
        Instrument FWHM (Å).
    seed, strength : int, float
        Line list and scaling (`telluric_line_transmission`).
    calibration : callable, optional
        λ → flux per count used to make the exposure (default
        `~kspec_fluxcal.simulate.default_throughput`).
    noise_seed : int, optional
        Seed of the new noise (default ``seed + 1``).
    """
    from .simulate import add_noise, default_throughput, synthetic_stellar_spectrum

    c_kms = 299792.458
    calibration = calibration or default_throughput
    rng = np.random.default_rng(seed + 1 if noise_seed is None else noise_seed)
    hdul = exposure.hdulist
    wave = np.broadcast_to(np.asarray(hdul["WAVELA"].data, float), hdul[0].data.shape)
    counts = np.array(hdul[0].data, dtype=float)
    variance = np.array(hdul["VARIANCE"].data, dtype=float)
    trans = np.ones_like(counts)
    absorption = np.ones_like(counts)
    ref = exposure.truth["reference_gray"]
    for row in exposure.truth["stars"]:
        f = int(row["fiber"])

        def star(fine, row=row):
            shifted = fine / (1 + float(row["rv_kms"]) / c_kms)
            return synthetic_stellar_spectrum(shifted, float(row["teff"]), float(row["logg"]), float(row["feh"]),
                                              resolution=20000.0)[0]

        trans[f] = observed_transmission(wave[f], fwhm, seed, strength)
        absorption[f] = stellar_absorption_ratio(wave[f], star, fwhm, seed, strength)
        clean = exposure.truth["true_flux"][f] * ref / calibration(wave[f])
        counts[f], variance[f] = add_noise(rng, clean * absorption[f], float(row["snr"]))
    hdul[0].data = counts.astype(np.float32)
    hdul["VARIANCE"].data = variance.astype(np.float32)
    exposure.truth["transmission"] = trans
    exposure.truth["absorption"] = absorption
    return exposure


SITE_EXTINCTION = np.array([
    # λ (Å), k (mag / airmass): a typical mid-altitude site (shape after published KPNO/CTIO-like curves)
    (3300.0, 0.98), (3500.0, 0.78), (3600.0, 0.70), (3800.0, 0.56), (4000.0, 0.45), (4200.0, 0.37),
    (4500.0, 0.29), (4800.0, 0.235), (5000.0, 0.205), (5300.0, 0.180), (5600.0, 0.168), (5900.0, 0.160),
    (6100.0, 0.152), (6400.0, 0.132), (6800.0, 0.108), (7200.0, 0.092), (7600.0, 0.084), (8000.0, 0.078),
    (8500.0, 0.073), (9000.0, 0.070), (9500.0, 0.067), (10000.0, 0.064), (10500.0, 0.062),
])
"""The synthetic truth: wavelength (Å) and extinction (mag per airmass)."""


def site_extinction(wavelength):
    """k(λ) of `SITE_EXTINCTION` (mag per airmass), a cubic spline in ln k through the table."""
    from scipy.interpolate import CubicSpline

    lam = np.asarray(u.Quantity(wavelength, u.AA).to_value(u.AA), dtype=float)
    spline = CubicSpline(SITE_EXTINCTION[:, 0], np.log(SITE_EXTINCTION[:, 1]))
    return np.exp(spline(lam))


def extincted_calibration(airmass, throughput=None, extinction=site_extinction):
    """The true flux-per-count of an exposure at ``airmass``: throughput × 10^(0.4 k(λ) X).

    Pass it as ``calibration`` to `~kspec_fluxcal.simulate.make_exposure`.
    """
    from .simulate import default_throughput

    throughput = throughput or default_throughput

    def calibration(wavelength):
        return throughput(wavelength) * 10.0 ** (0.4 * extinction(wavelength) * airmass)

    return calibration
