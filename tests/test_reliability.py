"""Reliability: bad input, faults and a damaged cache end in a clear error — and nothing is lost.

Every case of `CASES` damages a copy of one good SYNTHETIC frame, its
catalogue, the template folder, the binary cache or the output write, then
runs the RED stage twice, each time on a fresh copy: through the public API
(`apply_fluxcal`, which must raise the expected exception with the expected
message) and through ``kspec-fluxcal calibrate`` (which must exit with the
expected status and print exactly one line on stderr). Either way the files
in the working folder are byte-identical afterwards and no partial output or
temporary file is left; a case that is a documented degraded result (masked
pixels, a rejected standard, a rebuilt cache) must instead succeed and pass
its own check of the output.

Failing cases run in place (no ``--output``: the input itself is the target
that must survive); succeeding cases write ``out.fits`` beside the input.
"""

import collections
import errno
import gzip
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table, vstack

from kspec_fluxcal.cache import cache_dir, load_arrays, save_arrays
from kspec_fluxcal.cli import main
from kspec_fluxcal.exceptions import (
    AlreadyCalibratedError,
    CalibrationError,
    CatalogError,
    InputDataError,
    KspecFluxcalError,
    OutputWriteError,
    RedFileError,
    TemplateLibraryError,
)
from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal, read_red_frame
from kspec_fluxcal.simulate import make_exposure, write_bosz_grid, write_refcat_csv
from kspec_fluxcal.templates import TemplateLibrary
from kspec_fluxcal.templates import prepared as prepared_grid
from kspec_fluxcal.wavelength import common_log_grid

from .conftest import make_read_only

# ---------------------------------------------------------------------------
# the good frame


@dataclass
class Good:
    """The good frame, its catalogue, the templates, the reference output and its cache entries."""

    exposure: object
    red: Path
    cat: Path
    templates: Path
    reference: Path
    types: np.ndarray
    library_cache: Path
    prepared_cache: Path


@pytest.fixture(scope="module")
def good(tmp_path_factory, synthetic_grid_dir):
    exp = make_exposure(n_standards=4, n_science=1, n_sky=1, n_pix=3000, fwhm=2.5, seed=3)
    folder = tmp_path_factory.mktemp("good")
    red, cat = exp.write(folder, stem="good")
    reference = folder / "reference.fits"
    run = apply_fluxcal(red, FluxcalConfig(catalog=cat, templates=synthetic_grid_dir, output=reference))
    assert run.result.summary["n_stars_used"] == 4
    library = TemplateLibrary(synthetic_grid_dir)
    common = common_log_grid(read_red_frame(red).wavelength)
    prepared = [
        entry for entry in cache_dir("prepared").iterdir()
        if (entry / "index.json").is_file()
        and json.loads((entry / "index.json").read_text())["meta"]["meta"]["library_fingerprint"] == library.fingerprint
        and np.array_equal(np.load(entry / "wavelength.npy"), common)
    ]
    assert len(prepared) == 1
    types = np.char.strip(Table.read(red, hdu="FIBRES")["TYPE"].astype(str))
    return Good(exp, red, cat, Path(synthetic_grid_dir), reference, types,
                cache_dir("templates", library.fingerprint), prepared[0])


# ---------------------------------------------------------------------------
# the working copy a case damages


@dataclass
class Workspace:
    """Fresh copies of the good inputs; a case edits them or repoints ``templates``/``output``."""

    good: Good
    dir: Path
    tmp: Path
    red: Path
    cat: Path
    templates: Path
    output: Path
    monkeypatch: pytest.MonkeyPatch
    caplog: object
    cleanup: list = field(default_factory=list)


def _workspace(good, tmp_path, monkeypatch, caplog, succeeds):
    caplog.set_level(logging.INFO, logger="kspec_fluxcal")
    folder = tmp_path / "work"
    folder.mkdir()
    red, cat = folder / "red.fits", folder / "cat.csv"
    shutil.copy(good.red, red)
    shutil.copy(good.cat, cat)
    return Workspace(good, folder, tmp_path, red, cat, good.templates, folder / "out.fits" if succeeds else None,
                     monkeypatch, caplog)


def _snapshot(folder):
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------------------
# damage: the RED file


def _cut(fraction):
    def corrupt(ws):
        data = ws.red.read_bytes()
        ws.red.write_bytes(data[: int(len(data) * fraction)])
    return corrupt


