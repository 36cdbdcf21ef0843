"""Tests of kspec_fluxcal.templates: libraries, binary cache, LSF preparation, PreparedGrid."""

import gc
import gzip
import logging
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table
from dust_extinction.parameter_averages import F99
from scipy.optimize import curve_fit
from specutils import Spectrum
from specutils.manipulation import FluxConservingResampler

from kspec_fluxcal import templates
from kspec_fluxcal.cache import cache_dir
from kspec_fluxcal.containers import FLAM, StellarTemplate
from kspec_fluxcal.exceptions import InputDataError, TemplateLibraryError
from kspec_fluxcal.photometry import band_flux_weights
from kspec_fluxcal.simulate import write_bosz_grid
from kspec_fluxcal.templates import (
    PreparedGrid,
    TemplateLibrary,
    TemplateResolutionWarning,
    library,
    lsf_operator,
    parse_bosz_filename,
    prepare_template,
    prepared,
)

SIGMA_SB = 5.670374419e-5  # erg s⁻¹ cm⁻² K⁻⁴
REAL_NAME = "bosz2024_mp_t6000_g+4.0_m+0.00_a+0.00_c+0.00_v2_r5000_resam.txt.gz"


def _effective_temperature(template):
    flux = np.trapezoid(template.flux.to_value(FLAM), template.wavelength.to_value(u.AA))
    return (flux / SIGMA_SB) ** 0.25


