"""Template corrections learned from CALSPEC standards: derivation and the leave-one-star-out check.

`derive_template_correction` fits the grid to each CALSPEC star exactly as a
standard is fitted in a frame — Teff, log g, [M/H] with the sub-grid
interpolation of `~kspec_fluxcal.matching.select_best_templates`, then the
scale and E(B−V) to the star's synthetic photometry — at a resolution where
both the spectra and the grid are reliable (FWHM 30 Å for ck04), takes
spectrum / model smoothed on continuum scales (B-spline with 250 Å knots, the
smooth form of the calibration vectors; lines deeper than 10 % masked). The
correction a template receives is a kernel-weighted mean of these curves in
[M/H] (bandwidth chosen by leave-one-star-out), inside the training stars'
span of Teff and [M/H]; its per-wavelength uncertainty is the
leave-one-star-out predictive scatter, i.e. that of a star it has not seen.
Stars fitted on the grid's [M/H] edge train the edge templates; stars on any
other edge are reported, not used. The result is a
`~kspec_fluxcal.templates.correction.TemplateCorrection`.

All wavelengths are in Å, in air.
"""

import datetime
import logging
import tempfile
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import Table

from .exceptions import InputDataError
from .templates.correction import FEH_KERNEL, TemplateCorrection, distance_beyond, kernel_factor

__all__ = ["CK04_TRAINING_FILES", "derive_template_correction", "calspec_frame_accuracy", "leave_one_star_out"]

log = logging.getLogger(__name__)

CK04_TRAINING_FILES = (
    "bd02d3375_stis_006.fits.gz", "bd26d2606_stis_006.fits.gz", "bd29d2091_stis_006.fits.gz",
    "bd54d1216_stis_005.fits.gz", "bd_17d4708_stisnic_007.fits.gz", "hd031128_stis_006.fits.gz",
    "hd111980_stis_006.fits.gz", "hd159222_stis_008.fits.gz", "hd160617_stis_005.fits.gz",
    "hd185975_stis_007.fits.gz", "hd200654_stis_007.fits.gz", "hd209458_stisnic_008.fits.gz",
    "hd37962_stis_010.fits.gz", "hd38949_stis_007.fits.gz", "p041c_stisnic_009.fits.gz",
    "p177d_stisnic_010.fits.gz", "p330e_stiswfcnic_006.fits.gz",
)
"""The 17 CALSPEC F/G spectra (files of ``../shared/data/calspec``) the shipped ck04 correction was learned from."""

_SIGMA_FLOOR = 0.002
"""Fractional floor of the correction's uncertainty: below it four stars cannot tell."""


def _star_photometry(wave, flux):
    """Synthetic AB photometry of a CALSPEC star in the Refcat2 bands, with catalogue-like errors."""
    from .containers import Photometry
    from .simulate import REFCAT_BANDS, refcat_band_magnitudes

    sigma = {band: err for band, _, err in REFCAT_BANDS.values()}
    mags = refcat_band_magnitudes(wave, flux)
    names = [b for b in mags if np.isfinite(mags[b])]
    return Photometry(names, [mags[b] for b in names], [sigma[b] for b in names])


def _star_name(path):
    name = Path(path).name
    for cut in ("_stis", ".fits"):
        name = name.split(cut)[0]
    return name


