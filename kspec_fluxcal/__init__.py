"""kspec_fluxcal: flux calibration of KSPEC fiber spectra with in-field standard stars.

Importing the package registers the ``KSPEC-RED`` and ``KSPEC-FLUXCAL``
formats with specutils (`kspec_fluxcal.io.specutils_formats`), so KSPEC
frames open with ``Spectrum.read`` / ``SpectrumList.read``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kspec_fluxcal")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0.dev0"

# The curated public API (see the API page); everything else lives in its module.
from .apply import apply_flux_calibration  # noqa: E402
from .bandflux import band_flux, flux_covariance  # noqa: E402
from .containers import CalibrationVector, FluxCalibrationResult, Photometry, make_spectrum  # noqa: E402
from .engine import EngineOptions, StandardStar, derive_flux_calibration  # noqa: E402
from .exceptions import *  # noqa: F401,F403,E402
from .io import specutils_formats  # noqa: E402,F401  (registers the specutils formats)
from .io.units import parse_unit  # noqa: E402
from .night import combine_night  # noqa: E402
from .photometry import synthetic_photometry  # noqa: E402
from .pipeline import FluxcalConfig, apply_fluxcal, read_red_frame  # noqa: E402
from .products import load_calibration, save_calibration  # noqa: E402
from .templates import PreparedGrid, TemplateLibrary, prepare_template  # noqa: E402

__all__ = [
    "apply_fluxcal",
    "FluxcalConfig",
    "read_red_frame",
    "derive_flux_calibration",
    "StandardStar",
    "EngineOptions",
    "apply_flux_calibration",
    "band_flux",
    "flux_covariance",
    "TemplateLibrary",
    "PreparedGrid",
    "prepare_template",
    "CalibrationVector",
    "FluxCalibrationResult",
    "Photometry",
    "synthetic_photometry",
    "make_spectrum",
    "load_calibration",
    "save_calibration",
    "combine_night",
    "parse_unit",
]
