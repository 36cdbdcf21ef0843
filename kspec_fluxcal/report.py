"""The night report: a static QA page of a reduced night, read in a browser.

`write_report` (and ``kspec-fluxcal report NIGHT_DIR -o REPORT_DIR``, or
``kspec-fluxcal batch --report REPORT_DIR``) reads what a batch leaves in a
night folder — the run log (`kspec_fluxcal.runlog`), the calibrated RED files,
the calibration products ``<stem>_fluxcal.fits`` and the QC figures — and,
when given, the nightly product (`kspec_fluxcal.night.combine_night`). It
writes

* ``REPORT_DIR/index.html``: one self-contained page (its style inline, its
  figures beside it, no script, no network) with one row per RED file of the
  night in time order, failed ones with their reason, and a few figures of
  the whole night;
* ``REPORT_DIR/night_summary.ecsv``: the same numbers for machines
  (`SUMMARY_COLUMNS`).

**Transparency.** Each calibrated exposure's calibration C(λ) (flux per
count, per count/s when every exposure time is known) is put on one grid in
ln C, moved to the night's reference airmass with the night's extinction
curve (the nightly product's, else fitted to these exposures with
`kspec_fluxcal.atmosphere.night_extinction`), and compared with the median
over the exposures: the median offset is the exposure's gray term g. The
throughput is 1/C, so the exposure's *throughput level* is −g. The night's
best level is the weighted mean of the exposures within `N_SIGMA` of the
highest one; an exposure's **transparency** is exp(level − best): ≈ 1 when
clear, 0.7 through 30 % cloud. Aperture losses (seeing, guiding) are in it
too, as in any calibration with in-field standards. The stated error of a
level is `~kspec_fluxcal.error_budget.level_log_variance` of the exposure's
own budget, with `TRANSPARENCY_FLOOR` added in quadrature.

**Flags.** An exposure is flagged when its transparency departs from 1 by
more than `N_SIGMA` times its stated error, when its throughput *shape*
departs from the night's median shape by more than `SHAPE_SIGMA` times its
stated error in any of `SHAPE_BINS` wavelength bins, or when the scatter
between its standards exceeds `SCATTER_FACTOR` times the night's median.
Exposures with a flagged shape are then left out of the night's median shape
and (when it is fitted here) of the extinction fit, and the comparison is
made again.

A missing or unreadable run log, product, calibrated file or figure is named
on the page under "Missing or unreadable"; the page is written regardless.
"""

import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from .exceptions import InputDataError, KspecFluxcalError, OutputWriteError
from .io.atomic import atomic_output

__all__ = ["SUMMARY_COLUMNS", "N_SIGMA", "TRANSPARENCY_FLOOR", "SHAPE_BINS", "SHAPE_SIGMA", "SCATTER_FACTOR",
           "Exposure", "NightReport", "collect_night", "analyse_night", "write_report"]

log = logging.getLogger(__name__)

SUMMARY_NAME = "night_summary.ecsv"
"""File name of the machine-readable summary in the report folder."""

SUMMARY_COLUMNS = (
    "file", "date_obs", "state", "reason", "airmass", "exptime", "n_standards", "n_rejected", "rejected", "rms",
    "knot_spacing", "sigma_total", "share_noise", "share_scale", "share_zero_point", "share_smoothing",
    "share_bridging", "share_template_misfit", "telluric_windows", "level", "transparency", "transparency_err",
    "shape_rms", "flag",
)
"""Columns of ``night_summary.ecsv``, in order.

``file`` the RED file's name; ``date_obs`` its DATE-OBS; ``state`` ``ok``,
``failed`` or ``fallback`` (the nightly calibration was applied); ``reason``
why it failed or fell back; ``airmass``; ``exptime`` (s); ``n_standards``
and ``n_rejected`` the standards used and rejected, ``rejected`` the
rejected ones with their reasons; ``rms`` the fractional rms scatter between
the standards; ``knot_spacing`` (Å) of the smooth form; ``sigma_total`` the
median fractional 1σ of the calibration and ``share_*`` each error-budget
term's share of its variance; ``telluric_windows`` the corrected windows (Å);
``level`` the throughput relative to the night's best before the airmass term
and ``transparency`` after it, with ``transparency_err`` its stated 1σ;
``shape_rms`` the fractional rms of the throughput shape about the night's
median shape; ``flag`` empty when the exposure agrees with the night within
its errors, else why not. NaN where a number is unknown.
"""

N_SIGMA = 3.0
"""Stated σ beyond which a transparency is flagged (and that set the night's best group)."""

TRANSPARENCY_FLOOR = 0.01
"""Fractional error added in quadrature to every level (aperture losses not in the calibration's budget)."""

SHAPE_BINS = 12
"""Bins, uniform in ln λ, in which an exposure's throughput shape is compared with the night's."""

SHAPE_SIGMA = 5.0
"""Stated σ (in any shape bin) beyond which a throughput shape is flagged."""

SCATTER_FACTOR = 3.0
"""An exposure whose rms scatter between standards exceeds this many times the night's median is flagged."""

GRID_POINTS = 800
"""Points of the common wavelength grid (uniform in ln λ) the calibrations are compared on."""

QC_SUFFIXES = ("summary", "per_star", "residuals", "photometry")
"""Per-frame QC figures (`kspec_fluxcal.qc.save_figures`) linked from the table, then the telluric ones."""