def derive_template_correction(
    calspec_files,
    library,
    fwhm=30.0,
    wave_range=(3300.0, 9900.0),
    n_pix=680,
    knot_spacing=250.0,
    line_depth="auto",
    snr=300.0,
    normalise_range=(4000.0, 9000.0),
    exclude=(),
    edge_stars=False,
    bandwidths=(0.1, 0.2, 0.3, 0.5, 1.0, 3.0),
    domain_margin=(250.0, 0.25),
    score_range=(3800.0, 9200.0),
    shrink=True,
    name=None,
    command=None,
):
    """Derive the correction a template grid needs from real CALSPEC spectra.

    For each CALSPEC spectrum (vacuum wavelengths converted to air by
    `~kspec_fluxcal.simulate.read_calspec`): observe it at ``fwhm`` on a
    log-λ grid of ``n_pix`` pixels over ``wave_range`` (its own resolution
    taken into account), fit the grid — best template with sub-grid
    refinement in Teff, log g and [M/H] and the RV, then scale and E(B−V) to
    its synthetic Refcat2-band photometry — and take spectrum / model,
    smoothed by a B-spline of ``knot_spacing`` knots with pixels where the
    model dips more than ``line_depth`` below its continuum left out, and
    normalised to a median of 1 over ``normalise_range``.

    The correction depends on the template's [M/H]: a template at [M/H] = f
    receives the mean of the training stars' curves weighted by
    exp(−½((f − f_s)/h)²), f_s each star's fitted [M/H] (metal-poor and
    solar-metallicity stars have misfits of opposite sign below 4300 Å),
    shrunk towards 1 wavelength by wavelength where the stars disagree
    (``shrink``; empirical-Bayes weight m²/(m² + s²/n_eff)). The
    bandwidth h is the one of ``bandwidths`` whose leave-one-star-out
    prediction error (rms over ``score_range``, mean over the stars) is the
    smallest; a large h is the plain mean. The leave-one-out prediction
    mirrors the application: each template corrected at its own [M/H] node,
    the star interpolated between its two bracketing nodes.

    The correction applies inside a domain: the training stars' span of Teff
    and [M/H] widened by ``domain_margin``; templates outside it stay
    uncorrected. How much the error grows for a standard beyond the training
    span is learned by holding stars out beyond the others' span
    (column ``extrapolation``, per domain margin,
    `~kspec_fluxcal.templates.correction.distance_beyond`).

    The uncertainty is the leave-one-star-out predictive scatter: at each
    wavelength, the rms over the training stars of (curve / correction
    derived without the star − 1) with the chosen bandwidth — how well the
    correction predicts a star it has not seen — with a floor of 0.2 %.
    Each star's residual is kept (columns ``loo_<star>``): the σ a standard
    of a frame receives is their rms weighted by the [M/H] kernel at its own
    fitted [M/H] (`TemplateCorrection.sigma_for`), as the solar G dwarfs and
    the metal-poor stars are predicted differently well.
    The linear dependence of the misfit on Teff across the training stars is
    measured and reported in ``meta['teff_dependence']`` (not applied).

    A star whose refined parameters sit on the edge of the grid is used only
    when the edge is the [M/H] edge and ``edge_stars`` is true: it is then
    fitted with the edge templates, as a metal-poor standard of a frame would
    be, and its curve is what those templates need. Otherwise (or when it is
    listed in ``exclude``) it is reported in ``meta['stars']`` with the
    reason and its curve is kept.

    Parameters
    ----------
    calspec_files : sequence of str or os.PathLike
        CALSPEC FITS files (``WAVELENGTH`` in vacuum Å, ``FLUX``, ``FWHM``).
    library : `~kspec_fluxcal.templates.TemplateLibrary` or str or os.PathLike
        The grid; it is used without any correction.
    fwhm : float
        Resolution of the comparison (Å); 30 Å suits ck04 (10–20 Å sampling)
        and CALSPEC STIS (R ≈ 500–1000).
    wave_range : (float, float)
        Wavelength range of the correction (Å, air).
    n_pix : int
        Pixels of the comparison grid.
    knot_spacing : float
        Knot spacing (Å) of each star's smooth ratio (250 Å: the knots of
        the calibration vectors' smooth form, which cannot follow finer
        structure anyway; 150 Å did worse in the leave-one-out test).
    line_depth : 'auto' or float
        Model pixels deeper than this below the continuum are masked; the
        default is a frame's line mask (`~kspec_fluxcal.calibration.LINE_DEPTH`:
        5 % at these 250 Å knots), so a curve holds what a frame's smooth
        calibration sees of the misfit.
    snr : float
        S/N per pixel assumed for the (noise-free) observed spectrum: it only
        sets the weights and clipping of the smooth fit.
    normalise_range : (float, float)
        Range (Å) over which each curve's median is set to 1.
    exclude : sequence of str
        Star names (file stem before ``_stis``, e.g. ``'hd031128'``) not to use.
    edge_stars : bool
        Use stars fitted on the grid's [M/H] edge (see above).
    bandwidths : sequence of float
        Candidate kernel widths in [M/H] (dex).
    shrink : bool
        Shrink the kernel mean towards 1 where the training stars disagree
        (`~kspec_fluxcal.templates.correction.kernel_factor`): in the
        leave-one-star-out test on frames the plain mean made the held-out
        HD 38949 worse (p95 up to 2.36 % against 1.75 % uncorrected), the
        shrunk one does not reach 2 %.
    domain_margin : (float, float)
        Widening of the training span: Teff (K), [M/H] (dex).
    score_range : (float, float)
        Wavelength range (Å) of the leave-one-out score that chooses the bandwidth.
    name : str, optional
        Name of the correction (default ``'<library kind>-calspec'``).
    command : str, optional
        The command that made it, recorded in the provenance.

    Returns
    -------
    `TemplateCorrection`

    Raises
    ------
    InputDataError
        If fewer than two usable stars remain.
    """
    from . import __version__
    from .calibration import compute_calibration_vectors, scale_template_to_photometry
    from .calspec import read_calspec
    from .containers import make_spectrum
    from .engine import refined_on_grid_edge
    from .matching import select_best_templates
    from .templates import PreparedGrid, TemplateLibrary, lsf_operator

    files = [Path(f) for f in calspec_files]
    if not files:
        raise InputDataError("no CALSPEC file given; pass the CALSPEC spectra (FITS) to derive a correction from.")
    lib = library if isinstance(library, TemplateLibrary) else TemplateLibrary(library, correction=None)
    if lib.correction is not None:
        lib = TemplateLibrary(lib.path, resolution=lib.resolution, correction=None)
    target = np.geomspace(float(wave_range[0]), float(wave_range[1]), int(n_pix))
    grid = PreparedGrid.build(lib, target * u.AA, float(fwhm))

    spectra, phots, names = [], [], []
    for path in files:
        wave, flux, resolution = read_calspec(path)
        inside = (wave[0] < target[0] - 3 * fwhm) and (wave[-1] > target[-1] + 3 * fwhm)
        if not inside:
            raise InputDataError(
                f"CALSPEC spectrum {path} covers {wave[0]:.0f}–{wave[-1]:.0f} Å, not the whole range "
                f"{target[0]:.0f}–{target[-1]:.0f} Å (± 3 FWHM); narrow wave_range."
            )
        observed = lsf_operator(wave, target, float(fwhm), native_resolution=resolution) @ flux
        counts = observed / np.median(observed) * 1.0e4
        spectra.append(make_spectrum(target, counts, variance=(counts / snr) ** 2, flux_unit="ct"))
        phots.append(_star_photometry(wave, flux))
        names.append(_star_name(path))
    log.info("fitting %d CALSPEC stars with %d templates at FWHM %.1f Å", len(files), grid.n_templates, fwhm)
    matches = select_best_templates(spectra, grid, mask_regions=None)
    scales = [
        scale_template_to_photometry(np.tensordot(m.weights, grid.band_fnu, axes=(0, 0)), grid.band_names, p,
                                     grid.ebv_grid)
        for m, p in zip(matches, phots)
    ]
    vectors, failures = compute_calibration_vectors(spectra, matches, grid, scales, target * u.AA,
                                                    knot_spacing=knot_spacing, line_depth=line_depth)
    failed = dict(failures)
    norm = (target >= normalise_range[0]) & (target <= normalise_range[1])
    curves, stars, used = {}, [], []
    vec_iter = iter(vectors)
    for i, (path, match, scale) in enumerate(zip(files, matches, scales)):
        info = {"name": names[i], "file": path.name,
                **{k: round(float(match.params[k]), 4) for k in ("teff", "logg", "feh")},
                "rv_kms": round(float(u.Quantity(match.rv, u.km / u.s).value), 2),
                "ebv": round(float(scale.ebv), 4), "used": False, "reason": ""}
        if i in failed:
            info["reason"] = failed[i]
            stars.append(info)
            continue
        vec = next(vec_iter)
        with np.errstate(divide="ignore", invalid="ignore"):
            curve = 1.0 / vec.smooth_factor.value
        curve = curve / np.nanmedian(curve[norm])
        curves[names[i]] = curve
        edge = [k for k, on in refined_on_grid_edge(match, grid).items() if on]
        info["on_edge"] = edge
        if names[i] in exclude:
            info["reason"] = "excluded by request"
        elif edge == ["feh"] and edge_stars:
            info["used"] = True
            info["reason"] = f"fitted on the grid's [M/H] edge (feh = {info['feh']}): trains the edge templates"
            used.append(names[i])
        elif edge:
            info["reason"] = (f"outside the grid: refined {', '.join(edge)} on the grid's edge "
                              f"({', '.join(f'{k} = {info[k]}' for k in edge)})")
        else:
            info["used"] = True
            used.append(names[i])
        stars.append(info)
        log.info("CALSPEC %s: Teff %.0f K, log g %.2f, [M/H] %.2f, E(B-V) %.3f — %s", names[i], info["teff"],
                 info["logg"], info["feh"], info["ebv"], "used" if info["used"] else info["reason"])
    if len(used) < 2:
        raise InputDataError(
            f"only {len(used)} usable CALSPEC star(s) ({', '.join(used) or 'none'}); a correction needs at least "
            "two stars inside the grid. Add CALSPEC spectra of stars the grid covers."
        )
    stack = np.array([curves[n] for n in used])
    defined = np.all(np.isfinite(stack), axis=0)
    if np.count_nonzero(defined) < 10:
        raise InputDataError("the usable CALSPEC stars share fewer than 10 defined pixels; widen wave_range.")
    lo, hi = np.flatnonzero(defined)[[0, -1]]
    keep = slice(lo, hi + 1)
    stack = stack[:, keep]
    wave = target[keep]
    factor = np.mean(stack, axis=0)
    factor = factor / np.median(factor[norm[keep]])
    n = len(used)
    scatter = np.sqrt(np.sum((stack - factor) ** 2, axis=0) / (n - 1))
    train = [next(s for s in stars if s["name"] == name) for name in used]
    teffs = np.array([s["teff"] for s in train])
    fehs = np.array([s["feh"] for s in train])
    nodes = np.unique(np.asarray(lib.entries["feh"], dtype=float))
    scoring = (wave >= score_range[0]) & (wave <= score_range[1])
    scores, residuals = {}, {}
    for h in bandwidths:
        residuals[h] = _leave_one_out_residuals(stack, teffs, fehs, nodes, float(h), domain_margin, norm[keep],
                                                shrink)
        scores[h] = float(np.mean(np.sqrt(np.mean(residuals[h][:, scoring] ** 2, axis=1))))
    best = min(bandwidths, key=lambda h: scores[h])
    sigma = np.maximum(np.sqrt(np.mean(residuals[best] ** 2, axis=0)), _SIGMA_FLOOR)
    growth, pairs = _extrapolation_growth(stack, teffs, fehs, nodes, float(best), domain_margin, norm[keep], shrink,
                                          sigma, wave, knot_spacing, used)
    log.info("[M/H] bandwidth %.2f dex chosen by leave-one-star-out (rms %s)", best,
             ", ".join(f"{h:g}: {100 * v:.2f}%" for h, v in scores.items()))
    model = {"kind": FEH_KERNEL, "bandwidth_dex": float(best), "shrinkage": bool(shrink), "training": used,
             "feh": [float(f) for f in fehs], "teff": [float(t) for t in teffs],
             "domain": _domain(teffs, fehs, domain_margin), "span": _domain(teffs, fehs, (0.0, 0.0)),
             "distance_unit": {"teff_K": float(domain_margin[0]), "feh_dex": float(domain_margin[1])},
             "extrapolation_pairs": pairs, "sigma_floor": _SIGMA_FLOOR,
             "bandwidth_scores": {f"{h:g}": round(v, 6) for h, v in scores.items()}}

    teff_dependence = None
    if n >= 3 and np.ptp(teffs) > 0:
        dt = (teffs - teffs.mean()) / 1000.0
        slope = (dt @ (stack - stack.mean(axis=0))) / (dt @ dt)
        resid = stack - stack.mean(axis=0) - np.outer(dt, slope)
        teff_dependence = {
            "teff_range_K": [float(teffs.min()), float(teffs.max())],
            "rms_slope_per_1000K": float(np.sqrt(np.mean(slope**2))),
            "max_abs_slope_per_1000K": float(np.max(np.abs(slope))),
            "rms_scatter": float(np.sqrt(np.mean(scatter**2))),
            "rms_scatter_after_teff_term": float(np.sqrt(np.mean(np.sum(resid**2, axis=0) / max(n - 2, 1)))),
        }
    meta = {
        "name": name or f"{lib.kind}-calspec",
        "library_kind": lib.kind,
        "library_fingerprint": lib.fingerprint,
        "library_path": lib.path.name,
        "stars": stars,
        "used_stars": used,
        "fit": {"fwhm_A": float(fwhm), "wave_range_A": [float(w) for w in wave_range], "n_pix": int(n_pix),
                "knot_spacing_A": float(knot_spacing),
                "line_depth": str(line_depth) if isinstance(line_depth, str) else float(line_depth), "snr": float(snr),
                "normalise_range_A": [float(w) for w in normalise_range],
                "bandwidths_dex": [float(h) for h in bandwidths], "score_range_A": [float(w) for w in score_range],
                "domain_margin": {"teff_K": float(domain_margin[0]), "feh_dex": float(domain_margin[1])},
                "edge_stars": bool(edge_stars),
                "sigma": "leave-one-star-out rms of (star curve / correction predicted without it - 1), "
                         "floor 0.002; per standard: the rms weighted by the [M/H] kernel at its fitted [M/H] "
                         "(columns loo_<star>)",
                "shrink": bool(shrink),
                "extrapolation": "sigma grows by d x growth(lambda) for a standard d distance units (domain "
                                 "margins) beyond the training span; growth fitted by least squares to "
                                 "r^2 - sigma^2 = d^2 growth^2 over the stars held out beyond the others' span "
                                 "(each star against the stars more metal-poor, then more metal-rich, than it), "
                                 "running mean over the knot spacing (column extrapolation)",
                "parameters": "Teff, log g, [M/H] refined between nodes; RV; scale and E(B-V) (F99, R_V 3.1) "
                              "to synthetic PS1 griz/Gaia/2MASS photometry"},
        "model": model,
        "teff_dependence": teff_dependence,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "kspec_fluxcal_version": __version__,
        "command": command or "kspec_fluxcal.calspec_correction.derive_template_correction",
        "extrapolation": "held at the end values outside the wavelength range",
    }
    # rounded so that the ECSV file is compact and reads back to the same fingerprint
    return TemplateCorrection(np.round(wave, 4), np.round(factor, 6), np.round(sigma, 6), meta,
                              {k: np.round(v[keep], 6) for k, v in curves.items()},
                              {k: np.round(r, 6) for k, r in zip(used, residuals[best])},
                              extrapolation=np.round(growth, 6))


