"""What an import pulls in: each check runs in a fresh interpreter and reads its sys.modules."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

HEAVY = ("specutils", "ndcube", "matplotlib", "dask", "distributed", "astroquery")


def run_fresh(code):
    """Run ``code`` in a fresh interpreter on this checkout; return its stdout (fails the test on an error)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "MPLBACKEND": "agg"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def loaded_after(statement, packages=HEAVY):
    """Which of ``packages`` are in sys.modules after ``statement`` in a fresh interpreter."""
    out = run_fresh(f"import sys, json\n{statement}\nprint(json.dumps([p for p in {list(packages)!r} "
                    "if p in sys.modules]))")
    return json.loads(out.strip().splitlines()[-1])


def test_the_command_starts_without_the_heavy_packages():
    statement = ("from kspec_fluxcal.cli import main\n"
                 "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code")
    assert loaded_after(statement) == []


def test_the_package_imports_without_the_heavy_packages():
    assert loaded_after("import kspec_fluxcal") == []


def test_the_check_sees_a_heavy_import():
    assert loaded_after("import kspec_fluxcal.qc") != []


@pytest.mark.parametrize("module, heavy", [
    ("kspec_fluxcal.batch", ["dask", "distributed"]),
    ("kspec_fluxcal.catalog", ["astroquery"]),
    ("kspec_fluxcal.templates", ["matplotlib", "dask", "astroquery"]),
])
def test_modules_defer_what_only_some_calls_need(module, heavy):
    assert loaded_after(f"import {module}", heavy) == []


@pytest.mark.parametrize("first, second", [("kspec_fluxcal", "specutils"), ("specutils", "kspec_fluxcal")])
def test_the_formats_are_registered_in_either_import_order(first, second):
    out = run_fresh(f"import {first}\nimport {second}\n"
                    "from astropy.io import registry\nfrom specutils import Spectrum, SpectrumList\n"
                    "print(sorted({str(f) for cls in (Spectrum, SpectrumList) "
                    "for f in registry.get_formats(cls)['Format'] if str(f).startswith('KSPEC')}))")
    assert out.strip().splitlines()[-1] == "['KSPEC-FLUXCAL', 'KSPEC-RED']"


def test_a_frame_reads_when_specutils_comes_after_the_package(tmp_path):
    out = run_fresh(
        "import numpy as np\nimport kspec_fluxcal\nfrom kspec_fluxcal.io.specutils_formats import red_hdulist\n"
        "from astropy import units as u\n"
        f"path = {str(tmp_path / 'f_red.fits')!r}\n"
        "red_hdulist(np.ones((2, 5)) * u.ct, np.ones((2, 5)) * u.ct**2, np.linspace(4000, 5000, 5) * u.AA,"
        " None).writeto(path)\n"
        "from specutils import SpectrumList\nprint(len(SpectrumList.read(path)))")
    assert out.strip().splitlines()[-1] == "2"


def test_every_public_name_resolves_to_its_module():
    out = run_fresh("import kspec_fluxcal as k\nimport json\n"
                    "print(json.dumps({n: getattr(k, n).__module__ for n in k.__all__}))")
    modules = json.loads(out.strip().splitlines()[-1])
    import kspec_fluxcal

    assert set(modules) == set(kspec_fluxcal.__all__)
    assert all(m.startswith("kspec_fluxcal.") for m in modules.values())
    assert set(kspec_fluxcal.__all__) <= set(dir(kspec_fluxcal))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        kspec_fluxcal.nonexistent  # noqa: B018


def test_the_refraction_index_is_specutils_morton2000():
    """The formula written out (so that converting wavelengths does not import specutils) is specutils' own."""
    import numpy as np
    from astropy import units as u
    from specutils.utils.wcs_utils import refraction_index as specutils_index

    from kspec_fluxcal.wavelength import refraction_index

    wave = np.geomspace(2000.0, 3.0e5, 500)
    np.testing.assert_allclose(refraction_index(wave), specutils_index(wave * u.AA, method="Morton2000"),
                               rtol=1e-15, atol=0)


def test_a_frame_calibrates_without_specutils(tmp_path, synthetic_grid_dir, write_small_frames):
    """The RED-file stage makes no Spectrum, so a calibrating process never pays for importing specutils."""
    write_small_frames(tmp_path, ["f"], seed=11)
    code = (f"from kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal\n"
            f"run = apply_fluxcal({str(tmp_path / 'f_red.fits')!r}, FluxcalConfig(catalog="
            f"{str(tmp_path / 'f_refcat.csv')!r}, templates={str(synthetic_grid_dir)!r}, "
            f"output={str(tmp_path / 'out.fits')!r}))\n"
            "assert run.result.summary['n_stars_used'] >= 2, run.result.summary['n_stars_used']")
    assert loaded_after(code) == []
    assert (tmp_path / "out.fits").is_file()


