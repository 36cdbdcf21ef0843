"""The night report: a SYNTHETIC night with one exposure through cloud and one that cannot calibrate.

Six small SYNTHETIC frames at airmasses 1.05–1.6 through a tabulated site
extinction curve (`kspec_fluxcal.simulate_atmosphere`, not of the form the
package fits); the third is taken through 30 % cloud (its true flux per count
1/0.7 of the others: counts × 0.7), the fifth has a catalogue without stars.
They are reduced with ``kspec-fluxcal batch --products --report``.
"""

import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse
from xml.dom.minidom import parseString

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table

from kspec_fluxcal.cli import main
from kspec_fluxcal.containers import FLAM, CalibrationVector, FluxCalibrationResult
from kspec_fluxcal.report import SUMMARY_COLUMNS, Exposure, analyse_night, write_report
from kspec_fluxcal.runlog import read_run_log
from kspec_fluxcal.simulate import make_exposure
from kspec_fluxcal.simulate_atmosphere import extincted_calibration

AIRMASS = (1.05, 1.15, 1.3, 1.45, 1.6, 1.25)
CLOUDY, FAILING = 2, 4
CONTRACT = ("file", "state", "reason", "airmass", "n_standards", "rms", "knot_spacing", "transparency", "flag")


def write_synthetic_night(folder, seed=70, cloudy=CLOUDY, failing=FAILING, airmass=AIRMASS, n_pix=3000):
    """Small SYNTHETIC frames of one night (no aperture-loss spread between the standards)."""
    for i, x in enumerate(airmass):
        clear = extincted_calibration(x)
        calibration = (lambda w, c=clear: c(w) / 0.7) if i == cloudy else clear
        exposure = make_exposure(n_standards=4, n_science=1, n_sky=1, n_pix=n_pix, fwhm=2.5, teff_range=(5300, 7700),
                                 logg_range=(4.05, 4.45), feh_range=(-0.9, 0.4), gray_range=(1.0, 1.0),
                                 calibration=calibration, seed=seed + i)
        header = exposure.hdulist[0].header
        header["AIRMASS"] = x
        header["DATE-OBS"] = f"2026-03-01T{2 + i:02d}:{7 * i:02d}:00"
        _, catalog = exposure.write(folder, stem=f"n1_{i:04d}")
        if i == failing:  # the field's catalogue came back empty
            catalog.write_text(catalog.read_text().splitlines()[0] + "\n")
    return sorted(folder.glob("*_red.fits"))


@pytest.fixture(scope="module")
def night(tmp_path_factory, synthetic_grid_dir):
    """The night reduced by ``batch --products --report``: (raw folder, output folder, report folder)."""
    pytest.importorskip("distributed")
    raw = tmp_path_factory.mktemp("night_raw")
    reds = write_synthetic_night(raw)
    out = tmp_path_factory.mktemp("night_out")
    report = out / "report"
    status = main(["batch", *map(str, reds), "--catalog-dir", str(raw), "--templates", str(synthetic_grid_dir),
                   "--output-dir", str(out), "--workers", "2", "--products", "--report", str(report), "-q"])
    assert status == 1  # one file failed; the report is written all the same
    return raw, out, report


