"""Shared fixtures: the real reference data in ../shared/data.

Slow tests are marked ``@pytest.mark.slow`` and run with ``--run-slow``
(pytest-skip-slow, installed with pytest-astropy).
"""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _shared(subdir):
    path = SHARED_DATA / subdir
    if not path.is_dir():
        pytest.skip(f"reference data {path} is absent (it lives in ../shared/data beside the repository)")
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


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's binary caches out of the user's cache folder."""
    monkeypatch.setenv("KSPEC_FLUXCAL_CACHE", str(tmp_path_factory.getbasetemp() / "kspec_cache"))
