"""Tests of the SYNTHETIC BOSZ-format template grids of kspec_fluxcal.simulate."""

import gzip
import re

import numpy as np
import pytest
from astropy import constants as const

from kspec_fluxcal.exceptions import InputDataError
from kspec_fluxcal.simulate import (
    _format_table,
    bosz_wave_grid,
    make_compact_grid,
    synthetic_stellar_spectrum,
    write_bosz_grid,
)

SIGMA_SB = const.sigma_sb.cgs.value
NAME_RE = re.compile(
    r"^bosz2024_(?P<atmos>mp|ap)_t(?P<teff>\d+)_g(?P<logg>[+-]\d\.\d)_m(?P<feh>[+-]\d\.\d\d)"
    r"_a(?P<alpha>[+-]\d\.\d\d)_c(?P<carbon>[+-]\d\.\d\d)_v(?P<vmicro>\d+)_r(?P<res>\d+)_resam\.txt\.gz$"
)
ROW_RE = re.compile(rb"^\d\.\d{4}e[+-]\d\d \d\.\d{4}e[+-]\d\d$")


@pytest.fixture(scope="module")
def compact(tmp_path_factory):
    return make_compact_grid(tmp_path_factory.mktemp("compact"))


@pytest.fixture(scope="module")
def wave5000():
    return bosz_wave_grid(5000, (3000.0, 11000.0))


def _read_model(path):
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    return raw, np.loadtxt(raw.decode().splitlines())