def _domain(teffs, fehs, margin):
    """The training span of Teff (K) and [M/H] (dex) widened by ``margin`` (K, dex)."""
    return {"teff": [float(np.min(teffs) - margin[0]), float(np.max(teffs) + margin[0])],
            "feh": [round(float(np.min(fehs) - margin[1]), 4), round(float(np.max(fehs) + margin[1]), 4)]}


def _node_factor(stack, fehs, teffs, h, margin, nodes, teff, feh, shrink):
    """What a star of ``teff``, ``feh`` receives: the kernel factor of the bracketing [M/H] nodes, interpolated.

    This mirrors the application: every template is corrected at its own
    node (1 outside the domain) and the fit interpolates between nodes.
    """
    domain = _domain(teffs, fehs, margin)
    if nodes.size == 1:  # a grid of one [M/H] (e.g. a single model): every template sits on that node
        pairs = ((nodes[0], 1.0),)
    else:
        value = float(np.clip(feh, nodes[0], nodes[-1]))
        j = int(np.clip(np.searchsorted(nodes, value, side="right") - 1, 0, nodes.size - 2))
        a = (value - nodes[j]) / (nodes[j + 1] - nodes[j])
        pairs = ((nodes[j], 1.0 - a), (nodes[j + 1], a))
    out = np.zeros(stack.shape[1])
    for node, weight in pairs:
        inside = domain["teff"][0] <= teff <= domain["teff"][1] and domain["feh"][0] <= node <= domain["feh"][1]
        if inside:
            out += weight * kernel_factor(stack, fehs, h, node, shrink=shrink)
        else:
            out += weight
    return out


