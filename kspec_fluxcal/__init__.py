"""kspec_fluxcal: flux calibration of KSPEC fiber spectra with in-field standard stars.

Importing the package registers the ``KSPEC-RED`` and ``KSPEC-FLUXCAL``
formats with specutils (`kspec_fluxcal.io.specutils_formats`), so KSPEC
frames open with ``Spectrum.read`` / ``SpectrumList.read``; when specutils
is not imported yet, they are registered as soon as it is
(`kspec_fluxcal.io.specutils_hook`), so the package itself stays light.
"""

from ._version import __version__  # noqa: F401 (re-exported: kspec_fluxcal.__version__)

# The curated public API (see the API page); everything else lives in its module. The names are imported
# when first used, so that ``import kspec_fluxcal`` (and the command line) pays only for what it uses.
from .exceptions import *  # noqa: F401,F403
from .io.specutils_hook import register_specutils_formats

_PUBLIC = {
    "apply_fluxcal": "pipeline",
    "FluxcalConfig": "pipeline",
    "read_red_frame": "pipeline",
    "derive_flux_calibration": "engine",
    "StandardStar": "engine",
    "EngineOptions": "engine",
    "apply_flux_calibration": "apply",
    "band_flux": "bandflux",
    "flux_covariance": "bandflux",
    "TemplateLibrary": "templates",
    "PreparedGrid": "templates",
    "prepare_template": "templates",
    "CalibrationVector": "containers",
    "FluxCalibrationResult": "containers",
    "Photometry": "containers",
    "synthetic_photometry": "photometry",
    "make_spectrum": "containers",
    "load_calibration": "products",
    "save_calibration": "products",
    "combine_night": "night",
    "parse_unit": "io.units",
}
"""Public name → the module (relative to the package) that defines it."""


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'kspec_fluxcal' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


register_specutils_formats()

__all__ = list(_PUBLIC)