def _garbage(ws):
    ws.red.write_bytes(np.random.default_rng(0).bytes(50_000))


def _edit_red(edit):
    def corrupt(ws):
        with fits.open(ws.red, memmap=False) as hdul:
            copy = fits.HDUList([h.copy() for h in hdul])
        edit(copy, ws.good.types)
        copy.writeto(ws.red, overwrite=True)
    return corrupt


def _drop(name):
    def edit(hdul, types):
        del hdul[name]
    return edit


def _set_image(name, transform):
    def edit(hdul, types):
        hdul[name].data = transform(hdul[name].data)
    return edit


def _fibres_rows(hdul, types):
    table = Table.read(hdul["FIBRES"])[:-1]
    hdul["FIBRES"] = fits.table_to_hdu(table)
    hdul["FIBRES"].name = "FIBRES"


def _fibres_image(hdul, types):
    hdul["FIBRES"] = fits.ImageHDU(np.zeros(len(types)), name="FIBRES")


def _fibres_no_type(hdul, types):
    table = Table.read(hdul["FIBRES"])
    table.remove_column("TYPE")
    hdul["FIBRES"] = fits.table_to_hdu(table)
    hdul["FIBRES"].name = "FIBRES"


def _primary_header(**cards):
    def edit(hdul, types):
        for key, value in cards.items():
            if value is None:
                del hdul[0].header[key]
            else:
                hdul[0].header[key] = value
    return edit


def _primary_no_data(hdul, types):
    hdul[0] = fits.PrimaryHDU(header=hdul[0].header)
    hdul[0].header["EXTEND"] = True


def _wavela(scale, bunit):
    """WAVELA multiplied by ``scale`` (the good frame's Å in another unit), BUNIT set (or removed: None)."""
    def edit(hdul, types):
        hdul["WAVELA"].data = hdul["WAVELA"].data * scale
        if bunit is None:
            del hdul["WAVELA"].header["BUNIT"]
        else:
            hdul["WAVELA"].header["BUNIT"] = bunit
    return edit


def _wave_nan(hdul, types):
    hdul["WAVELA"].data[1, 500] = np.nan


def _wave_no_data(hdul, types):
    hdul["WAVELA"] = fits.ImageHDU(name="WAVELA")


BAD_PIXELS = {"nan_counts": slice(100, 110), "inf_counts": slice(200, 205), "negative_variance": slice(300, 310),
              "nan_variance": slice(400, 405)}


def _bad_pixels(hdul, types):
    hdul[0].data[:, BAD_PIXELS["nan_counts"]] = np.nan
    hdul[0].data[:, BAD_PIXELS["inf_counts"]] = np.inf
    hdul["VARIANCE"].data[:, BAD_PIXELS["negative_variance"]] = -1.0
    hdul["VARIANCE"].data[:, BAD_PIXELS["nan_variance"]] = np.nan


def _negative_science_counts(hdul, types):
    hdul[0].data[np.flatnonzero(types == "P"), 500:520] = -50.0


def _standard_mostly_nan(hdul, types):
    hdul[0].data[np.flatnonzero(types == "C")[0], :2550] = np.nan


def _standards_all_nan(hdul, types):
    hdul[0].data[types == "C"] = np.nan


def _variance_zero(hdul, types):
    hdul["VARIANCE"].data[:] = 0.0


def _no_standards(hdul, types):
    hdul["FIBRES"].data["TYPE"] = np.where(types == "C", "P", types)


# ---------------------------------------------------------------------------
# damage: the catalogue


def _edit_catalog(edit):
    def corrupt(ws):
        table = Table.read(ws.cat, format="ascii.csv")
        for name in table.colnames:
            table.rename_column(name, name.strip())
        write_refcat_csv(edit(table, ws.good), ws.cat)
    return corrupt


def _edit_lines(edit):
    def corrupt(ws):
        ws.cat.write_text("\n".join(edit(ws.cat.read_text().splitlines())) + "\n")
    return corrupt


def _remove_columns(*names):
    def edit(table, good):
        table.remove_columns(list(names))
        return table
    return edit


BANDS = {"g": "dg", "r": "dr", "i": "di", "z": "dz", "Gaia": "dGaia", "BP": "dBP", "RP": "dRP", "J": "dJ", "H": "dH",
         "K": "dK"}


def _only_sentinels(table, good):
    for mag, err in BANDS.items():
        table[mag], table[err] = 99.0, 9.999
    return table