class _Page(HTMLParser):
    """Links, images, tables and text of an HTML page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links, self.images, self.scripts, self.header_cells = [], [], [], []
        self.row_headers, self.text, self.ids = [], [], set()
        self._in_row_header = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a":
            self.links.append(attrs.get("href"))
        elif tag == "img":
            self.images.append(attrs)
        elif tag in ("script", "link", "iframe"):
            self.scripts.append((tag, attrs))
        elif tag == "th":
            self.header_cells.append(attrs.get("scope"))
            self._in_row_header = attrs.get("scope") == "row"
            if self._in_row_header:
                self.row_headers.append("")

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_row_header = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_row_header:
            self.row_headers[-1] += data.strip()


def _parse(path):
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _resolves(report, href, ids=()):
    parts = urlparse(href)
    if parts.scheme or parts.netloc:
        return False  # no network, no absolute file URL: the folder must be movable
    if not parts.path:
        return parts.fragment in ids
    return (report / unquote(parts.path)).is_file()


def test_cloud_and_failure_are_reported(night):
    _, out, report = night
    table = Table.read(report / "night_summary.ecsv", format="ascii.ecsv")
    assert set(CONTRACT) <= set(table.colnames) and tuple(table.colnames) == SUMMARY_COLUMNS
    assert list(table["file"]) == [f"n1_{i:04d}_red.fits" for i in range(6)]  # time order
    flags = [str(f) if not np.ma.is_masked(f) else "" for f in table["flag"]]
    for i, row in enumerate(table):
        if i == FAILING:
            assert row["state"] == "failed" and "catalogue" in row["reason"] and "no rows" in row["reason"]
            assert np.isnan(row["transparency"]) and row["airmass"] == pytest.approx(AIRMASS[i])
        elif i == CLOUDY:
            assert row["state"] == "ok" and 0.65 <= row["transparency"] <= 0.75
            assert "transparency" in flags[i] and "below" in flags[i]
        else:
            assert row["state"] == "ok" and 0.95 <= row["transparency"] <= 1.05, row
            assert flags[i] == "", flags[i]
            assert row["n_standards"] >= 3 and 0 < row["rms"] < 0.05 and row["knot_spacing"] > 0
    # before the airmass term the level falls with airmass; after it the clear ones agree
    clear = [i for i in range(6) if i not in (CLOUDY, FAILING)]
    levels = np.array(table["level"][clear])
    assert np.corrcoef(np.array(AIRMASS)[clear], levels)[0, 1] < -0.8
    html = (report / "index.html").read_text(encoding="utf-8")
    assert "no rows, only a header" in html and "below the night" in html


def test_page_parses_and_every_link_and_image_resolves(night):
    _, out, report = night
    page = _parse(report / "index.html")
    assert page.scripts == []  # reads without JavaScript, loads nothing from elsewhere
    assert len(page.images) >= 4
    for img in page.images:
        assert img.get("alt") and _resolves(report, img["src"]), img
    links = [h for h in page.links if h]
    assert any(h.startswith("qc/") for h in links) and "night_summary.ecsv" in links
    for href in links:
        assert _resolves(report, href, page.ids), href
    assert all(scope in ("col", "row") for scope in page.header_cells)
    # every row of the run log is in a table
    log = read_run_log(out / "kspec_fluxcal_runlog.ecsv")
    names = [Path(str(f)).name for f in log["file"]]
    assert len(log) == 6
    for name in names:
        assert page.row_headers.count(name) >= 2  # the exposures' table and the run log's
    assert sum(1 for h in page.row_headers if h in names) == len(names) + len(log)
    # well formed as XML too, once the void elements are closed
    text = (report / "index.html").read_text(encoding="utf-8").replace("<!DOCTYPE html>", "")
    text = text.replace("<br>", "<br/>")
    text = re.sub(r"<(meta|img)([^>]*[^/])>", r"<\1\2/>", text)
    assert parseString(text).documentElement.tagName == "html"


def test_missing_and_unreadable_products_are_named_not_fatal(night, tmp_path):
    raw, out, _ = night
    folder = tmp_path / "damaged"
    shutil.copytree(out, folder, ignore=shutil.ignore_patterns("report"))
    (folder / "n1_0001_red.fits").unlink()  # a calibrated frame gone
    (folder / "n1_0001_red_fluxcal.fits").unlink()
    data = (folder / "n1_0003_red.fits").read_bytes()
    (folder / "n1_0003_red.fits").write_bytes(data[:2880 * 3])  # cut short
    (folder / "n1_0003_red_fluxcal.fits").write_bytes(b"not a FITS file")
    report = write_report(folder, tmp_path / "report")
    text = "\n".join(report.problems)
    assert "n1_0001_red.fits" in text and "missing" in text
    assert "n1_0003_red.fits" in text
    html = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "Missing or unreadable" in html and "n1_0003_red.fits" in html
    assert str(folder) not in html  # paths inside the night print relative to it: the page can be published
    table = Table.read(tmp_path / "report" / "night_summary.ecsv")
    assert len(table) == 6
    assert 0.65 <= table["transparency"][CLOUDY] <= 0.75  # the others still measure the cloud

    # an unreadable run log: the calibrated files are listed from their headers
    (folder / "kspec_fluxcal_runlog.ecsv").write_text("garbage\n")
    report = write_report(folder, tmp_path / "report2")
    assert any("run log" in p for p in report.problems)
    assert {e.name for e in report.exposures} >= {"n1_0000_red.fits", "n1_0002_red.fits", "n1_0005_red.fits"}


def test_an_empty_folder_gives_a_page_that_says_so(tmp_path):
    (tmp_path / "night").mkdir()
    status = main(["report", str(tmp_path / "night"), "-o", str(tmp_path / "report"), "-q"])
    assert status == 0
    html = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "no run log" in html and "No figure" in html
    assert len(Table.read(tmp_path / "report" / "night_summary.ecsv")) == 0
    assert main(["report", str(tmp_path / "absent"), "-o", str(tmp_path / "r2"), "-q"]) != 0


def test_the_nightly_product_and_a_site_curve_are_shown(night, tmp_path):
    _, out, _ = night
    products = sorted(out.glob("*_fluxcal.fits"))
    assert main(["combine-night", *map(str, products), "-o", str(tmp_path / "night.fits"), "-q"]) == 0
    site = tmp_path / "site.dat"
    site.write_text("# wavelength k\n3500 0.6\n5000 0.2\n7000 0.1\n10000 0.06\n")
    report = write_report(out, tmp_path / "report", night=tmp_path / "night.fits", site_extinction=site)
    assert report.extinction is not None and report.site_curve is not None
    html = unescape((tmp_path / "report" / "index.html").read_text(encoding="utf-8"))
    assert "Nightly product: 5 of 5 exposures used" in html and "extinction curve: the nightly product's" in html
    trans = {e.name: e.values["transparency"] for e in report.exposures}
    assert 0.65 <= trans["n1_0002_red.fits"] <= 0.75


def _chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _headless(chromium, page, screenshot, profile):
    """Load ``page`` in headless Chromium, take a screenshot; return the console messages it logged."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
           "--window-size=1400,1600", f"--screenshot={screenshot}", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_chromium_loads_the_page_without_console_errors(night, tmp_path):
    _, _, report = night
    chromium = _chromium()
    # the check can fail: a page that logs an error is caught
    control = tmp_path / "control.html"
    control.write_text("<!DOCTYPE html><html><head><title>c</title></head><body>"
                       "<script>console.error('control-error')</script></body></html>")
    assert any("control-error" in m for m in _headless(chromium, control, tmp_path / "c.png", tmp_path / "p1"))
    shot = tmp_path / "report.png"
    messages = _headless(chromium, report / "index.html", shot, tmp_path / "p2")
    assert messages == []
    from matplotlib.image import imread

    image = imread(shot)
    assert image.shape[0] >= 1000 and image.shape[1] >= 1000
    assert np.std(image[..., :3]) > 0.05  # not a blank page


