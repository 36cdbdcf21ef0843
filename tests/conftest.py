"""Shared fixtures: the real reference data in ../shared/data and the slow-test switch."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: run with --run-slow (tox -e slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


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