CALIBRATE_SKIPS = HEAVY + ("synphot", "gwcs", "astropy.nddata", "astropy.coordinates", "astropy.wcs",
                           "astropy.modeling")
"""What a process calibrating a RED file (the grid prepared by an earlier process) does not import."""


def test_the_calibrate_path_imports_none_of_what_it_does_not_use():
    statement = "import kspec_fluxcal.cli\nfrom kspec_fluxcal.pipeline import FluxcalConfig, apply_fluxcal"
    assert loaded_after(statement, CALIBRATE_SKIPS) == []


def test_a_later_calibrating_process_imports_none_of_what_it_does_not_use(tmp_path, synthetic_grid_dir,
                                                                           write_small_frames):
    """``kspec-fluxcal calibrate`` in a second process reads the prepared grid and the band layout from the cache
    (no synphot), matches the catalogue without SkyCoord and makes no Spectrum or NDData uncertainty."""
    write_small_frames(tmp_path, ["f"], seed=12)
    args = ["calibrate", "--templates", str(synthetic_grid_dir), "--catalog", str(tmp_path / "f_refcat.csv"),
            "--output", str(tmp_path / "out.fits"), "--force", "-q", str(tmp_path / "f_red.fits")]
    code = f"from kspec_fluxcal.cli import main\nrc = main({args!r})\nassert rc == 0, rc"
    run_fresh(code)  # prepares what the next process reads
    assert loaded_after(code, CALIBRATE_SKIPS) == []
    assert "astropy.wcs" in loaded_after(code + "\nimport astropy.wcs", CALIBRATE_SKIPS)  # the check sees one


def test_the_version_is_the_installed_distributions():
    """``__version__`` is read from ``kspec_fluxcal/_version.py`` (no metadata look-up), which setup.cfg reads."""
    from importlib.metadata import version

    import kspec_fluxcal

    assert kspec_fluxcal.__version__ == version("kspec_fluxcal")
    assert "attr: kspec_fluxcal._version.__version__" in (ROOT / "setup.cfg").read_text()


def test_a_later_process_reads_the_filter_curves_and_the_reddening_law_from_the_cache():
    """The first process reads speclite and dust_extinction; a later one reads the same numbers from the cache."""
    import numpy as np

    from kspec_fluxcal.photometry.filters import REGISTERED_BANDS, _element_arrays, load_filter_curve

    code = ("import json\nfrom kspec_fluxcal.photometry.filters import REGISTERED_BANDS, band_arrays\n"
            "from kspec_fluxcal.extinction import extinction_per_ebv\n"
            "print(json.dumps([[a.tolist() for a in band_arrays(n)[:2]] for n in REGISTERED_BANDS]"
            " + [extinction_per_ebv([4000.0, 6000.0, 9000.0]).tolist()]))")
    first = run_fresh(code)
    later_packages = loaded_after(code, ["synphot", "speclite", "dust_extinction", "astropy.modeling"])
    assert later_packages == []
    assert loaded_after("from kspec_fluxcal.photometry import load_filter_curve\nload_filter_curve('ps1_g')",
                        ["synphot"]) == ["synphot"]  # the check sees the import where a curve is made
    values = json.loads(first.strip().splitlines()[-1])
    for name, (wave, trans) in zip(REGISTERED_BANDS, values):
        curve_wave, curve_trans, _ = _element_arrays(load_filter_curve(name).bandpass)
        np.testing.assert_array_equal(wave, curve_wave)
        np.testing.assert_array_equal(trans, curve_trans)
    from astropy import units as u
    from dust_extinction.parameter_averages import F99

    direct = F99(Rv=3.1)(1.0 / (np.array([4000.0, 6000.0, 9000.0]) * u.AA)) * 3.1  # the law itself
    np.testing.assert_allclose(values[-1], direct, rtol=1e-5)


def test_installed_versions_are_read_without_the_metadata_scan():
    from importlib.metadata import version

    from kspec_fluxcal.cache import installed_version

    for name in ("dust_extinction", "speclite", "numpy", "astropy"):
        assert installed_version(name) == version(name)
    assert installed_version("no_such_package_here") == "unknown"