def _extrapolation_growth(stack, teffs, fehs, nodes, h, margin, norm, shrink, sigma, wave, smooth, names):
    """How fast the correction's error grows beyond the training span: growth(λ) per domain margin.

    Each training star is held out together with every star on one side of
    it in [M/H] (first the more metal-rich ones, then the more metal-poor
    ones), so that it lies a distance d beyond the remaining stars' span
    (`distance_beyond`, in domain margins); its residual r(λ) is its curve
    over the correction those stars give it (corrected at its nodes inside
    their domain, uncorrected outside it), normalised over ``norm``, minus 1.
    growth² is the least-squares solution of r² − σ² = d² growth² over these
    pairs (σ the leave-one-star-out uncertainty of stars inside the span),
    at least 0, smoothed by a running mean over ``smooth`` Å.

    Returns
    -------
    growth : ndarray
        Fractional 1σ added in quadrature per domain margin beyond the span.
    pairs : list of dict
        Each held-out star's name, side, distance and rms residual over
        ``norm`` (provenance).
    """
    from scipy.ndimage import uniform_filter1d

    distances, squares, pairs = [], [], []
    for i in range(stack.shape[0]):
        for side in ("metal-rich", "metal-poor"):
            rest = fehs < fehs[i] if side == "metal-rich" else fehs > fehs[i]
            if np.count_nonzero(rest) < 2:
                continue
            span = _domain(teffs[rest], fehs[rest], (0.0, 0.0))
            d = distance_beyond(teffs[i], fehs[i], span, {"teff_K": margin[0], "feh_dex": margin[1]})
            predicted = _node_factor(stack[rest], fehs[rest], teffs[rest], h, margin, nodes, teffs[i], fehs[i],
                                     shrink)
            ratio = stack[i] / predicted
            residual = ratio / np.median(ratio[norm]) - 1.0
            distances.append(d)
            squares.append(residual**2)
            pairs.append({"star": names[i], "side": side, "distance": round(d, 3),
                          "rms": round(float(np.sqrt(np.mean(residual[norm] ** 2))), 5)})
    if not distances or not np.any(np.asarray(distances) > 0):
        return np.zeros(stack.shape[1]), pairs
    d2 = np.asarray(distances) ** 2
    excess = np.asarray(squares) - sigma**2
    growth2 = np.maximum(d2 @ excess / np.sum(d2**2), 0.0)
    width = max(int(round(smooth / np.median(np.diff(wave)))), 1)
    # the running mean of values ≥ 0 can round to −1e-20
    return np.sqrt(np.maximum(uniform_filter1d(growth2, width, mode="nearest"), 0.0)), pairs