@dataclass
class Exposure:
    """What the report knows about one RED file of the night.

    Attributes
    ----------
    name : str
        The RED file's name.
    state : {'ok', 'failed', 'fallback'}
        Calibrated with its own standards, not calibrated, or calibrated with
        the nightly fallback.
    reason : str
        Why it failed or fell back ('' otherwise).
    red, calibrated : Path
        The RED file as the run log names it, and the calibrated file (None
        when it failed).
    date_obs : str
        DATE-OBS; ``time`` the same as a `~astropy.time.Time` (None when unknown).
    airmass, exptime : float
        Airmass and exposure time (s), None when unknown.
    result : `~kspec_fluxcal.containers.FluxCalibrationResult`
        Its calibration (combined vector, summary, telluric transmission), None
        when unreadable or failed.
    qc : list of Path
        Its QC figures.
    values : dict
        Its row of the summary (`SUMMARY_COLUMNS`).
    flags : list of str
        Why it departs from the night (empty when it agrees).
    standards : list of dict
        Each standard's ``name``, ``fiber``, ``used`` and rejection ``reason``.
    """

    name: str
    state: str = "ok"
    reason: str = ""
    red: Path = None
    calibrated: Path = None
    date_obs: str = None
    time: object = None
    airmass: float = None
    exptime: float = None
    result: object = None
    qc: list = field(default_factory=list)
    values: dict = field(default_factory=dict)
    flags: list = field(default_factory=list)
    standards: list = field(default_factory=list)

    @property
    def flagged(self):
        """Calibrated, but not in agreement with the night (or not checkable)."""
        return bool(self.flags) and self.state != "failed"


@dataclass
class NightReport:
    """The analysed night: one `Exposure` per RED file in time order, the curves, what is missing.

    Attributes
    ----------
    exposures : list of `Exposure`
        In time order (DATE-OBS, then name).
    problems : list of str
        What was missing or unreadable.
    extinction : `~kspec_fluxcal.atmosphere.ExtinctionCurve`
        The night's curve (None without airmasses); ``extinction_note`` says
        where it came from.
    site_curve : `~kspec_fluxcal.atmosphere.ExtinctionCurve`
        The site curve drawn beside it, when given.
    night : `~kspec_fluxcal.containers.FluxCalibrationResult`
        The nightly product, when given.
    grid, ratio : ndarray
        The common wavelength grid (Å) and every analysed exposure's
        throughput relative to the night's median on it.
    run_log : `~astropy.table.Table`
        The run log as read (None when absent or unreadable).
    """

    exposures: list
    problems: list
    extinction: object = None
    extinction_note: str = ""
    site_curve: object = None
    night: object = None
    grid: np.ndarray = None
    ratio: np.ndarray = None
    run_log: object = None

    def table(self):
        """The per-exposure summary (`SUMMARY_COLUMNS`) as an `~astropy.table.Table`."""
        rows = [tuple(e.values.get(c) for c in SUMMARY_COLUMNS) for e in self.exposures]
        types = [str, str, str, str, float, float, int, int, str, float, float, float, float, float, float, float,
                 float, float, str, float, float, float, float, str]
        cols = {}
        for k, (name, kind) in enumerate(zip(SUMMARY_COLUMNS, types)):
            values = [r[k] for r in rows]
            if kind is str:
                cols[name] = np.array(["" if v is None else str(v) for v in values], dtype=str)
            elif kind is int:
                cols[name] = np.array([-1 if v is None else int(v) for v in values], dtype=np.int64)
            else:
                cols[name] = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
        table = Table(cols, names=SUMMARY_COLUMNS) if rows else Table(names=SUMMARY_COLUMNS, dtype=types)
        table["exptime"].unit = u.s
        table["knot_spacing"].unit = u.AA
        for name in ("rms", "sigma_total", "level", "transparency", "transparency_err", "shape_rms"):
            table[name].format = ".4f"
        table.meta["comments"] = ["kspec_fluxcal night summary: one row per RED file, in time order"]
        return table


# --------------------------------------------------------------------------- reading the night folder