def _field_stars_only(table, good):
    return table[table["objid"] >= 5000]


def _junk(lines):
    cells = lines[2].split(",")
    cells[3] = "n/a?"
    lines[2] = ",".join(cells)
    return lines


def _ragged(lines):
    lines[3] += ",1,2,3"
    return lines


def _coordinates(ra_to, dec_to):
    def edit(table, good):
        table["RA"], table["Dec"] = ra_to(np.asarray(table["RA"])), dec_to(np.asarray(table["Dec"]))
        return table
    return edit


def _first_dec(value):
    def edit(table, good):
        table["Dec"][0] = value
        return table
    return edit


# ---------------------------------------------------------------------------
# damage: the template folder and the binary cache


def _copy_templates(ws):
    ws.templates = ws.tmp / "templates"
    shutil.copytree(ws.good.templates, ws.templates)
    return ws.templates


def _first_model(ws):
    """The model file ingested first (lowest [M/H], Teff, log g), so a damaged one fails at once."""
    return next(_copy_templates(ws).rglob("bosz2024_*_t5000_g+4.0_m-1.00_*_resam.txt.gz"))


def _empty_templates(ws):
    ws.templates = ws.tmp / "empty"
    ws.templates.mkdir()


def _missing_templates(ws):
    ws.templates = ws.tmp / "nowhere"


def _bosz_and_ck04(ws):
    folder = _copy_templates(ws) / "ckp00"
    folder.mkdir()
    (folder / "ckp00_6000.fits").write_bytes(b"\0" * 2880)


def _two_resolutions(ws):
    folder = _copy_templates(ws) / "r5000" / "m+0.00"
    folder.mkdir(parents=True)
    (folder / "bosz2024_mp_t6000_g+4.0_m+0.00_a+0.00_c+0.00_v2_r5000_resam.txt.gz").write_bytes(gzip.compress(b"1 2\n"))


def _not_gzip(ws):
    _first_model(ws).write_bytes(b"this is not gzip at all")


def _truncated_gzip(ws):
    path = _first_model(ws)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _short_model(ws):
    path = _first_model(ws)
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    path.write_bytes(gzip.compress(b"".join(lines[:-100])))


def _missing_wave_grid(ws):
    next(_copy_templates(ws).rglob("bosz2024_wave_r*.txt")).unlink()


def _corrupt_ck04(ws):
    ws.templates = ws.tmp / "ck04models"
    (ws.templates / "ckp00").mkdir(parents=True)
    (ws.templates / "ckp00" / "ckp00_6000.fits").write_bytes(b"SIMPLE  = T" + b"\x07" * 3000)


def _private_cache(ws):
    """A cache of the good frame's library and prepared grid only, for this case to damage.

    The process's memo of prepared grids is emptied too, as in a new process.
    """
    ws.monkeypatch.setattr(prepared_grid, "_PREPARED_MEMO", collections.OrderedDict())
    root = ws.tmp / "cache"
    library = root / "templates" / ws.good.library_cache.name
    prepared = root / "prepared" / ws.good.prepared_cache.name
    shutil.copytree(ws.good.library_cache, library)
    shutil.copytree(ws.good.prepared_cache, prepared)
    ws.monkeypatch.setenv("KSPEC_FLUXCAL_CACHE", str(root))
    return library, prepared


def _garble_prepared_flux(ws):
    path = _private_cache(ws)[1] / "flux.npy"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def _garble_library_index(ws):
    (_private_cache(ws)[0] / "index" / "index.json").write_text('{"meta": {"fingerprint": ')


def _garble_verified_stamp(ws):
    (_private_cache(ws)[1] / "verified.json").write_text("[not json")


# ---------------------------------------------------------------------------
# faults: the output write


def _deny_replace(ws):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == ws.red:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
        return real(src, dst, *args, **kwargs)

    ws.monkeypatch.setattr(os, "replace", replace)


def _writeto_fails(make_exception):
    """HDUList.writeto writes part of the file, then raises ``make_exception()``."""
    def corrupt(ws):
        def writeto(self, name, *args, **kwargs):
            Path(name).write_bytes(b"SIMPLE  =                    T" + b" " * 20_000)
            raise make_exception()

        ws.monkeypatch.setattr(fits.HDUList, "writeto", writeto)
    return corrupt


