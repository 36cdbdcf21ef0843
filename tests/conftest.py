"""Shared fixtures: the real reference data in ../shared/data and synthetic data sets.

Slow tests are marked ``@pytest.mark.slow`` and run with ``--run-slow``
(pytest-skip-slow, installed with pytest-astropy). Tests of the real data skip
when it is absent, except where the environment variable ``CI`` is set: there
they fail, so that a CI run cannot pass without them.
"""

import importlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    """Keep every binary cache of the run out of the user's cache folder."""
    if not os.environ.get("KSPEC_FLUXCAL_CACHE"):
        os.environ["KSPEC_FLUXCAL_CACHE"] = config._kspec_run_cache = tempfile.mkdtemp(
            prefix="kspec_fluxcal_test_cache_")


def pytest_unconfigure(config):
    """Remove the run's own cache folder (prepared grids: 0.1-0.9 GB a run)."""
    folder = getattr(config, "_kspec_run_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        del os.environ["KSPEC_FLUXCAL_CACHE"]


def skip_or_fail(message):
    """Skip with ``message``; fail instead when env ``CI`` is set, so that a CI run cannot hide a missing piece."""
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run this test, so provide it there", pytrace=False)
    pytest.skip(message)


def require_module(name):
    """`pytest.importorskip` that fails when env ``CI`` is set (the import error then stops the run)."""
    if os.environ.get("CI"):
        return importlib.import_module(name)
    return pytest.importorskip(name)


def make_read_only(folder):
    """Make ``folder`` unwritable for this process; return the function that undoes it.

    A normal user gets ``chmod 555``. Root ignores permission bits, so the
    folder is bind-mounted read-only on itself (writes then fail with
    EROFS); where mounting is not allowed either, `skip_or_fail`.
    """
    folder = str(folder)
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        return lambda: os.chmod(folder, 0o755)
    done = subprocess.run(["mount", "--bind", "-o", "ro", folder, folder], capture_output=True, text=True)
    if done.returncode != 0:
        skip_or_fail(f"running as root and cannot bind-mount {folder} read-only ({done.stderr.strip()})")
    return lambda: subprocess.run(["umount", folder], check=True)


def _shared(subdir):
    """The reference-data folder ``subdir``; skips when absent, but fails when env ``CI`` is set."""
    path = SHARED_DATA / subdir
    if not path.is_dir():
        skip_or_fail(f"reference data {path} is absent (it lives in ../shared/data beside the repository)")
    return path


@pytest.fixture(scope="session")
def calspec_dir():
    """Folder of real CALSPEC spectra (skips when absent)."""
    return _shared("calspec")


@pytest.fixture(scope="session")
def bosz_dir():
    """Folder holding one real BOSZ 2024 model and its wave grid (skips when absent)."""
    return _shared("bosz2024")


@pytest.fixture(scope="session")
def ck04_dir():
    """A Castelli–Kurucz ck04models subset in the CDBS layout (skips when absent)."""
    return _shared("ck04models")


@pytest.fixture(scope="session")
def ck04_subset(ck04_dir, tmp_path_factory):
    """A function ``subset(folders)``: a ``ck04models`` folder holding only the named metallicity folders.

    The folders are symbolic links into ../shared/data/ck04models, so a test names the models it uses and more
    data there never changes its result. A named folder that is absent fails the test.
    """
    made = {}

    def subset(folders):
        key = tuple(folders)
        if key not in made:
            root = tmp_path_factory.mktemp("ck04subset") / "ck04models"
            root.mkdir()
            for name in key:
                source = ck04_dir / name
                if not source.is_dir():
                    pytest.fail(f"ck04 folder {source} named by the test is absent", pytrace=False)
                (root / name).symlink_to(source, target_is_directory=True)
            made[key] = root
        return made[key]

    return subset


@pytest.fixture(scope="session")
def synthetic_grid_dir(tmp_path_factory):
    """A SYNTHETIC BOSZ-format grid at R = 10 000: Teff 5000–8000/250, log g 4.0 4.5, [M/H] −1…+0.5/0.5."""
    from kspec_fluxcal.simulate import write_bosz_grid

    dest = tmp_path_factory.mktemp("synthetic_bosz")
    write_bosz_grid(dest, teffs=range(5000, 8001, 250), loggs=(4.0, 4.5), fehs=(-1.0, -0.5, 0.0, 0.5),
                    resolution=10000, wave_range=(3000.0, 26000.0), layout="mast")
    return dest


@pytest.fixture(scope="session")
def write_small_frames():
    """A function ``write(folder, stems, seed)``: small SYNTHETIC frames with their catalogues (<stem>_refcat.csv).

    Four standards, one science and one sky fiber, 3000 pixels, FWHM 2.5 Å;
    frame ``i`` uses ``seed + i``. Returns ``folder``.
    """
    from kspec_fluxcal.simulate import make_exposure

    def write(folder, stems, seed):
        for i, stem in enumerate(stems):
            make_exposure(n_standards=4, n_science=1, n_sky=1, n_pix=3000, fwhm=2.5, teff_range=(5300, 7700),
                          logg_range=(4.05, 4.45), feh_range=(-0.9, 0.4), seed=seed + i).write(folder, stem=stem)
        return folder

    return write


def _register_hypothesis_profiles():
    """Hypothesis profiles: 'default' (a few dozen draws per property) and 'ci' (a few hundred), no deadline.

    The 'ci' profile is loaded when the environment variable ``CI`` is set; ``HYPOTHESIS_PROFILE`` picks
    one explicitly. tests/test_fuzz.py's frame draws use these sizes.
    """
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # hypothesis is a test dependency (setup.cfg); without it the property tests skip
        return
    relaxed = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("default", max_examples=30, deadline=None, database=None,
                              suppress_health_check=relaxed)
    settings.register_profile("ci", max_examples=200, deadline=None, database=None,
                              suppress_health_check=relaxed)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))


_register_hypothesis_profiles()