def _header(path):
    """The primary header of ``path`` (None when unreadable)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fits.getheader(path)
    except (OSError, ValueError, IndexError, TypeError):
        return None


def _read_result(path):
    """The calibration of a product or calibrated RED file — combined vector, summary, telluric — and its header facts.

    Only the ``FLUXCAL``, ``FCALSUM`` and ``TELLURIC`` extensions are read
    (memory-mapped); the per-star vectors are not needed (the summary lists
    the standards).
    """
    from .atmosphere import read_airmass
    from .containers import CalibrationVector, FluxCalibrationResult, TelluricTransmission
    from .io.units import read_fits_table
    from .products import header_exptime

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=True) as hdul:
                names = [h.name for h in hdul]
                if "FLUXCAL" not in names:
                    raise InputDataError("no FLUXCAL extension")
                vector = CalibrationVector.from_table(read_fits_table(hdul["FLUXCAL"]))
                summary = json.loads(hdul["FCALSUM"].data["SUMMARY_JSON"][0]) if "FCALSUM" in names else {}
                telluric = TelluricTransmission.from_hdu(hdul["TELLURIC"]) if "TELLURIC" in names else None
                header = hdul[0].header
                facts = {"date_obs": header.get("DATE-OBS"), "airmass": read_airmass(header),
                         "exptime": header_exptime(header), "fallback": bool(header.get("FCALFALL", False))}
    except (OSError, ValueError, KeyError, TypeError, IndexError, KspecFluxcalError) as exc:
        raise InputDataError(f"{path.name} holds no readable calibration ({' '.join(str(exc).split())})") from exc
    return FluxCalibrationResult(vector, summary=summary, telluric=telluric), facts


def _run_log_rows(path, problems):
    """Latest run-log row per file name (insertion order), and the whole log; problems are recorded."""
    from .runlog import read_run_log

    if path is None or not Path(path).is_file():
        problems.append(f"no run log ({Path(path).name if path else 'kspec_fluxcal_runlog.ecsv'}) in the night "
                        "folder: the RED files found there are listed from their headers")
        return {}, None
    try:
        table = read_run_log(path)
    except (OSError, ValueError) as exc:
        problems.append(f"the run log {Path(path).name} is unreadable ({' '.join(str(exc).split())})")
        return {}, None
    latest = {}
    for row in table:
        name = Path(str(row["file"])).name
        if row["state"] == "skipped" and name in latest:
            continue  # a re-run that skipped a finished file: the earlier row says how it was calibrated
        latest[name] = row
    return latest, table


def _is_red_candidate(path):
    name = path.name.lower()
    return name.endswith((".fits", ".fits.gz", ".fit", ".fts")) and not name.split(".")[0].endswith("_fluxcal")


def _stem(path):
    return Path(path).name.split(".")[0]


def _qc_index(folders, stems, report_dir):
    """The QC figures (``<stem>_<name>.png``) of every stem under ``folders``, first found per name, in order."""
    found = {stem: {} for stem in stems}
    for folder in dict.fromkeys(folders):
        if folder is None or not folder.is_dir():
            continue
        for png in sorted(folder.rglob("*_*.png")):
            if report_dir in png.parents and png.parent != report_dir / "qc":
                continue
            name = png.stem
            for k in range(len(name) - 1, 0, -1):
                if name[k] == "_" and name[:k] in found:
                    found[name[:k]].setdefault(png.name, png)
                    break
    order = {s: k for k, s in enumerate(QC_SUFFIXES)}

    def key(png, stem):
        return order.get(png.stem[len(stem) + 1:], len(order)), png.name

    return {stem: sorted(pngs.values(), key=lambda p, stem=stem: key(p, stem)) for stem, pngs in found.items()}


def _parse_time(value):
    if not value:
        return None
    try:
        return Time(str(value), scale="utc")
    except ValueError:
        return None


def collect_night(night_dir, report_dir, run_log=None):
    """Every RED file of a night folder as an `Exposure` (time order), and the problems met.

    Parameters
    ----------
    night_dir : Path
        Where the batch wrote (calibrated files, products, run log).
    report_dir : Path
        The report folder (its files are not taken for the night's).
    run_log : Path, optional
        The run log; default ``night_dir/kspec_fluxcal_runlog.ecsv``.

    Returns
    -------
    exposures : list of `Exposure`
    problems : list of str
    run_log : `~astropy.table.Table` or None
    """
    from .runlog import RUN_LOG_NAME

    problems = []
    latest, table = _run_log_rows(Path(run_log) if run_log else night_dir / RUN_LOG_NAME, problems)
    exposures = {}
    for name, row in latest.items():
        state = str(row["state"])
        reason = str(row["reason"] or "")
        output = Path(str(row["output"])) if str(row["output"] or "") else None
        exp = Exposure(name=name, red=Path(str(row["file"])), reason=reason)
        if state in ("failed", "unfinished"):
            exp.state = "failed"
            exp.reason = reason if state == "failed" else f"unfinished: {reason}"
        else:  # the run log's folder is the night folder unless one is given: it may have moved since
            exp.calibrated = output if run_log is not None and output is not None else night_dir / name
        exposures[name] = exp
    for path in sorted(night_dir.iterdir()):
        if not path.is_file() or not _is_red_candidate(path) or path.name in exposures:
            continue
        header = _header(path)
        if header is None:
            exposures[path.name] = Exposure(name=path.name, state="failed", red=path,
                                            reason="unreadable FITS file (no run-log row)")
            continue
        if header.get("FCALPROD"):
            continue  # a calibration product (a nightly one, say), not a RED file
        if header.get("FLUXCAL"):
            exposures[path.name] = Exposure(name=path.name, red=path, calibrated=path)
        else:
            exposures[path.name] = Exposure(name=path.name, state="failed", red=path,
                                            reason="not calibrated (FLUXCAL is not set; no run-log row)")
    for exp in exposures.values():
        _load_exposure(exp, night_dir, problems)
    folders = [night_dir, report_dir / "qc"] + [e.calibrated.parent for e in exposures.values() if e.calibrated]
    qc = _qc_index(folders, {_stem(e.calibrated or e.name) for e in exposures.values()}, report_dir)
    for exp in exposures.values():
        exp.qc = qc[_stem(exp.calibrated or exp.name)]
    ordered = sorted(exposures.values(), key=lambda e: (e.time is None, e.time.mjd if e.time is not None else 0.0,
                                                        e.name))
    return ordered, problems, table


def _load_exposure(exp, night_dir, problems):
    """Fill the exposure's header facts and calibration; what cannot be read goes to ``problems``."""
    from .atmosphere import read_airmass
    from .products import header_exptime, load_calibration

    facts = None
    if exp.calibrated is not None:
        if not exp.calibrated.is_file():
            problems.append(f"{exp.name}: the calibrated file {exp.calibrated} is missing")
            exp.reason = exp.reason or "calibrated file missing"
        else:
            try:
                exp.result, facts = _read_result(exp.calibrated)
            except InputDataError as exc:
                problems.append(f"{exp.name}: {exc}")
                product = exp.calibrated.with_name(f"{_stem(exp.calibrated)}_fluxcal.fits")
                if product.is_file():
                    try:
                        exp.result = load_calibration(product)
                    except InputDataError as exc2:
                        problems.append(f"{exp.name}: {exc2}")
    if facts is None:
        header = None
        for path in (exp.red, night_dir / exp.name):
            if path is not None and path.is_file():
                header = _header(path)
                if header is not None:
                    break
        if header is None and exp.result is None:
            problems.append(f"{exp.name}: no readable header (RED file {exp.red} missing or unreadable): airmass "
                            "and time unknown")
        header = header if header is not None else fits.Header()
        facts = {"date_obs": header.get("DATE-OBS"), "airmass": read_airmass(header),
                 "exptime": header_exptime(header), "fallback": bool(header.get("FCALFALL", False))}
    prov = (exp.result.summary.get("provenance") or {}) if exp.result is not None else {}
    exp.date_obs = facts["date_obs"] or prov.get("date_obs")
    exp.time = _parse_time(exp.date_obs)
    exp.airmass = facts["airmass"] if facts["airmass"] is not None else prov.get("airmass")
    exp.exptime = facts["exptime"] or prov.get("exptime")
    if exp.state == "ok" and facts["fallback"]:
        exp.state = "fallback"
        exp.reason = exp.reason or "nightly fallback calibration applied"
    if exp.state != "failed" and exp.result is None:
        exp.reason = exp.reason or "calibration unreadable"


# --------------------------------------------------------------------------- the numbers


def _budget_values(result):
    summary = result.summary
    budget = summary.get("error_budget") or {}
    terms = budget.get("terms") or {}
    values = {f"share_{name}": (terms.get(name) or {}).get("share") for name in
              ("noise", "scale", "zero_point", "smoothing", "bridging", "template_misfit")}
    values["sigma_total"] = budget.get("median_total_fraction")
    knots = summary.get("knot_selection") or {}
    values["knot_spacing"] = knots.get("spacing") if summary.get("representation", "smooth") == "smooth" else None
    return values


def _exposure_values(exp):
    """The table's per-exposure numbers that need no other exposure."""
    v = dict.fromkeys(SUMMARY_COLUMNS)
    v.update(file=exp.name, date_obs=exp.date_obs or "", state=exp.state, reason=exp.reason, airmass=exp.airmass,
             exptime=exp.exptime, flag="")
    if exp.result is None:
        exp.flags = ["calibration failed"] if exp.state == "failed" else [f"not checked: {exp.reason}"]
        v["flag"] = exp.flags[0]
        return v
    summary = exp.result.summary
    metrics = summary.get("per_star_metrics") or []
    exp.standards = [{"name": str(m.get("star_name") or "-"), "fiber": m.get("fiber_id"), "used": bool(m.get("used")),
                      "reason": m.get("reject_reason") or ""} for m in metrics]
    rejected = [s for s in exp.standards if not s["used"]]
    v.update(n_standards=summary.get("n_stars_used"), n_rejected=summary.get("n_stars_rejected", len(rejected)),
             rejected="; ".join(f"{s['name']}: {s['reason'] or 'no reason given'}" for s in rejected),
             rms=summary.get("rms_scatter"), **_budget_values(exp.result))
    tel = exp.result.telluric
    v["telluric_windows"] = (", ".join(f"{a:.0f}–{b:.0f}" for a, b in tel.windows)
                             if tel is not None and len(tel.windows) else "none")
    return v


def _common_grid(vectors):
    lo = min(float(np.nanmin(v.wavelength.to_value(u.AA)[~v.mask])) for v in vectors)
    hi = max(float(np.nanmax(v.wavelength.to_value(u.AA)[~v.mask])) for v in vectors)
    return np.exp(np.linspace(np.log(lo), np.log(hi), GRID_POINTS))


def _log_calibrations(exposures, grid):
    """ln C and its variance on ``grid``, per (ct/s) when every exposure time is known."""
    from .apply import calibration_on_grid

    per_rate = all(e.exptime for e in exposures)
    logc = np.full((len(exposures), grid.size), np.nan)
    lvar = np.full_like(logc, np.nan)
    for i, exp in enumerate(exposures):
        vec = exp.result.combined_vector
        factor, var, bad = calibration_on_grid(vec, grid)
        with np.errstate(divide="ignore", invalid="ignore"):
            bad |= ~(factor > 0) | ~np.isfinite(var)
            logc[i] = np.where(bad, np.nan, np.log(factor))
            lvar[i] = np.where(bad, np.nan, var / factor**2)
        if per_rate and not any(b.is_equivalent(u.s) for b in vec.unit.bases):
            logc[i] += np.log(float(exp.exptime))  # per ct → per (ct/s): exposure times out of the levels
    return logc, lvar


def _extinction(grid, logc, lvar, exposures, night, problems):
    """The night's extinction curve (the nightly product's, else fitted here), ln C at the reference airmass."""
    from .atmosphere import ExtinctionCurve, night_extinction

    airmass = [e.airmass for e in exposures]
    curve = None
    if night is not None and (night.summary or {}).get("extinction"):
        try:
            curve = ExtinctionCurve.from_dict(night.summary["extinction"])
        except InputDataError as exc:
            problems.append(f"the nightly product's extinction curve is unusable ({exc})")
    if any(a is None for a in airmass):
        missing = [e.name for e in exposures if e.airmass is None]
        return None, logc, (f"no airmass for {', '.join(missing)}: transparencies include the airmass term")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted, moved = night_extinction(grid, logc, lvar, airmass, curve if curve is not None else "auto")
    except (KspecFluxcalError, ValueError, np.linalg.LinAlgError) as exc:
        problems.append(f"the extinction curve could not be fitted ({' '.join(str(exc).split())})")
        return None, logc, "no extinction curve: transparencies include the airmass term"
    source = {"fit": "fitted to these exposures", "site": "a site curve", "default": "the generic default curve"}
    origin = "the nightly product's" if curve is not None else source.get(fitted.source, fitted.source)
    note = (f"extinction curve: {origin} ({fitted.source}); exposures moved to airmass "
            f"{fitted.reference_airmass:.3f}")
    return fitted, moved, note


def _robust_level(diff):
    ok = np.isfinite(diff)
    return float(np.median(diff[ok])) if ok.any() else np.nan


def _best(levels, sigma):
    """Weighted mean of the levels within `N_SIGMA` of the highest one, and its σ."""
    ok = np.isfinite(levels)
    if not ok.any():
        return np.nan, np.nan
    top = int(np.nanargmax(np.where(ok, levels, -np.inf)))
    group = ok & (levels >= levels[top] - N_SIGMA * np.sqrt(sigma**2 + sigma[top] ** 2))
    w = 1.0 / sigma[group] ** 2
    return float(np.sum(w * levels[group]) / np.sum(w)), float(1.0 / np.sqrt(np.sum(w)))


def _shape_pulls(grid, resid, var):
    """Per exposure, the largest |mean residual| / σ over `SHAPE_BINS` bins (errors fully correlated in a bin)."""
    edges = np.linspace(np.log(grid[0]), np.log(grid[-1]) + 1e-12, SHAPE_BINS + 1)
    idx = np.clip(np.searchsorted(edges, np.log(grid), side="right") - 1, 0, SHAPE_BINS - 1)
    ok = np.isfinite(resid) & np.isfinite(var)
    pulls = np.zeros(resid.shape[0])
    worst = np.full(resid.shape[0], np.nan)
    for b in range(SHAPE_BINS):
        sel = (idx == b)[None, :] & ok
        n = sel.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(sel, resid, 0.0).sum(axis=1) / n
            sigma = np.sqrt(np.where(sel, var, 0.0).sum(axis=1) / n)
            z = np.abs(mean) / sigma
        better = np.isfinite(z) & (z > pulls)
        pulls = np.where(better, z, pulls)
        worst = np.where(better, np.exp(0.5 * (edges[b] + edges[b + 1])), worst)
    return pulls, worst


def analyse_night(exposures, night=None, problems=None):
    """Transparencies, shapes and flags of the calibrated exposures (fills each `Exposure`'s ``values``).

    Parameters
    ----------
    exposures : list of `Exposure`
        In time order.
    night : `~kspec_fluxcal.containers.FluxCalibrationResult`, optional
        The nightly product (its extinction curve is used).
    problems : list, optional
        Appended to.

    Returns
    -------
    dict
        ``grid`` (Å), ``ratio`` (throughput / night median after the airmass
        term, per analysed exposure, NaN where undefined), ``analysed``
        (their indices), ``extinction`` (`~kspec_fluxcal.atmosphere.ExtinctionCurve`
        or None) and ``note``.
    """
    from .atmosphere import BETA

    problems = problems if problems is not None else []
    for exp in exposures:
        exp.values = _exposure_values(exp)
    own = [i for i, e in enumerate(exposures) if e.state == "ok" and e.result is not None]
    out = {"grid": None, "ratio": None, "analysed": own, "extinction": None, "note": ""}
    if not own:
        out["note"] = "no exposure has a calibration of its own: no transparency"
        return out
    sel = [exposures[i] for i in own]
    grid = _common_grid([e.result.combined_vector for e in sel])
    logc, lvar = _log_calibrations(sel, grid)
    curve, moved, note = _extinction(grid, logc, lvar, sel, night, problems)
    keep = np.ones(len(sel), bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns where no exposure is defined
        pulls = _compare(grid, logc, lvar, moved, curve, sel, out, keep)
        keep = pulls <= SHAPE_SIGMA
        if not keep.all() and keep.sum() >= 3 and curve is not None:
            # the outlying shapes out of the night's median shape, and of the extinction fit when fitted here
            if curve.source == "fit" and night is None:
                kept = [e for e, k in zip(sel, keep) if k]
                refit, _, refit_note = _extinction(grid, logc[keep], lvar[keep], kept, None, problems)
                if refit is not None:
                    curve, note = refit, refit_note + f" (without the {np.count_nonzero(~keep)} outlying shapes)"
            k_curve, _ = curve.at(grid)
            x = np.array([e.airmass for e in sel], dtype=float)
            moved = logc - BETA * (x - curve.reference_airmass)[:, None] * k_curve[None, :]
            _compare(grid, logc, lvar, moved, curve, sel, out, keep)
    out["extinction"], out["note"] = curve, note
    return out


def _compare(grid, logc, lvar, moved, curve, sel, out, keep):
    """Levels, transparencies, shape pulls and flags of the exposures ``sel`` (into their ``values``).

    The night's median shape is that of the exposures ``keep``. Returns every
    exposure's largest shape pull.
    """
    from .atmosphere import BETA
    from .error_budget import level_log_variance

    raw_level = -np.array([_robust_level(row - np.nanmedian(logc[keep], axis=0)) for row in logc])
    reference = np.nanmedian(moved[keep], axis=0)
    gray = np.array([_robust_level(row - reference) for row in moved])
    level = -gray
    span = float(grid[-1] - grid[0])
    sigma = np.array([np.sqrt((level_log_variance(e.result, span) or 0.0) + TRANSPARENCY_FLOOR**2) for e in sel])
    best, best_sigma = _best(level, sigma)
    raw_best, _ = _best(raw_level, sigma)
    resid = moved - reference[None, :] - gray[:, None]
    shape_var = lvar.copy()
    if curve is not None:
        _, k_var = curve.at(grid)
        dx = np.array([e.airmass for e in sel]) - curve.reference_airmass
        shape_var = shape_var + (BETA * dx[:, None]) ** 2 * k_var[None, :]
    n_ok = np.isfinite(moved[keep]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref_var = np.where(n_ok > 0, np.pi / 2 * np.nanmedian(lvar[keep], axis=0) / n_ok, np.nan)
    pulls, worst = _shape_pulls(grid, resid, shape_var + ref_var[None, :])
    rms_values = np.array([_float(e.values.get("rms")) for e in sel])
    night_rms = float(np.nanmedian(rms_values)) if np.isfinite(rms_values).sum() >= 3 else np.nan
    for k, exp in enumerate(sel):
        t = float(np.exp(level[k] - best))
        t_err = float(t * np.sqrt(sigma[k] ** 2 + best_sigma**2))
        shape_rms = float(np.sqrt(np.nanmean(np.expm1(resid[k]) ** 2))) if np.isfinite(resid[k]).any() else None
        exp.values.update(level=float(np.exp(raw_level[k] - raw_best)), transparency=t, transparency_err=t_err,
                          shape_rms=shape_rms)
        flags = []
        if abs(level[k] - best) > N_SIGMA * np.sqrt(sigma[k] ** 2 + best_sigma**2):
            flags.append(f"transparency {t:.2f} ± {t_err:.2f}: {100 * abs(1 - t):.0f} % "
                         f"{'below' if t < 1 else 'above'} the night's best (> {N_SIGMA:g}σ)")
        if len(sel) >= 3 and pulls[k] > SHAPE_SIGMA:
            flags.append(f"throughput shape departs from the night's by {pulls[k]:.1f}σ near {worst[k]:.0f} Å")
        if np.isfinite(night_rms) and rms_values[k] > SCATTER_FACTOR * night_rms:
            flags.append(f"scatter between standards {100 * rms_values[k]:.2f} % > {SCATTER_FACTOR:g}× the night's "
                         f"median {100 * night_rms:.2f} %")
        exp.flags = flags
        exp.values["flag"] = "; ".join(flags)
    with np.errstate(invalid="ignore", over="ignore"):
        out.update(grid=grid, ratio=np.exp(-(moved - reference[None, :])))
    return pulls


def _float(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return np.nan
    return value


# --------------------------------------------------------------------------- figures


def _times(exposures):
    """Hours since the first exposure (or exposure number without times), and the axis label."""
    times = [e.time for e in exposures]
    if all(t is not None for t in times) and times:
        first = min(t.mjd for t in times)
        start = Time(first, format="mjd").utc.isot[:16]
        return np.array([(t.mjd - first) * 24.0 for t in times]), f"hours since {start} UTC"
    return np.arange(1, len(exposures) + 1, dtype=float), "exposure (time order)"


def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _save(fig, path):
    fig.savefig(path, dpi=90)
    return path


def _plot_ratio(report, analysis, path):
    from matplotlib.collections import LineCollection

    sel = [report.exposures[i] for i in analysis["analysed"]]
    grid, ratio = analysis["grid"], analysis["ratio"]
    fig = _figure((9.0, 3.6))
    ax = fig.add_subplot()
    flagged = np.array([bool(e.flags) for e in sel])
    segs = [np.column_stack([grid, r]) for r in ratio]
    clear = [s for s, f in zip(segs, flagged) if not f]
    if clear:
        ax.add_collection(LineCollection(clear, colors="0.45", linewidths=0.8, label="agrees with the night"))
    bad = [s for s, f in zip(segs, flagged) if f]
    if bad:
        ax.add_collection(LineCollection(bad, colors="#c0392b", linewidths=1.4, linestyles="--", label="flagged"))
        for s, e in zip(bad, [e for e, f in zip(sel, flagged) if f]):
            ok = np.isfinite(s[:, 1])
            if ok.any():
                j = np.flatnonzero(ok)[int(0.85 * ok.sum())]
                ax.annotate(_stem(e.name), s[j], fontsize=7, color="#c0392b", xytext=(0, 4),
                            textcoords="offset points")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xlim(grid[0], grid[-1])
    finite = ratio[np.isfinite(ratio)]
    if finite.size:
        lo, hi = np.percentile(finite, [0.5, 99.5])
        pad = 0.05 * max(hi - lo, 0.02)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("wavelength (Å, air)")
    ax.set_ylabel("throughput / night median")
    ax.set_title("Throughput relative to the night's median, at the reference airmass")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    return _save(fig, path)


def _plot_transparency(report, analysis, path):
    sel = [report.exposures[i] for i in analysis["analysed"]]
    hours, label = _times(report.exposures)
    hours = hours[analysis["analysed"]]
    airmass = np.array([_float(e.airmass) for e in sel])
    trans = np.array([e.values["transparency"] for e in sel])
    err = np.array([e.values["transparency_err"] for e in sel])
    level = np.array([e.values["level"] for e in sel])
    flagged = np.array([bool(e.flags) for e in sel])
    fig = _figure((8.0, 5.0))
    axes = fig.subplots(2, 2, sharey="row")
    for col, (x, xlabel) in enumerate(((hours, label), (airmass, "airmass"))):
        for row, (y, e, ylabel) in enumerate(((trans, err, "transparency"),
                                              (level, None, "level (before the airmass term)"))):
            ax = axes[row, col]
            if not np.isfinite(x).any():
                ax.text(0.5, 0.5, "unknown", transform=ax.transAxes, ha="center")
                continue
            for mask, style in ((~flagged, dict(fmt="o", color="#1f4e79", label="agrees")),
                                (flagged, dict(fmt="s", color="#c0392b", label="flagged"))):
                if mask.any():
                    ax.errorbar(x[mask], y[mask], yerr=None if e is None else e[mask], ms=5, lw=1, **style)
            ax.axhline(1.0, color="k", lw=0.6)
            ax.set_xlabel(xlabel)
            if col == 0:
                ax.set_ylabel(ylabel)
    axes[0, 0].legend(fontsize="small", frameon=False)
    fig.suptitle("Transparency and level of the exposures (relative to the night's best)")
    return _save(fig, path)


def _plot_extinction(curve, site, path):
    fig = _figure((8.0, 3.4))
    ax = fig.add_subplot()
    sigma = np.sqrt(curve.variance)
    ax.fill_between(curve.wavelength, curve.k - sigma, curve.k + sigma, color="#9ecae1", label="±1σ")
    ax.plot(curve.wavelength, curve.k, color="#1f4e79", label=f"night ({curve.source})")
    if site is not None:
        ax.plot(site.wavelength, site.k, color="#c0392b", ls="--", label=f"site curve ({site.meta.get('file', '')})")
    ax.set_xlabel("wavelength (Å, air)")
    ax.set_ylabel("k (mag / airmass)")
    ax.set_title("Extinction curve of the night")
    ax.legend(fontsize="small", frameon=False)
    return _save(fig, path)


def _telluric_series(report):
    """Per window (a, b), the mean transmission of every exposure that corrected it: {(a, b): [(i, T)]}."""
    series = {}
    for i, exp in enumerate(report.exposures):
        tel = exp.result.telluric if exp.result is not None else None
        if tel is None:
            continue
        for a, b in tel.windows:
            inside = (tel.wavelength >= a) & (tel.wavelength <= b) & ~tel.mask
            if inside.any():
                series.setdefault((float(a), float(b)), []).append((i, float(np.mean(tel.transmission[inside]))))
    return series


def _plot_telluric(report, series, path):
    hours, label = _times(report.exposures)
    fig = _figure((8.0, 3.4))
    ax = fig.add_subplot()
    for (a, b), points in sorted(series.items()):
        idx = np.array([p[0] for p in points])
        ax.plot(hours[idx], [p[1] for p in points], "o-", ms=4, lw=1, label=f"{a:.0f}–{b:.0f} Å")
    ax.set_xlabel(label)
    ax.set_ylabel("mean transmission in the window")
    ax.set_title("Telluric transmission per window over the night")
    ax.legend(fontsize="x-small", frameon=False, ncols=3)
    return _save(fig, path)


# --------------------------------------------------------------------------- the page


def _environment(night_dir):
    """The page's Jinja environment; paths inside ``night_dir`` print relative to it, so the page can be moved."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    prefix = f"{night_dir}{os.sep}"

    def relative(value):
        return value.replace(prefix, "") if isinstance(value, str) else value

    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "data" / "report"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, finalize=relative)
    env.filters["num"] = _format_number
    env.filters["pct"] = lambda v: _format_number(None if v is None else 100 * _float(v), ".2f")
    return env


def _format_number(value, spec=".3f"):
    value = _float(value)
    return format(value, spec) if np.isfinite(value) else "–"


def _link_or_copy(source, target):
    """A hard link of ``source`` at ``target`` (a copy across file systems), replacing ``target``."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _copy_qc(exp, report_dir, problems):
    """The exposure's QC figures as links relative to the report (copied into ``qc/`` when outside it)."""
    links = []
    target = report_dir / "qc"
    for png in exp.qc:
        if png.parent != target:
            try:
                target.mkdir(exist_ok=True)
                _link_or_copy(png, target / png.name)
            except OSError as exc:
                problems.append(f"{exp.name}: QC figure {png.name} not copied ({exc.strerror or exc})")
                continue
        label = png.stem[len(_stem(exp.calibrated or exp.name)) + 1:]
        links.append({"href": f"qc/{png.name}", "label": label.replace("_", " "), "more": label not in QC_SUFFIXES})
    return links


def write_report(night_dir, report_dir, night=None, run_log=None, site_extinction=None):
    """Write the night report: ``REPORT_DIR/index.html`` with its figures, and ``night_summary.ecsv``.

    Parameters
    ----------
    night_dir : str or Path
        The night folder a batch wrote (calibrated RED files, products
        ``<stem>_fluxcal.fits``, the run log, QC figures).
    report_dir : str or Path
        Output folder (created).
    night : str or Path, optional
        The nightly product (`kspec_fluxcal.night.combine_night`): its
        extinction curve and the exposures it rejected are shown.
    run_log : str or Path, optional
        The run log, when not ``night_dir/kspec_fluxcal_runlog.ecsv``.
    site_extinction : str or Path, optional
        A site extinction curve (λ in Å, k in mag per airmass) drawn beside
        the night's.

    Returns
    -------
    `NightReport`
        What the page shows.

    Raises
    ------
    InputDataError
        ``night_dir`` is not a folder.
    OutputWriteError
        The report folder cannot be written.
    """
    from .products import load_calibration

    night_dir = Path(night_dir).resolve()
    report_dir = Path(report_dir).resolve()
    if not night_dir.is_dir():
        raise InputDataError(f"the night folder {night_dir} does not exist; give the folder a batch wrote to.")
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(f"cannot create the report folder {report_dir}: {exc.strerror or exc}.") from exc
    exposures, problems, table = collect_night(night_dir, report_dir, run_log)
    nightly = None
    if night is not None:
        try:
            nightly = load_calibration(night)
        except InputDataError as exc:
            problems.append(f"the nightly product: {exc}")
    site = None
    if site_extinction is not None:
        from .atmosphere import ExtinctionCurve

        try:
            site = ExtinctionCurve.from_file(site_extinction)
        except (InputDataError, OSError) as exc:
            problems.append(f"the site extinction curve: {exc}")
    analysis = analyse_night(exposures, nightly, problems)
    report = NightReport(exposures, problems, analysis["extinction"], analysis["note"], site, nightly,
                         analysis["grid"], analysis["ratio"], table)
    try:
        _write_files(report, analysis, night_dir, report_dir)
    except OSError as exc:
        raise OutputWriteError(f"cannot write the report into {report_dir}: {exc.strerror or exc}; check that it "
                               "is writable and has free space.") from exc
    log.info("wrote the night report %s (%d RED files, %d flagged, %d problems)", report_dir / "index.html",
             len(exposures), sum(e.flagged for e in exposures), len(problems))
    return report


def _write_files(report, analysis, night_dir, report_dir):
    figures = []
    if analysis["grid"] is not None:
        figures.append({"src": _plot_ratio(report, analysis, report_dir / "throughput_ratio.png").name,
                        "alt": "Throughput of every calibrated exposure divided by the night's median throughput "
                               "against wavelength; flagged exposures dashed in red.",
                        "caption": "Throughput of each exposure relative to the night's median, after the airmass "
                                   "term. A cloudy exposure sits below 1 at all wavelengths; a colour change tilts."})
        figures.append({"src": _plot_transparency(report, analysis, report_dir / "transparency.png").name,
                        "alt": "Transparency (after the airmass term) and level (before it) of each exposure "
                               "against time and against airmass, with error bars; flagged exposures in red.",
                        "caption": "Transparency (top, with its stated 1σ) and level before the airmass term "
                                   "(bottom) against time and airmass."})
    if report.extinction is not None:
        figures.append({"src": _plot_extinction(report.extinction, report.site_curve,
                                                report_dir / "extinction.png").name,
                        "alt": "The night's extinction curve k in magnitudes per airmass against wavelength, with "
                               "its 1 sigma band" + (" and the site curve." if report.site_curve else "."),
                        "caption": report.extinction_note})
    series = _telluric_series(report)
    if series:
        figures.append({"src": _plot_telluric(report, series, report_dir / "telluric.png").name,
                        "alt": "Mean telluric transmission in each corrected window against time.",
                        "caption": "Mean transmission measured on the standards in each telluric window."})
    rows = []
    for exp in report.exposures:
        tel = exp.result.telluric if exp.result is not None else None
        windows = [f"{a:.0f}–{b:.0f} Å" for a, b in tel.windows] if tel is not None else []
        rows.append({"cells": exp.values, "standards": exp.standards, "flags": exp.flags, "windows": windows,
                     "qc": _copy_qc(exp, report_dir, report.problems), "anchor": _stem(exp.name)})
    counts = {s: sum(e.state == s for e in report.exposures) for s in ("ok", "fallback", "failed")}
    night_info = None
    if report.night is not None:
        s = report.night.summary
        night_info = {"used": s.get("n_exposures_used"), "total": s.get("n_exposures"),
                      "rejected": [(e.get("exposure"), e.get("reject_reason")) for e in s.get("per_exposure", [])
                                   if not e.get("used")]}
    run_log = None
    if report.run_log is not None:
        cols = ("time", "run", "file", "state", "reason", "n_standards", "rms")
        run_log = [{"time": str(r["time"]), "run": str(r["run"]), "file": Path(str(r["file"])).name,
                    "state": str(r["state"]), "reason": str(r["reason"] or ""), "n_standards": int(r["n_standards"]),
                    "rms": r["rms"]} for r in report.run_log[list(cols)]]
    page = _environment(night_dir).get_template("index.html.j2").render(
        night_dir=night_dir.name, rows=rows, counts=counts, figures=figures, problems=report.problems,
        notes=[n for n in (analysis["note"],) if n], night=night_info, run_log=run_log,
        n_flagged=sum(e.flagged for e in report.exposures),
        thresholds={"n_sigma": N_SIGMA, "floor": 100 * TRANSPARENCY_FLOOR, "shape_sigma": SHAPE_SIGMA,
                    "scatter": SCATTER_FACTOR}, created=Time.now().utc.isot[:19])
    with atomic_output(report_dir / SUMMARY_NAME) as tmp:
        report.table().write(tmp, format="ascii.ecsv", overwrite=True)
    with atomic_output(report_dir / "index.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