def _read_only_folder(ws):
    ws.cleanup.append(make_read_only(ws.dir))  # chmod, or a read-only bind mount as root


def _missing_output_folder(ws):
    ws.output = ws.tmp / "no" / "such" / "folder" / "out.fits"


def _output_is_a_folder(ws):
    ws.output = ws.tmp / "a_folder"
    ws.output.mkdir()


# ---------------------------------------------------------------------------
# checks of degraded results


def _flux(path):
    with fits.open(path) as hdul:
        return hdul[0].data.astype(float), hdul["VARIANCE"].data.astype(float), hdul[0].header


def _same_as_reference(ws, out):
    flux, var, header = _flux(out)
    ref_flux, ref_var, ref_header = _flux(ws.good.reference)
    assert header["FCALNSTR"] == ref_header["FCALNSTR"] == 4
    np.testing.assert_allclose(flux, ref_flux, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(var, ref_var, rtol=1e-6, equal_nan=True)


def _cache_repaired(log_fragment):
    """The output is the reference one and the damaged cache entries verify again."""
    def check(ws, out):
        _same_as_reference(ws, out)
        library, prepared = (ws.tmp / "cache" / sub / entry.name for sub, entry in
                             (("templates", ws.good.library_cache), ("prepared", ws.good.prepared_cache)))
        load_arrays(library / "index", verify=True)
        load_arrays(prepared, verify=True)
        assert json.loads((prepared / "verified.json").read_text())
        assert log_fragment in ws.caplog.text
    return check


def _bad_pixels_are_nan(ws, out):
    flux, var, header = _flux(out)
    ref_flux, _, _ = _flux(ws.good.reference)
    assert header["FCALNSTR"] == 4
    bad = np.zeros(flux.shape, dtype=bool)
    for cols in BAD_PIXELS.values():
        bad[:, cols] = True
    assert np.all(np.isnan(flux[bad])) and np.all(np.isnan(var[bad]))
    science = np.flatnonzero(ws.good.types == "P")
    good = ~bad[science] & np.isfinite(ref_flux[science])
    assert np.all(np.isfinite(flux[science][good])) and np.all(flux[science][good] != 0)
    assert np.median(flux[science][good] / ref_flux[science][good]) == pytest.approx(1.0, abs=0.01)


def _negative_counts_calibrated(ws, out):
    flux, var, _ = _flux(out)
    science = np.flatnonzero(ws.good.types == "P")
    assert np.all(np.isfinite(flux[science, 500:520])) and np.all(flux[science, 500:520] < 0)
    assert np.all(var[science, 500:520] > 0)


def _one_standard_rejected(ws, out):
    _, _, header = _flux(out)
    stars = Table.read(out, hdu="FCALSTAR")
    dropped = int(np.flatnonzero(ws.good.types == "C")[0])
    row = stars[stars["FIBER"] == dropped][0]
    assert not row["USED"] and "pixels are usable" in row["REASON"]
    assert header["FCALNSTR"] == 3
    assert any(f"FCAL fiber {dropped}" in str(h) and "rejected" in str(h) for h in header["HISTORY"])
    assert "rejected" in ws.caplog.text


# ---------------------------------------------------------------------------
# the table


@dataclass
class Case:
    """One way to damage the inputs and how the run must end.

    ``error`` None means the run succeeds with a documented (degraded)
    result, which ``check(ws, output)`` verifies; otherwise the API raises
    ``error`` with a message matching ``match`` (a regex) and the CLI exits
    with ``exit`` printing one line that matches it too.
    """

    id: str
    corrupt: object
    error: type = None
    match: str = ""
    exit: int = 2
    check: object = None


def _no_space():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


CASES = [
    # RED file: damaged
    Case("red-cut-in-half", _cut(0.5), RedFileError, "truncated or damaged"),
    Case("red-cut-to-a-fifth", _cut(0.2), RedFileError, "truncated or damaged"),
    Case("red-cut-before-last-extension", _cut(0.99), RedFileError, "truncated or damaged"),
    Case("red-garbage-bytes", _garbage, RedFileError, "not a readable FITS file"),
    Case("red-empty-file", _cut(0.0), RedFileError, "not a readable FITS file"),
    Case("red-missing", lambda ws: ws.red.unlink(), RedFileError, "does not exist"),
    # RED file: structure
    Case("red-no-VARIANCE", _edit_red(_drop("VARIANCE")), RedFileError, "no VARIANCE extension"),
    Case("red-no-WAVELA", _edit_red(_drop("WAVELA")), RedFileError, "no WAVELA extension"),
    Case("red-no-FIBRES", _edit_red(_drop("FIBRES")), RedFileError, "no FIBRES extension"),
    Case("red-VARIANCE-shape", _edit_red(_set_image("VARIANCE", lambda d: d[:, :-5])), RedFileError,
         r"VARIANCE shape \(6, 2995\) differs"),
    Case("red-WAVELA-shape", _edit_red(_set_image("WAVELA", lambda d: d[:-1])), RedFileError,
         r"WAVELA shape \(5, 3000\) fits neither"),
    Case("red-FIBRES-rows", _edit_red(_fibres_rows), RedFileError, "FIBRES has 5 rows but PRIMARY has 6"),
    Case("red-FIBRES-not-a-table", _edit_red(_fibres_image), RedFileError, "FIBRES of red.fits is not a table"),
    Case("red-FIBRES-no-TYPE", _edit_red(_fibres_no_type), RedFileError, "no TYPE column"),
    Case("red-PRIMARY-1d", _edit_red(_set_image("PRIMARY", lambda d: d[0])), RedFileError, "must be 2-D"),
    Case("red-PRIMARY-no-data", _edit_red(_primary_no_data), RedFileError, "holds no data"),
    Case("red-BUNIT-junk", _edit_red(_primary_header(BUNIT="florps")), RedFileError, "BUNIT 'florps'"),
    Case("red-no-FWHM", _edit_red(_primary_header(SPECFWHM=None)), InputDataError, "--fwhm"),
    Case("red-already-calibrated", _edit_red(_primary_header(FLUXCAL=True)), AlreadyCalibratedError, "--force"),
    # wavelengths
    Case("wave-nm-with-BUNIT", _edit_red(_wavela(u.AA.to(u.nm), "nm")), check=_same_as_reference),
    Case("wave-nm-without-BUNIT", _edit_red(_wavela(u.AA.to(u.nm), None)), check=_same_as_reference),
    Case("wave-um-without-BUNIT", _edit_red(_wavela(u.AA.to(u.um), None)), check=_same_as_reference),
    Case("wave-nm-labelled-Angstrom", _edit_red(_wavela(u.AA.to(u.nm), "Angstrom")), RedFileError,
         "outside the plausible 1000–30000 Å"),
    Case("wave-Angstrom-labelled-nm", _edit_red(_wavela(1.0, "nm")), RedFileError, "outside the plausible"),
    Case("wave-unit-not-length", _edit_red(_wavela(1.0, "s")), RedFileError, "not a wavelength"),
    Case("wave-decreasing", _edit_red(_set_image("WAVELA", lambda d: d[:, ::-1])), RedFileError,
         "must increase"),
    Case("wave-NaN", _edit_red(_wave_nan), RedFileError, "1 non-finite wavelengths"),
    Case("wave-all-NaN", _edit_red(_set_image("WAVELA", lambda d: d * np.nan)), RedFileError,
         "18000 non-finite wavelengths"),
    Case("wave-no-data", _edit_red(_wave_no_data), RedFileError, r"WAVELA shape \(\) fits neither"),
    # pixel values and standards
    Case("pix-NaN-inf-negative-variance", _edit_red(_bad_pixels), check=_bad_pixels_are_nan),
    Case("pix-negative-science-counts", _edit_red(_negative_science_counts), check=_negative_counts_calibrated),
    Case("std-one-mostly-NaN", _edit_red(_standard_mostly_nan), check=_one_standard_rejected),
    Case("std-all-NaN", _edit_red(_standards_all_nan), CalibrationError,
         "every standard star was rejected.*pixels are usable"),
    Case("std-zero-variance", _edit_red(_variance_zero), CalibrationError, "every standard star was rejected"),
    Case("std-none-in-frame", _edit_red(_no_standards), CalibrationError, "no standard-star fibers"),
    Case("std-match-no-catalogue-row", _edit_catalog(_field_stars_only), CalibrationError,
         "every standard star was rejected.*arcsec away"),
    # catalogue
    Case("cat-missing", lambda ws: ws.cat.unlink(), CatalogError, "does not exist"),
    Case("cat-empty-file", lambda ws: ws.cat.write_text(""), CatalogError, "cannot read catalogue"),
    Case("cat-header-only", _edit_lines(lambda lines: lines[:1]), CatalogError, "holds no rows"),
    Case("cat-binary-garbage", lambda ws: ws.cat.write_bytes(np.random.default_rng(1).bytes(4000)), CatalogError,
         "cannot read catalogue"),
    Case("cat-semicolons", _edit_lines(lambda lines: [x.replace(",", ";") for x in lines]), CatalogError,
         "single column"),
    Case("cat-ragged-row", _edit_lines(_ragged), CatalogError, "cannot read catalogue.*inconsistent"),
    Case("cat-no-RA", _edit_catalog(_remove_columns("RA")), CatalogError, "no 'RA' column"),
    Case("cat-no-bands", _edit_catalog(_remove_columns(*BANDS, *BANDS.values())), CatalogError,
         "no photometric band"),
    Case("cat-only-sentinels", _edit_catalog(_only_sentinels), CalibrationError,
         "every standard star was rejected.*0 photometric band"),
    Case("cat-duplicated-rows", _edit_catalog(lambda t, g: vstack([t, t])), check=_same_as_reference),
    Case("cat-junk-value", _edit_lines(_junk), CatalogError, r"row 2 \(file line 3\), column 'Dec'.*not a number"),
    Case("cat-radians", _edit_catalog(_coordinates(np.radians, np.radians)), CatalogError,
         "look like radians"),
    Case("cat-RA-hours", _edit_catalog(_coordinates(lambda ra: ra / 15, lambda dec: dec)), CatalogError,
         "RA looks like hours"),
    Case("cat-Dec-out-of-range", _edit_catalog(_first_dec(120.0)), CatalogError, "outside 0–360° / ±90°"),
    # template folder
    Case("tpl-empty-folder", _empty_templates, TemplateLibraryError, "is empty"),
    Case("tpl-missing-folder", _missing_templates, InputDataError, "does not exist"),
    Case("tpl-BOSZ-and-ck04", _bosz_and_ck04, TemplateLibraryError, "both BOSZ 2024 models and a ck04models"),
    Case("tpl-two-resolutions", _two_resolutions, TemplateLibraryError, "several resolving powers.*r10000"),
    Case("tpl-model-not-gzip", _not_gzip, TemplateLibraryError, "not a valid gzip file"),
    Case("tpl-model-gzip-truncated", _truncated_gzip, TemplateLibraryError, "not a valid gzip file"),
    Case("tpl-model-rows-missing", _short_model, TemplateLibraryError, "truncated or belongs to another resolution"),
    Case("tpl-wave-grid-missing", _missing_wave_grid, TemplateLibraryError, "wave grid .* is missing"),
    Case("tpl-ck04-corrupt-FITS", _corrupt_ck04, TemplateLibraryError, "ck04 model file .* is unreadable"),
    # binary cache: detected and rebuilt
    Case("cache-prepared-grid-garbled", _garble_prepared_flux, check=_cache_repaired("rebuilding the prepared grid")),
    Case("cache-library-index-garbled", _garble_library_index, check=_cache_repaired("rebuilding the template index")),
    Case("cache-verified-stamp-garbled", _garble_verified_stamp, check=_cache_repaired("loaded from the cache")),
    # the output write
    Case("out-permission-denied", _deny_replace, OutputWriteError, "cannot write .*red.fits: Permission denied"),
    Case("out-read-only-folder", _read_only_folder, OutputWriteError, "Permission denied|Read-only file system"),
    Case("out-missing-folder", _missing_output_folder, OutputWriteError, "No such file or directory"),
    Case("out-target-is-a-folder", _output_is_a_folder, OutputWriteError, "Is a directory"),
    Case("out-disk-full-midway", _writeto_fails(_no_space), OutputWriteError, "No space left on device"),
    Case("out-interrupted-midway", _writeto_fails(KeyboardInterrupt), KeyboardInterrupt, "interrupted", exit=130),
    Case("out-unexpected-error", _writeto_fails(lambda: RuntimeError("disk controller on fire")), RuntimeError,
         r"internal error, a bug and not bad input \(RuntimeError: disk controller on fire\); rerun with --debug",
         exit=70),
    Case("out-bare-ValueError-is-a-bug", _writeto_fails(lambda: ValueError("min() arg is an empty sequence")),
         ValueError, r"internal error, a bug and not bad input \(ValueError: min\(\) arg is an empty sequence\)",
         exit=70),
]


@pytest.mark.parametrize("interface", ["api", "cli"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, interface, good, tmp_path, monkeypatch, caplog, capsys):
    ws = _workspace(good, tmp_path, monkeypatch, caplog, succeeds=case.error is None)
    case.corrupt(ws)
    before = _snapshot(ws.dir)
    try:
        if interface == "api":
            config = FluxcalConfig(catalog=ws.cat, templates=ws.templates, output=ws.output)
            if case.error is None:
                apply_fluxcal(ws.red, config)
            else:
                # the API message is the CLI line without its prefix, except for what the CLI itself words
                api_match = case.match if issubclass(case.error, KspecFluxcalError) else None
                with pytest.raises(case.error, match=api_match):
                    apply_fluxcal(ws.red, config)
        else:
            argv = ["calibrate", str(ws.red), "--catalog", str(ws.cat), "--templates", str(ws.templates)]
            status = main(argv + (["--output", str(ws.output)] if ws.output else []))
            captured = capsys.readouterr()
            if case.error is None:
                assert status == 0, captured.err
                assert captured.err == ""
            else:
                lines = captured.err.strip().splitlines()
                assert status == case.exit
                assert len(lines) == 1 and lines[0].startswith("kspec-fluxcal: "), captured.err
                assert re.search(case.match, lines[0]), lines[0]
        after = _snapshot(ws.dir)
    finally:
        for undo in ws.cleanup:
            undo()
    if case.error is None:
        assert after.pop("out.fits")[:6] == b"SIMPLE"
        assert after == before
        case.check(ws, ws.output)
    else:
        assert after == before
        assert not list(ws.tmp.rglob("*.part"))


# ---------------------------------------------------------------------------
# beyond the table


def test_debug_shows_the_traceback(good, tmp_path):
    red = tmp_path / "red.fits"
    red.write_bytes(b"")
    with pytest.raises(RedFileError):
        main(["calibrate", str(red), "--catalog", str(good.cat), "--templates", str(good.templates), "--debug"])


@pytest.fixture(scope="module")
def tiny_library(tmp_path_factory):
    """Four SYNTHETIC BOSZ models on a short wave grid: cheap to ingest again and again."""
    dest = tmp_path_factory.mktemp("tiny_bosz")
    write_bosz_grid(dest, teffs=(5500, 6000), loggs=(4.0, 4.5), fehs=(0.0,), resolution=2000,
                    wave_range=(3000.0, 10000.0), layout="flat", workers=1)
    return dest


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(path):
    data = bytearray(path.read_bytes())
    data[-100:] = bytes(255 - b for b in data[-100:])
    path.write_bytes(bytes(data))


def _stale_grid(folder):
    save_arrays(folder, {"wavelength": np.arange(3.0), "flux": np.ones((2, 3), np.float32),
                         "continuum": np.ones((2, 3), np.float32)}, meta={"fingerprint": "elsewhere"})


@pytest.mark.parametrize("entry, damage", [
    ("grid/flux.npy", _truncate),
    ("grid/continuum.npy", _flip_bytes),
    ("grid/index.json", lambda p: p.write_text("{")),
    ("grid/verified.json", lambda p: p.write_text("[[")),
    ("grid", _stale_grid),
    ("index/index.json", lambda p: p.write_text("")),
    ("index/teff.npy", _truncate),
], ids=["grid-npy-truncated", "grid-npy-garbled", "grid-index-garbled", "grid-stamp-garbled", "grid-stale",
        "index-json-empty", "index-npy-truncated"])
def test_damaged_library_cache_is_rebuilt(tiny_library, tmp_path, monkeypatch, entry, damage):
    monkeypatch.setenv("KSPEC_FLUXCAL_CACHE", str(tmp_path / "cache"))
    library = TemplateLibrary(tiny_library)
    _, flux, continuum, _ = library.load_grid()
    flux, continuum = np.array(flux), np.array(continuum)
    damage(cache_dir("templates", library.fingerprint) / entry)
    again = TemplateLibrary(tiny_library)
    _, flux2, continuum2, _ = again.load_grid()
    np.testing.assert_array_equal(flux2, flux)
    np.testing.assert_array_equal(continuum2, continuum)
    for sub in ("index", "grid"):
        load_arrays(cache_dir("templates", library.fingerprint, sub), verify=True)
    assert not list((tmp_path / "cache").rglob("*.part"))