def _fit_fwhm(wave, flux, center, half_window=10.0):
    """FWHM (Å) and centre of a Gaussian absorption line fitted near ``center``."""
    sel = (wave > center - half_window) & (wave < center + half_window)

    def model(x, depth, mu, sigma, level):
        return level - depth * np.exp(-0.5 * ((x - mu) / sigma) ** 2)

    p0 = [1.0 - flux[sel].min(), center, half_window / 5.0, 1.0]
    p, _ = curve_fit(model, wave[sel], flux[sel], p0=p0)
    return abs(p[2]) * 2.0 * np.sqrt(2.0 * np.log(2.0)), p[1]


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache folder of this test only (so a first load really is a first load)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("KSPEC_FLUXCAL_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    """A small SYNTHETIC BOSZ-format grid (8 models, R = 5000, 3000–26 000 Å, MAST layout)."""
    dest = tmp_path_factory.mktemp("synthetic_bosz")
    write_bosz_grid(
        dest, teffs=(5500, 6500), loggs=(4.0, 4.5), fehs=(-0.5, 0.0), resolution=5000,
        wave_range=(3000.0, 26000.0), layout="mast",
    )
    return dest


@pytest.fixture
def synthetic_copy(synthetic_dir, tmp_path):
    """A private copy of the synthetic grid that a test may modify."""
    return Path(shutil.copytree(synthetic_dir, tmp_path / "lib"))


def _write_fake_bosz(folder, n_wave, rows=None, teff=6000, resolution=5000, wave_file=True):
    """A minimal BOSZ-format folder: wave grid + one model of ``rows`` rows."""
    folder.mkdir(parents=True, exist_ok=True)
    wave = np.geomspace(3000.0, 10000.0, n_wave)
    if wave_file:
        np.savetxt(folder / f"bosz2024_wave_r{resolution}.txt", wave, fmt="%.7e")
    rows = n_wave if rows is None else rows
    name = f"bosz2024_mp_t{teff}_g+4.0_m+0.00_a+0.00_c+0.00_v2_r{resolution}_resam.txt.gz"
    text = "".join(f"{1e5:.4e} {1.1e5:.4e}\n" for _ in range(rows))
    path = folder / name
    path.write_bytes(gzip.compress(text.encode()))
    return path


# ---------------------------------------------------------------------------
# file names


def test_parse_bosz_filename_real_names():
    p = parse_bosz_filename(REAL_NAME)
    assert p == templates.BoszModelName("mp", 6000.0, 4.0, 0.0, 0.0, 0.0, 2.0, 5000)
    q = parse_bosz_filename("r10000/m-1.00/bosz2024_ms_t3500_g-0.5_m-1.00_a+0.25_c-0.25_v4_r10000_resam.txt.gz")
    assert (q.atmos, q.teff, q.logg, q.feh, q.alpha_m, q.carbon_m, q.vmicro, q.resolution) == (
        "ms", 3500.0, -0.5, -1.0, 0.25, -0.25, 4.0, 10000,
    )


@pytest.mark.parametrize(
    "name",
    [
        "bosz2024_wave_r5000.txt",
        "bosz2024_mp_t6000_g+4.0_m+0.00_a+0.00_c+0.00_v2_rorig_noresam.txt.gz",
        "README.txt",
        "ckp00_6000.fits",
        "bosz2024_mp_t6000_g+4.0_m+0.00_a+0.00_c+0.00_v2_r5000_resam.txt",
    ],
)
def test_parse_bosz_filename_foreign(name):
    assert parse_bosz_filename(name) is None


# ---------------------------------------------------------------------------
# real libraries


def test_real_bosz_model(bosz_dir):
    lib = TemplateLibrary(bosz_dir)
    assert lib.kind == "bosz2024" and lib.resolution == 5000 and len(lib) == 1
    tpl = lib.load_template(lib.entries[0])
    assert tpl.wavelength.unit == u.AA and tpl.flux.unit == FLAM and tpl.continuum.unit == FLAM
    assert tpl.wavelength.size == 75000
    assert (tpl.teff, tpl.logg, tpl.feh, tpl.alpha_m, tpl.vmicro, tpl.resolution) == (6000, 4.0, 0, 0, 2.0, 5000)
    assert abs(_effective_temperature(tpl) ** 4 / 6000.0**4 - 1) < 0.01
    # Hα core: parabola through the three lowest samples near 6563 Å (air)
    w, f = tpl.wavelength.value, tpl.flux.value
    i = np.flatnonzero((w > 6555) & (w < 6570))[np.argmin(f[(w > 6555) & (w < 6570)])]
    y = f[i - 1 : i + 2]
    vertex = w[i] + 0.5 * (y[0] - y[2]) / (y[0] - 2 * y[1] + y[2]) * (w[i + 1] - w[i - 1]) / 2
    assert abs(vertex - 6562.8) < 0.1
    sub = lib.load_template(0, wave_range=(6000, 7000) * u.AA)
    assert sub.wavelength.value.min() >= 6000 and sub.wavelength.value.max() <= 7000
    assert lib.get_template(6100, 4.2, 0.1).teff == 6000


def test_ck04_library(ck04_subset):
    lib = TemplateLibrary(ck04_subset(("ckm10", "ckm05", "ckp00", "ckp02", "ckp05")))
    assert lib.kind == "ck04models" and lib.resolution is None
    e = lib.entries
    # ckp00_8000 has no log g 0.0 and 0.5 models (all-zero columns); ckp00_6000 has all 11
    at8000 = e[(e["teff"] == 8000) & (e["feh"] == 0.0)]
    assert 0.0 not in at8000["logg"] and 0.5 not in at8000["logg"] and 1.0 in at8000["logg"]
    assert len(e[(e["teff"] == 6000) & (e["feh"] == 0.0)]) == 11
    assert sorted(set(np.round(e["feh"], 2))) == [-1.0, -0.5, 0.0, 0.2, 0.5]
    assert len(lib.query(teff_range=(5000, 5500), logg_range=(4.0, 5.0), feh_range=(0.2, 0.2))) == 3 * 3
    tpl = lib.get_template(5800, 4.4, 0.1)
    assert (tpl.teff, tpl.logg, tpl.feh, tpl.resolution) == (5750, 4.5, 0.0, None)
    assert tpl.flux.unit == FLAM
    assert abs(_effective_temperature(tpl) / 5750 - 1) < 0.03
    # the derived continuum is an upper envelope of the flux
    w = tpl.wavelength.value
    opt = (w > 3000) & (w < 25000)
    ratio = (tpl.flux / tpl.continuum).value[opt]
    assert np.mean(ratio > 1.01) < 0.01 and ratio.max() < 1.1
    assert np.median(ratio) > 0.9


def test_ck04_is_coarser_than_a_2A_lsf(ck04_dir):
    lib = TemplateLibrary(ck04_dir)
    tpl = lib.get_template(6000, 4.5, 0.0)
    target = np.linspace(4000, 9000, 2000)
    with pytest.warns(TemplateResolutionWarning, match="already as broad"):
        prepared = prepare_template(tpl, target, 2.0)
    # used as it is: the prepared spectrum is the flux-conserving resample of the template (specutils')
    direct = FluxConservingResampler()(Spectrum(spectral_axis=tpl.wavelength, flux=tpl.flux), target * u.AA)
    np.testing.assert_allclose(prepared.flux.value, direct.flux.value, rtol=1e-10)


def test_ck04_prepared_grid_and_band_fluxes(ck04_dir):
    lib = TemplateLibrary(ck04_dir)
    chosen = lib.query(teff_range=(5500, 6500), logg_range=(4.0, 4.5), feh_range=(0.0, 0.0))
    with pytest.warns(TemplateResolutionWarning, match="sampling 20.00 Å"):
        grid = PreparedGrid.build(lib, np.linspace(3700, 9500, 3000), 2.5, entries=chosen,
                                  bands=("ps1_g", "ps1_z", "2mass_j"), ebv_grid=[0.0, 0.3], cache=False)
    assert grid.n_templates == len(chosen) == 10 and grid.meta["library_kind"] == "ck04models"
    law = F99(Rv=3.1)
    tpl = lib.load_template(chosen[0])
    for b, name in enumerate(grid.band_names):
        weights = band_flux_weights(tpl.wavelength, name)
        inside = weights > 0
        red = np.ones_like(weights)
        red[inside] = 10 ** (-0.4 * 0.3 * 3.1 * law(tpl.wavelength[inside]))
        np.testing.assert_allclose(grid.band_fnu[0, b, 0], tpl.flux.value @ weights, rtol=1e-9)
        assert abs(2.5 * np.log10(grid.band_fnu[0, b, 1] / ((tpl.flux.value * red) @ weights))) < 5e-4


# ---------------------------------------------------------------------------
# resampling and the LSF


@pytest.fixture(scope="module")
def narrow_lines():
    """Unit continuum with Gaussian absorption lines of σ = 0.05 Å on an R ≈ 100 000 log grid."""
    step = 1.0 / (2.3 * 100000)
    wave = 3400.0 * np.exp(step * np.arange(int(np.log(10000 / 3400) / step)))
    flux = np.ones_like(wave)
    for center in (3700.0, 6500.0, 9500.0):
        flux -= 0.5 * np.exp(-0.5 * ((wave - center) / 0.05) ** 2)
    return wave, flux


@pytest.mark.parametrize(
    ("fwhm", "coeffs"),
    [(2.0, None), (None, (1.0, 1.5e-4))],
    ids=["constant", "polynomial"],
)
def test_lsf_gives_requested_fwhm(narrow_lines, fwhm, coeffs):
    wave, flux = narrow_lines
    target = np.linspace(3600.0, 9800.0, 12000)
    operator = lsf_operator(wave * u.AA, target * u.AA, fwhm, fwhm_poly_coeffs=coeffs)
    assert operator.shape == (target.size, wave.size)
    prepared = operator @ flux
    for center in (3700.0, 6500.0, 9500.0):
        expected = fwhm if coeffs is None else coeffs[0] + coeffs[1] * center
        measured, mu = _fit_fwhm(target, prepared, center)
        assert abs(measured / expected - 1) < 0.02, (center, measured, expected)
        assert abs(mu - center) < 0.01
    np.testing.assert_allclose(operator @ np.ones_like(wave), 1.0, rtol=1e-12)


def test_lsf_on_a_log_grid_and_native_resolution(narrow_lines):
    """A log-λ target grid (pixel width ∝ λ) and a quadrature correction for native R."""
    wave, flux = narrow_lines
    # the "native" spectrum already has R = 20 000: broaden the lines first, then ask for 2.5 Å
    native_r = 20000.0
    pre = lsf_operator(wave, wave[200:-200], None, fwhm_poly_coeffs=(0.0, 1.0 / native_r))
    native_wave, native_flux = wave[200:-200], pre @ flux
    target = np.geomspace(3600.0, 9800.0, 9000)
    operator = lsf_operator(native_wave, target, 2.5, native_resolution=native_r)
    prepared = operator @ native_flux
    for center in (3700.0, 6500.0, 9500.0):
        assert abs(_fit_fwhm(target, prepared, center)[0] / 2.5 - 1) < 0.02


def test_lsf_coarse_native_grid_is_interpolated():
    """A 20 Å native grid at FWHM 40 Å: linear interpolation onto a fine grid (M = K @ L)."""
    native = np.arange(1000.0, 20000.0, 20.0)
    flux = np.ones_like(native)
    flux[np.argmin(np.abs(native - 6500))] = 0.0
    target = np.linspace(3600.0, 9800.0, 400)
    operator = lsf_operator(native, target, 40.0)
    measured, mu = _fit_fwhm(target, operator @ flux, 6500.0, half_window=150.0)
    assert abs(measured / 40.0 - 1) < 0.02 and abs(mu - 6500) < 1.0
    np.testing.assert_allclose(operator @ np.ones_like(native), 1.0, rtol=1e-12)


def test_lsf_narrower_than_native_warns(narrow_lines):
    wave, flux = narrow_lines
    with pytest.warns(TemplateResolutionWarning, match="already as broad"):
        operator = lsf_operator(wave, np.linspace(4000, 5000, 3000), 0.2, native_resolution=5000)
    np.testing.assert_allclose(operator @ np.ones_like(wave), 1.0, rtol=1e-12)


def test_lsf_errors(narrow_lines):
    wave, _ = narrow_lines
    with pytest.raises(InputDataError, match="extends beyond"):
        lsf_operator(wave, np.linspace(3000, 5000, 100), 2.0)
    with pytest.raises(InputDataError, match="positive"):
        lsf_operator(wave, np.linspace(4000, 5000, 100), None, fwhm_poly_coeffs=(1.0, -1e-3))
    with pytest.raises(InputDataError, match="FWHM"):
        lsf_operator(wave, np.linspace(4000, 5000, 100), None)


# ---------------------------------------------------------------------------
# PreparedGrid

BANDS = ("ps1_g", "ps1_r", "gaia_bp", "2mass_ks", "gaia_g", "sdss_u")  # the last two are not covered


@pytest.fixture(scope="module")
def synthetic_grid(synthetic_dir):
    # the test session's cache folder (conftest.pytest_configure) keeps this out of the user's cache
    lib = TemplateLibrary(synthetic_dir)
    target = np.linspace(3650.0, 9750.0, 4000) * u.AA
    grid = PreparedGrid.build(lib, target, 3.0, bands=BANDS, ebv_grid=np.linspace(0, 0.5, 6))
    return lib, target, grid


def test_prepared_grid_matches_prepare_template(synthetic_grid):
    lib, target, grid = synthetic_grid
    assert grid.n_templates == len(lib) == 8
    assert grid.flux.dtype == np.float64 and grid.flux.shape == (8, 4000)
    assert grid.wavelength.unit == u.AA
    assert list(grid.params.colnames[:4]) == ["teff", "logg", "feh", "alpha_m"]
    assert grid.meta["extinction"] == "F99" and grid.meta["r_v"] == 3.1 and grid.meta["lsf"]["fwhm"] == 3.0
    for i in range(grid.n_templates):
        one = prepare_template(lib.load_template(lib.entries[i]), target, 3.0)
        np.testing.assert_allclose(grid.flux[i], one.flux.value, rtol=1e-6)
        np.testing.assert_allclose(grid.continuum[i], one.meta["continuum"].to_value(FLAM), rtol=1e-6)
        assert isinstance(one, Spectrum) and one.meta["template"].teff == grid.params["teff"][i]
    tpl = grid.template(3)
    assert isinstance(tpl, StellarTemplate) and tpl.teff == grid.params["teff"][3]
    np.testing.assert_array_equal(tpl.flux.value, grid.flux[3])


def test_prepared_grid_band_fluxes(synthetic_grid):
    lib, _, grid = synthetic_grid
    assert grid.band_names == BANDS and grid.band_fnu.shape == (8, len(BANDS), 6)
    assert grid.ebv_grid[0] == 0
    law = F99(Rv=3.1)
    for i in (0, 5):
        tpl = lib.load_template(lib.entries[i])
        wave, flam = tpl.wavelength.value, tpl.flux.value
        for b, name in enumerate(BANDS):
            weights = band_flux_weights(wave, name)
            if weights is None:
                assert np.all(np.isnan(grid.band_fnu[i, b]))
                continue
            np.testing.assert_allclose(grid.band_fnu[i, b, 0], flam @ weights, rtol=1e-9)
            inside = weights > 0
            a_per_ebv = np.zeros_like(wave)
            a_per_ebv[inside] = 3.1 * law(wave[inside] * u.AA)
            for e, ebv in enumerate(grid.ebv_grid[1:], start=1):
                direct = (flam * 10 ** (-0.4 * ebv * a_per_ebv)) @ weights
                assert abs(2.5 * np.log10(grid.band_fnu[i, b, e] / direct)) < 5e-4
    # reddening dims every band, bluer bands more
    assert np.all(np.diff(grid.band_fnu[:, 0, :], axis=1) < 0)
    drop = grid.band_fnu[:, :, -1] / grid.band_fnu[:, :, 0]
    assert np.all(drop[:, 0] < drop[:, 1]) and np.all(drop[:, 1] < drop[:, 3])


def test_prepared_grid_cache_and_subset(synthetic_grid, caplog):
    lib, target, grid = synthetic_grid
    # within a process the same set-up gives the same object (per-grid caches stay warm) ...
    assert PreparedGrid.build(lib, target, 3.0, bands=BANDS, ebv_grid=np.linspace(0, 0.5, 6)) is grid
    # ... and a new process (no memo) loads it from the disk cache
    prepared._PREPARED_MEMO.clear()
    with caplog.at_level(logging.INFO, logger="kspec_fluxcal.templates"):
        again = PreparedGrid.build(lib, target, 3.0, bands=BANDS, ebv_grid=np.linspace(0, 0.5, 6))
    assert "loaded from the cache" in caplog.text
    assert isinstance(again.flux, np.memmap) or isinstance(again.flux.base, np.memmap)
    assert again.key == grid.key
    np.testing.assert_array_equal(again.flux, grid.flux)
    np.testing.assert_array_equal(again.band_fnu, grid.band_fnu)
    assert again.band_names == grid.band_names
    sub = grid.subset([1, 4])
    assert sub.n_templates == 2 and sub.key != grid.key
    np.testing.assert_array_equal(sub.flux[1], grid.flux[4])
    np.testing.assert_array_equal(sub.params["teff"], grid.params["teff"][[1, 4]])
    # a selection of entries, a polynomial FWHM and another law give other keys
    chosen = lib.query(teff_range=(6000, 7000))
    part = PreparedGrid.build(lib, target, None, fwhm_poly_coeffs=(1.0, 2e-4), entries=chosen, bands=BANDS[:2],
                              ebv_grid=[0.0, 0.1], extinction="G23")
    assert part.n_templates == len(chosen) == 4 and part.key != grid.key
    assert np.all(part.params["teff"] == 6500)
    assert part.meta["extinction"] == "G23"


def test_prepared_grid_real_bosz_all_bands(bosz_dir):
    lib = TemplateLibrary(bosz_dir)
    with pytest.warns(TemplateResolutionWarning, match="8648–9800 Å"):  # R = 5000 is 1.96 Å at 9800 Å
        grid = PreparedGrid.build(lib, np.linspace(3600, 9800, 6000), 2.0, cache=False)
    tpl = lib.load_template(0)
    expected = [tpl.flux.value @ band_flux_weights(tpl.wavelength, b) for b in grid.band_names]
    np.testing.assert_allclose(grid.band_fnu[0, :, 0], expected, rtol=1e-9)
    assert np.all(np.isfinite(grid.band_fnu))


def test_prepared_grid_constructor_validates():
    wave = np.linspace(4000, 5000, 10)
    params = Table({"teff": [6000.0, 6500.0], "logg": [4.0, 4.5], "feh": [0.0, 0.0], "alpha_m": [0.0, 0.0]})
    grid = PreparedGrid(wave, np.ones((2, 10)), np.ones((2, 10)), params, ("ps1_g",))
    assert grid.band_fnu.shape == (2, 1, 1) and np.all(np.isnan(grid.band_fnu))
    assert grid.ebv_grid.tolist() == [0.0] and isinstance(grid.key, str)
    with pytest.raises(InputDataError, match="shape"):
        PreparedGrid(wave, np.ones((2, 9)), np.ones((2, 9)), params)
    with pytest.raises(InputDataError, match="continuum"):
        PreparedGrid(wave, np.ones((2, 10)), np.ones((1, 10)), params)
    with pytest.raises(InputDataError, match="alpha_m"):
        PreparedGrid(wave, np.ones((2, 10)), np.ones((2, 10)), {"teff": [1.0, 2], "logg": [1, 2], "feh": [0, 0]})
    with pytest.raises(InputDataError, match="rows"):
        PreparedGrid(wave, np.ones((3, 10)), np.ones((3, 10)), params)
    with pytest.raises(InputDataError, match="band_fnu"):
        PreparedGrid(wave, np.ones((2, 10)), np.ones((2, 10)), params, ("ps1_g",), np.ones((2, 2, 1)))
    with pytest.raises(InputDataError, match="ebv_grid"):
        PreparedGrid(wave, np.ones((2, 10)), np.ones((2, 10)), params, ebv_grid=[0.1, 0.2])
    with pytest.raises(InputDataError, match="wavelength"):
        PreparedGrid(wave * u.pix, np.ones((2, 10)), np.ones((2, 10)), params)
    with pytest.raises(InputDataError, match="F_λ"):
        PreparedGrid(wave, np.ones((2, 10)) * u.Jy, np.ones((2, 10)), params)
    in_flam = PreparedGrid(wave, np.ones((2, 10)) * u.W / u.m**2 / u.nm, np.ones((2, 10)) * FLAM, params)
    np.testing.assert_allclose(in_flam.flux, 100.0)


# ---------------------------------------------------------------------------
# the binary cache


def test_second_load_comes_from_the_cache(synthetic_copy, own_cache, monkeypatch, caplog):
    calls = []
    original = library.read_bosz_surface_flux
    monkeypatch.setattr(library, "read_bosz_surface_flux", lambda *a: calls.append(a) or original(*a))
    lib = TemplateLibrary(synthetic_copy)
    assert lib.kind == "bosz2024" and len(lib) == 8
    wave, flux, cont, entries = lib.load_grid()
    assert len(calls) == 8 and flux.dtype == np.float32 and flux.shape == (8, wave.size)
    first = np.array(flux)
    del wave, flux, cont, entries, lib
    gc.collect()

    calls.clear()
    with caplog.at_level(logging.INFO, logger="kspec_fluxcal.templates"):
        lib = TemplateLibrary(synthetic_copy)
        _, flux, _, _ = lib.load_grid()
    assert calls == [] and "memory-mapped from the cache" in caplog.text
    assert isinstance(flux, np.memmap)
    np.testing.assert_array_equal(flux, first)
    _, sub_flux, _, sub_entries = lib.load_grid(lib.query(teff_range=(6500, 6500)))
    assert len(sub_entries) == 4
    np.testing.assert_array_equal(sub_flux, first[np.asarray(sub_entries["index"])])


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_corrupt_cache_is_rebuilt(synthetic_copy, own_cache, monkeypatch, caplog, damage):
    lib = TemplateLibrary(synthetic_copy)
    first = np.array(lib.load_grid()[1])
    target = cache_dir("templates", lib.fingerprint, "grid") / "flux.npy"
    del lib
    gc.collect()
    size = target.stat().st_size
    with open(target, "r+b") as fh:
        if damage == "truncate":
            fh.truncate(size // 2)
        else:  # same size, other bytes, written a second later
            fh.seek(size - 4000)
            fh.write(b"\x7f" * 4000)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    calls = []
    original = library.read_bosz_surface_flux
    monkeypatch.setattr(library, "read_bosz_surface_flux", lambda *a: calls.append(a) or original(*a))
    with caplog.at_level(logging.WARNING, logger="kspec_fluxcal.templates"):
        lib = TemplateLibrary(synthetic_copy)
        flux = lib.load_grid()[1]
    assert len(calls) == 8 and "rebuilding the binary template grid" in caplog.text
    assert target.stat().st_size == size
    np.testing.assert_array_equal(flux, first)


def test_folder_change_rebuilds_the_index(synthetic_copy, own_cache, caplog):
    lib = TemplateLibrary(synthetic_copy)
    assert len(lib) == 8
    src = Path(lib.entries["path"][0])
    new = src.with_name(src.name.replace("_t5500_", "_t7000_"))
    shutil.copyfile(src, new)
    with caplog.at_level(logging.INFO, logger="kspec_fluxcal.templates"):
        changed = TemplateLibrary(synthetic_copy)
    assert "indexing" in caplog.text
    assert len(changed) == 9 and changed.fingerprint != lib.fingerprint
    assert 7000.0 in changed.entries["teff"]
    assert changed.load_template(changed.query(teff_range=(7000, 7000))[0]).teff == 7000


def test_read_only_library(synthetic_copy, own_cache):
    before = sorted(p.relative_to(synthetic_copy) for p in synthetic_copy.rglob("*"))
    paths = [synthetic_copy, *synthetic_copy.rglob("*")]
    for p in paths:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        lib = TemplateLibrary(synthetic_copy)
        assert lib.load_grid()[1].shape[0] == 8
        after = sorted(p.relative_to(synthetic_copy) for p in synthetic_copy.rglob("*"))
        assert after == before
        assert any(own_cache.rglob("flux.npy"))
    finally:
        for p in paths:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


# ---------------------------------------------------------------------------
# layouts and errors


def test_flat_layout_and_resolution_choice(tmp_path, own_cache):
    _write_fake_bosz(tmp_path / "lib", 50, resolution=5000)
    _write_fake_bosz(tmp_path / "lib" / "r10000", 60, resolution=10000, teff=6250)
    with pytest.raises(TemplateLibraryError, match="5000, 10000"):
        TemplateLibrary(tmp_path / "lib")
    lib = TemplateLibrary(tmp_path / "lib", resolution=10000)
    assert lib.resolution == 10000 and len(lib) == 1 and lib.wavelength.size == 60
    tpl = lib.load_template(0)
    np.testing.assert_allclose(tpl.flux.value, 4 * np.pi * 1e5, rtol=1e-6)
    np.testing.assert_allclose(tpl.continuum.value, 4 * np.pi * 1.1e5, rtol=1e-6)
    with pytest.raises(TemplateLibraryError, match="20000.*found 5000, 10000"):
        TemplateLibrary(tmp_path / "lib", resolution=20000)


def test_empty_folder(tmp_path):
    with pytest.raises(TemplateLibraryError, match="is empty"):
        TemplateLibrary(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(TemplateLibraryError, match="does not exist"):
        TemplateLibrary(tmp_path / "nowhere")


def test_unknown_layout(tmp_path):
    (tmp_path / "spectrum.fits").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TemplateLibraryError, match="BOSZ 2024.*ck04models"):
        TemplateLibrary(tmp_path)


def test_missing_wave_grid(tmp_path):
    _write_fake_bosz(tmp_path, 40, wave_file=False)
    with pytest.raises(TemplateLibraryError, match="bosz2024_wave_r5000.txt is missing"):
        TemplateLibrary(tmp_path)


def test_rows_mismatch_names_the_file(tmp_path, own_cache):
    path = _write_fake_bosz(tmp_path, 40, rows=35)
    lib = TemplateLibrary(tmp_path)
    with pytest.raises(TemplateLibraryError, match=re.escape(path.name) + ".*35 rows.*40 rows"):
        lib.load_grid()
    assert not any(own_cache.rglob("flux.npy"))


@pytest.mark.parametrize("content", [b"this is not gzip", gzip.compress(b"1.0 2.0\n" * 500)[:40]],
                         ids=["not-gzip", "truncated"])
def test_corrupt_gzip_names_the_file(tmp_path, own_cache, content):
    path = _write_fake_bosz(tmp_path, 40)
    path.write_bytes(content)
    lib = TemplateLibrary(tmp_path)
    with pytest.raises(TemplateLibraryError, match=re.escape(path.name)):
        lib.load_template(0)