def _leave_one_out_residuals(stack, teffs, fehs, nodes, h, margin, norm, shrink):
    """Each training star's curve over the correction derived without it, normalised over ``norm``, minus 1."""
    out = np.empty_like(stack)
    for i in range(stack.shape[0]):
        rest = np.arange(stack.shape[0]) != i
        predicted = _node_factor(stack[rest], fehs[rest], teffs[rest], h, margin, nodes, teffs[i], fehs[i], shrink)
        ratio = stack[i] / predicted
        out[i] = ratio / np.median(ratio[norm]) - 1.0
    return out


# ---------------------------------------------------------------------------
# Checks on real stars
# ---------------------------------------------------------------------------


def calspec_frame_accuracy(calspec_files, templates, correction, seed, fwhm=30.0, n_pix=621,
                           wave_range=(3800.0, 9200.0), zero_point_sigma=0.0, mag_floor=0.0):
    """Calibrate a simulated frame of CALSPEC standards and compare it with the truth.

    The frame (`~kspec_fluxcal.simulate.make_calspec_exposure`: the stars'
    real flux through the invented default throughput, noise, telluric bands,
    no gray losses) is calibrated by `~kspec_fluxcal.pipeline.apply_fluxcal`
    with ``templates`` and ``correction``, and compared with the injected
    throughput by `~kspec_fluxcal.demo.calibration_accuracy` over
    ``wave_range`` outside the telluric bands.

    Parameters
    ----------
    calspec_files : sequence of path
        The standards of the frame.
    templates : str or os.PathLike
        Template library folder.
    correction : 'auto', 'none', path or `TemplateCorrection`
        As ``FluxcalConfig.template_correction``.
    seed : int
        Noise realisation.
    fwhm : float
        Instrument FWHM (Å).
    n_pix : int
        Pixels per fiber over 3600–9800 Å.
    wave_range : (float, float)
        Range of the comparison (Å).
    zero_point_sigma, mag_floor : float
        The catalogue's systematics (mag) as the calibration is told them; the
        simulated catalogue has none (its errors are the stated ones), so the
        pulls are honest with the defaults of 0.

    Returns
    -------
    dict
        ``median_abs_error``, ``p95_abs_error``, ``level_error``, ``pull_rms``
        (the combined variance includes the correction's misfit term),
        ``n_pixels``, ``n_stars_used``.
    """
    import warnings

    from .accuracy import calibration_accuracy
    from .exceptions import KspecFluxcalWarning
    from .masks import load_mask_regions
    from .pipeline import FluxcalConfig, apply_fluxcal
    from .simulate import make_calspec_exposure

    exposure = make_calspec_exposure(list(calspec_files), fwhm=fwhm, n_pix=n_pix, gray_range=(1.0, 1.0), seed=seed)
    with tempfile.TemporaryDirectory(prefix="kspec_fluxcal_calspec_") as tmp:
        red, cat = exposure.write(tmp, stem=f"calspec{seed}")
        config = FluxcalConfig(catalog=cat, templates=templates, fwhm=fwhm, template_correction=correction,
                               zero_point_sigma=zero_point_sigma, mag_floor=mag_floor,
                               output=Path(tmp) / "calibrated.fits")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="only one standard star is usable",
                                    category=KspecFluxcalWarning)
            run = apply_fluxcal(red, config)
    return calibration_accuracy(run.result, exposure.truth["wavelength"], exposure.truth["system_calibration"],
                                wave_range=wave_range, exclude_regions=load_mask_regions("telluric_default"))


