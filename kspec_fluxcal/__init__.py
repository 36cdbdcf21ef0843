"""kspec_fluxcal: flux calibration of KSPEC fiber spectra with in-field standard stars."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kspec_fluxcal")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0.dev0"

from .exceptions import *  # noqa: F401,F403,E402