def _calibration(i, airmass, gray=1.0, tilt=0.0, rms=0.003, noise=0.002):
    """One exposure's calibration in memory: the site curve at ``airmass``, a gray factor, a colour tilt."""
    rng = np.random.default_rng(i)
    wave = np.linspace(3700.0, 9700.0, 3000)
    factor = (extincted_calibration(airmass)(wave) / gray * (wave / 6000.0) ** tilt
              * (1 + noise * rng.standard_normal(wave.size)))
    vec = CalibrationVector(wave * u.AA, factor * FLAM / u.ct, (noise * factor) ** 2 * (FLAM / u.ct) ** 2)
    return FluxCalibrationResult(vec, summary={"n_stars_used": 5, "n_stars_rejected": 0, "rms_scatter": rms,
                                               "provenance": {"kind": "exposure"}})


def test_shape_and_scatter_flags_and_a_night_without_airmasses():
    airmass = [1.0, 1.2, 1.4, 1.6, 1.8, 1.3]
    exposures = [Exposure(name=f"e{i}.fits", airmass=x, result=_calibration(i, x)) for i, x in enumerate(airmass)]
    exposures[3].result = _calibration(3, airmass[3], tilt=0.1)  # ±5 % across the range: a fiber off its star
    exposures[5].result = _calibration(5, airmass[5], rms=0.05)
    analysis = analyse_night(exposures)
    assert analysis["extinction"].source == "fit"
    flags = [e.values["flag"] for e in exposures]
    assert "shape departs" in flags[3]
    assert "scatter between standards" in flags[5] and "shape" not in flags[5]
    for i in (0, 1, 2, 4):
        assert flags[i] == "" and 0.97 < exposures[i].values["transparency"] < 1.03
    # without airmasses nothing is moved: the page says the transparency includes the airmass term
    for e in exposures:
        e.airmass = None
    analysis = analyse_night(exposures)
    assert analysis["extinction"] is None and "include the airmass term" in analysis["note"]
    levels = [e.values["transparency"] for e in exposures]
    assert levels[4] < levels[0]  # 0.8 airmasses more: less throughput