def leave_one_star_out(calspec_files, templates, seeds=(1, 2, 3, 4), fwhm=30.0, held_out=None, **derive_kwargs):
    """Leave-one-star-out test of the correction over the usable CALSPEC stars.

    For each star used by the full derivation and not on the grid's edge
    (the pipeline rejects a standard fitted on the [M/H] edge, so a frame of
    it cannot be calibrated): derive the correction without it
    (`derive_template_correction` with the star excluded), then calibrate
    single-standard frames of that star (`calspec_frame_accuracy`, one per
    seed) without any correction and with the one derived without it.

    Parameters
    ----------
    calspec_files : sequence of path
        All CALSPEC spectra.
    templates : str or os.PathLike
        Template library folder (used uncorrected for the derivations).
    seeds : sequence of int
        Noise realisations.
    fwhm : float
        Resolution of the derivation and of the frames (Å).
    held_out : sequence of str, optional
        The stars to hold out in turn (names as in ``exclude``); default:
        every usable star.
    **derive_kwargs
        Passed to `derive_template_correction`.

    Returns
    -------
    table : `~astropy.table.Table`
        One row per (star, seed, case) with case ``'none'`` or
        ``'leave-one-out'`` and the accuracy figures.
    corrections : dict
        Star name → the correction derived without it.
    """
    files = [Path(f) for f in calspec_files]
    full = derive_template_correction(files, templates, fwhm=fwhm, **derive_kwargs)
    exclude = list(derive_kwargs.pop("exclude", ()))
    rows, corrections = [], {}
    usable = [s["name"] for s in full.meta["stars"] if s["used"] and not s.get("on_edge")]
    unknown = sorted(set(held_out or ()) - set(usable))
    if unknown:
        raise InputDataError(f"held-out stars {unknown} are not usable training stars ({', '.join(usable)}); "
                             "name stars the full derivation uses.")
    for star in usable if held_out is None else [s for s in usable if s in held_out]:
        corr = derive_template_correction(files, templates, fwhm=fwhm, exclude=[*exclude, star], **derive_kwargs)
        corrections[star] = corr
        target = [f for f in files if _star_name(f) == star]
        for seed in seeds:
            for case, applied in (("none", "none"), ("leave-one-out", corr)):
                acc = calspec_frame_accuracy(target, templates, applied, seed, fwhm=fwhm)
                rows.append({"star": star, "seed": int(seed), "case": case, **acc})
    return Table(rows=rows), corrections
