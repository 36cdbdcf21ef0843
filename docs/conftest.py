"""pytest settings for ``docs/``: only the ``.rst`` pages are tested (their doctests).

The Sphinx configuration, the gallery scripts (run by the docs build, not by
pytest) and the build products are not collected.
"""

import pytest

collect_ignore = ["conf.py", "examples", "auto_examples", "_build", "sphinxext", "api"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the doctests' binary caches out of the user's cache folder."""
    monkeypatch.setenv("KSPEC_FLUXCAL_CACHE", str(tmp_path_factory.getbasetemp() / "kspec_cache"))
