# Sphinx configuration of the kspec_fluxcal documentation.
#
# The build must pass offline with warnings as errors
# (``sphinx-build -W --keep-going -b html . _build/html``): intersphinx is only
# switched on when KSPEC_FLUXCAL_DOCS_INTERSPHINX=1 is set (it needs the
# network to fetch the inventories), and nitpicky mode is off.

import os
import sys
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# Document the package of this checkout even when it is not installed.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "sphinxext"))

# Keep the example runs quiet and reproducible; the caches go to the usual
# user cache folder (or $KSPEC_FLUXCAL_CACHE when set).
os.environ.setdefault("MPLBACKEND", "agg")

import kspec_fluxcal  # noqa: E402

# -- Project -----------------------------------------------------------------

project = "kspec_fluxcal"
author = "KSPEC flux-calibration developers"
copyright = f"{date.today().year}, {author}"
release = kspec_fluxcal.__version__
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "sphinx_automodapi.automodapi",
    "sphinx_automodapi.smart_resolver",
    "sphinx_gallery.gen_gallery",
    "matplotlib.sphinxext.plot_directive",
    "pytest_doctestplus.sphinx.doctestplus",
]

master_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py", "**.zip", "**.md5",
                    "**/sg_execution_times.rst", "sg_execution_times.rst"]
templates_path = []
default_role = "obj"
nitpicky = False
pygments_style = "sphinx"

rst_epilog = """
.. _Astropy: https://www.astropy.org
.. _specutils: https://specutils.readthedocs.io
.. _synphot: https://synphot.readthedocs.io
"""

# -- Intersphinx (network only on demand) -------------------------------------

if os.environ.get("KSPEC_FLUXCAL_DOCS_INTERSPHINX", "").strip().lower() in ("1", "true", "yes"):
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3/", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "scipy": ("https://docs.scipy.org/doc/scipy/", None),
        "matplotlib": ("https://matplotlib.org/stable/", None),
        "astropy": ("https://docs.astropy.org/en/stable/", None),
        "specutils": ("https://specutils.readthedocs.io/en/stable/", None),
        "synphot": ("https://synphot.readthedocs.io/en/latest/", None),
    }
else:
    intersphinx_mapping = {}

# -- API reference ------------------------------------------------------------

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks = set()
autosummary_generate = True
automodapi_toctreedirnm = "api"
automodsumm_inherited_members = False
autoclass_content = "both"
autodoc_typehints = "none"

# -- sphinx-gallery -------------------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    # run every example (not only the ones named plot_*)
    "filename_pattern": r".*\.py$",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "gallery_order.TutorialOrder",
    "download_all_examples": False,
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib",),
    "matplotlib_animations": False,
    "capture_repr": ("_repr_html_", "__repr__"),
    "show_memory": False,
    "plot_gallery": "True",
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "reset_modules": ("matplotlib",),
    "min_reported_time": 5,
    "write_computation_times": False,
}

# -- Figures drawn in the pages (the data-flow diagram of overview.rst) ---------

plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 110)]
plot_rcparams = {"savefig.bbox": "tight"}

# -- HTML ---------------------------------------------------------------------

try:
    import pydata_sphinx_theme  # noqa: F401
except ImportError:  # not in the ``docs`` extra: fall back on sphinx-astropy's own theme
    html_theme = "bootstrap-astropy"
    html_theme_options = {"logotext1": "kspec", "logotext2": "_fluxcal", "logotext3": ":docs"}
else:
    html_theme = "pydata_sphinx_theme"
    html_theme_options = {
        "collapse_navigation": True,
        "navigation_depth": 2,
        "show_nav_level": 1,
        "use_edit_page_button": False,
        "icon_links": [],
        "navbar_align": "left",
        "header_links_before_dropdown": 4,
        "secondary_sidebar_items": ["page-toc"],
    }
    html_context = {"default_mode": "light"}
    html_css_files = ["kspec_fluxcal.css"]

html_title = f"kspec_fluxcal {release}"
html_static_path = ["_static"]
html_last_updated_fmt = "%d %b %Y"
html_show_sourcelink = False