def _ew(wave, flux, continuum, lo, hi):
    """Equivalent width (Å) of the absorption between lo and hi."""
    m = (wave > lo) & (wave < hi)
    return np.trapezoid(1.0 - flux[m] / continuum[m], wave[m])


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def test_compact_grid_files_are_in_bosz_format(compact):
    assert compact.n_models == 56
    assert compact.resolution == 5000
    wave = np.loadtxt(compact.wave_file)
    assert compact.wave_file == compact.dest / "r5000" / "bosz2024_wave_r5000.txt"
    assert wave[0] == pytest.approx(3000.0) and wave[-1] < 26000.0 < wave[-1] * 1.0001
    dlnl = np.diff(np.log(wave))  # uniform in ln λ up to the 8-digit print rounding
    assert np.allclose(dlnl, np.log(640.0) / 75000.0, rtol=2e-3)
    assert np.log(wave[-1] / wave[0]) / (wave.size - 1) == pytest.approx(np.log(640.0) / 75000.0, rel=1e-6)

    seen = set()
    for params, path in zip(compact.parameters, compact.paths):
        match = NAME_RE.match(path.name)
        assert match, path.name
        assert path.parent.name == f"m{match['feh']}" and path.parent.parent.name == "r5000"
        teff, logg, feh = int(match["teff"]), float(match["logg"]), float(match["feh"])
        assert (teff, logg, feh) == (params.teff, params.logg, params.feh)
        assert match["atmos"] == ("mp" if teff <= 7250 else "ap")
        assert match["alpha"] == "+0.00" and match["carbon"] == "+0.00" and match["res"] == "5000"
        seen.add((teff, logg, feh))
    assert seen == {
        (t, g, m) for t in range(5000, 8001, 500) for g in (4.0, 4.5) for m in (-1.0, -0.5, 0.0, 0.5)
    }
    assert not list(compact.dest.rglob("*.part"))
    assert "SYNTHETIC" in (compact.dest / "README.txt").read_text()

    raw, table = _read_model(compact.paths[0])
    assert table.shape == (wave.size, 2)
    lines = raw.splitlines()
    assert len(lines) == wave.size
    assert all(ROW_RE.match(line) for line in lines[:: max(1, len(lines) // 500)])
    assert np.all(table[:, 0] <= table[:, 1] * (1 + 1e-4))
    assert np.all(table[:, 1] > 0)


def test_file_content_is_the_model_divided_by_4pi(compact):
    params, path = compact.parameters[17], compact.paths[17]
    wave = bosz_wave_grid(5000, (3000.0, 26000.0))
    np.testing.assert_allclose(np.loadtxt(compact.wave_file), wave, rtol=1e-7)
    flux, continuum = synthetic_stellar_spectrum(wave, params.teff, params.logg, params.feh, resolution=5000)
    _, table = _read_model(path)
    np.testing.assert_allclose(4 * np.pi * table[:, 0], flux, rtol=6e-5)
    np.testing.assert_allclose(4 * np.pi * table[:, 1], continuum, rtol=6e-5)


def test_flat_layout_full_range_integrates_to_sigma_teff4(tmp_path):
    grid = write_bosz_grid(
        tmp_path, teffs=[5250, 7750], loggs=[4.0], fehs=[-0.5], alpha_ms=(0.0, 0.25),
        resolution=2000, layout="flat",
    )
    assert grid.n_models == 4
    assert grid.wave_file == tmp_path / "bosz2024_wave_r2000.txt"
    assert all(path.parent == tmp_path for path in grid.paths)
    names = sorted(path.name for path in grid.paths)
    assert names[0] == "bosz2024_ap_t7750_g+4.0_m-0.50_a+0.00_c+0.00_v2_r2000_resam.txt.gz"
    assert sum("_a+0.25_" in name for name in names) == 2
    wave = np.loadtxt(grid.wave_file)
    assert wave.size == 15 * 2000  # the BOSZ grid: 15 R points over 500–320 000 Å
    for params, path in zip(grid.parameters, grid.paths):
        _, table = _read_model(path)
        total = np.trapezoid(4 * np.pi * table[:, 0], wave)
        assert total == pytest.approx(SIGMA_SB * params.teff**4, rel=0.03)


def test_wave_grid_reproduces_the_published_bosz_grid(bosz_dir):
    published = np.loadtxt(bosz_dir / "bosz2024_wave_r5000.txt")
    ours = bosz_wave_grid(5000)
    assert ours.size == published.size
    np.testing.assert_allclose(ours, published, rtol=2e-7)


def test_writing_is_deterministic(tmp_path):
    kwargs = dict(teffs=[6000], loggs=[4.5], fehs=[0.0], resolution=1000, wave_range=(3000.0, 10000.0))
    a = write_bosz_grid(tmp_path / "a", **kwargs)
    b = write_bosz_grid(tmp_path / "b", workers=1, **kwargs)
    assert a.paths[0].read_bytes() == b.paths[0].read_bytes()


def test_written_numbers_round_like_printf():
    values = np.array([0.0, 1.0, 9.99995, 9.99994, 1.23456e-30, 4.5e17, 1e-99, 6.02e23])
    text = _format_table([values, values[::-1]], 4).decode().splitlines()
    assert text == [f"{a:.4e} {b:.4e}" for a, b in zip(values, values[::-1])]
    rng = np.random.default_rng(3)
    random = 10 ** rng.uniform(-98, 98, 5000) * rng.uniform(1, 10, 5000)
    assert _format_table([random], 7).decode().splitlines() == [f"{v:.7e}" for v in random]


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(InputDataError, match="layout"):
        write_bosz_grid(tmp_path, [6000], [4.5], [0.0], layout="nested")
    with pytest.raises(InputDataError, match="teffs"):
        write_bosz_grid(tmp_path)
    with pytest.raises(InputDataError, match="wavelengths"):
        synthetic_stellar_spectrum([5000.0, -1.0], 6000, 4.5, 0.0)
    with pytest.raises(InputDataError, match="teff"):
        synthetic_stellar_spectrum([5000.0], 500, 4.5, 0.0)


# --------------------------------------------------------------------------
# Physics of the analytic model
# --------------------------------------------------------------------------


@pytest.mark.parametrize("teff,logg,feh", [(5000, 4.5, 0.5), (6250, 4.0, -1.0), (8000, 3.5, 0.0)])
def test_flux_integrates_to_sigma_teff4(teff, logg, feh):
    wave = bosz_wave_grid(10000)
    flux, continuum = synthetic_stellar_spectrum(wave, teff, logg, feh, resolution=10000)
    assert np.trapezoid(flux, wave) == pytest.approx(SIGMA_SB * teff**4, rel=0.03)
    assert np.all(flux <= continuum) and np.all(flux > 0)
    # lines are where they are defined only: pure continuum in the near-IR
    ir = wave > 11000
    np.testing.assert_array_equal(flux[ir], continuum[ir])


def test_continuum_is_close_to_a_blackbody():
    wave = np.geomspace(3000, 26000, 400)
    teff = 6000
    _, continuum = synthetic_stellar_spectrum(wave, teff, 4.5, 0.0)
    x = const.h.cgs.value * const.c.cgs.value / (wave * 1e-8 * const.k_B.cgs.value * teff)
    blackbody = np.pi * 2 * const.h.cgs.value * const.c.cgs.value**2 / (wave * 1e-8) ** 5 / np.expm1(x) * 1e-8
    ratio = continuum / blackbody
    red = wave > 4000
    assert np.all((ratio[red] > 0.9) & (ratio[red] < 1.35))
    # a Balmer jump: the flux drops across 3646 Å
    below, above = np.interp([3600, 3700], wave, ratio)
    assert below < 0.9 * above


def test_halpha_grows_with_teff(wave5000):
    ews = []
    for teff in range(5000, 8001, 250):
        flux, continuum = synthetic_stellar_spectrum(wave5000, teff, 4.5, 0.0, resolution=5000)
        ews.append(_ew(wave5000, flux, continuum, 6562.8 - 30, 6562.8 + 30))
    assert np.all(np.diff(ews) > 0)
    assert ews[-1] > 2.5 * ews[0]


def test_metal_lines_grow_with_metallicity(wave5000):
    forest, mgb = [], []
    for feh in (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5):
        flux, continuum = synthetic_stellar_spectrum(wave5000, 6000, 4.5, feh, resolution=5000)
        forest.append(_ew(wave5000, flux, continuum, 4400, 4800))
        mgb.append(_ew(wave5000, flux, continuum, 5160, 5190))
    assert np.all(np.diff(forest) > 0) and np.all(np.diff(mgb) > 0)
    assert forest[-1] > 4 * forest[0]


def test_parameters_leave_distinct_fingerprints(wave5000):
    def ratio(teff, logg, feh, alpha_m=0.0):
        flux, continuum = synthetic_stellar_spectrum(wave5000, teff, logg, feh, alpha_m, resolution=5000)
        metals = _ew(wave5000, flux, continuum, 4400, 4800)
        balmer = _ew(wave5000, flux, continuum, 4861.3 - 25, 4861.3 + 25)
        return metals / balmer, _ew(wave5000, flux, continuum, 5160, 5190)

    cool, hot = ratio(5500, 4.5, 0.0), ratio(7500, 4.5, 0.0)
    assert cool[0] > 2 * hot[0]  # metal/Balmer ratio tells Teff
    dwarf, subgiant = ratio(6000, 5.0, 0.0), ratio(6000, 3.5, 0.0)
    assert dwarf[1] > 1.1 * subgiant[1]  # Mg b wings tell log g
    alpha_rich = ratio(6000, 4.5, -0.5, 0.25)
    alpha_poor = ratio(6000, 4.5, -0.5, 0.0)
    assert alpha_rich[1] > alpha_poor[1]


@pytest.mark.parametrize(
    "low,high",
    [
        ((5000, 4.5, 0.0), (5250, 4.5, 0.0)),
        ((7250, 4.0, -0.5), (7500, 4.0, -0.5)),
        ((6000, 4.0, -0.25), (6000, 4.0, 0.0)),
        ((6000, 4.0, 0.25), (6000, 4.0, 0.5)),
        ((5500, 3.5, 0.0), (5500, 4.0, 0.0)),
    ],
)
def test_midpoint_is_close_to_the_interpolation_of_neighbours(wave5000, low, high):
    def normalised(params):
        flux, continuum = synthetic_stellar_spectrum(wave5000, *params, resolution=5000)
        return flux / continuum

    mid = tuple((a + b) / 2 for a, b in zip(low, high))
    a, b, m = normalised(low), normalised(high), normalised(mid)
    band = (wave5000 > 3600) & (wave5000 < 9800)
    rms = np.sqrt(np.mean(((a + b) / 2 - m)[band] ** 2))
    assert rms < 0.01
    # and the neighbours themselves do differ, so the check has teeth
    assert np.sqrt(np.mean((a - b)[band] ** 2)) > 3 * rms


def test_resolution_broadens_lines_and_keeps_their_strength():
    wave = bosz_wave_grid(50000, (6400.0, 6700.0))
    sharp, cont = synthetic_stellar_spectrum(wave, 6000, 4.5, 0.0, resolution=20000)
    broad, _ = synthetic_stellar_spectrum(wave, 6000, 4.5, 0.0, resolution=2000)
    assert (broad / cont).min() > (sharp / cont).min()
    assert _ew(wave, broad, cont, 6450, 6650) == pytest.approx(_ew(wave, sharp, cont, 6450, 6650), rel=0.01)


@pytest.mark.slow
def test_full_subgrid_is_written(tmp_path):
    grid = write_bosz_grid(tmp_path, subgrid=True, resolution=500)
    assert grid.n_models == 520
    assert len(list((tmp_path / "r500").glob("m*/bosz2024_*_resam.txt.gz"))) == 520
    assert sum(p.alpha_m == 0.25 for p in grid.parameters) == 156
