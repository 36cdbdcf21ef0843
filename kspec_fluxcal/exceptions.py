"""Exceptions and warnings of kspec_fluxcal.

Every error raised on purpose by the package derives from
`KspecFluxcalError`, so a caller can catch the package's failures in one
place. Subclasses that describe bad input also derive from `ValueError`.
"""

from astropy.utils.exceptions import AstropyUserWarning

__all__ = [
    "KspecFluxcalError",
    "InputDataError",
    "CatalogError",
    "RedFileError",
    "UnknownBandError",
    "AlreadyCalibratedError",
    "TelluricCorrectedError",
    "TemplateLibraryError",
    "CacheError",
    "CalibrationError",
    "MissingCovarianceError",
    "DownloadError",
    "OutputWriteError",
    "BatchIncompleteError",
    "KspecFluxcalWarning",
    "PartialBandpassWarning",
    "MissingUnitWarning",
]


class KspecFluxcalError(Exception):
    """Base class of every error raised on purpose by kspec_fluxcal."""


class InputDataError(KspecFluxcalError, ValueError):
    """Input data (a spectrum, a container field, an array) is unusable."""


class CatalogError(InputDataError):
    """A standard-star catalogue is missing columns or holds unusable values."""


class RedFileError(InputDataError):
    """A RED file is missing extensions or holds inconsistent shapes."""


class UnknownBandError(InputDataError, KeyError):
    """A band name the filter registry does not know (a `KeyError` too, as a missing registry key)."""

    def __str__(self):  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


class MissingCovarianceError(InputDataError):
    """A calibrated spectrum carries no calibration covariance, so an error over many pixels cannot be given."""


class AlreadyCalibratedError(KspecFluxcalError):
    """The RED file is flux calibrated already (``FLUXCAL = T``)."""


class TelluricCorrectedError(AlreadyCalibratedError):
    """The frame is telluric-corrected already (``TELCOR = T``); a second correction is refused."""


class TemplateLibraryError(KspecFluxcalError):
    """A template library folder is empty, of unknown layout or corrupt."""


class CacheError(KspecFluxcalError):
    """A binary cache file is stale or corrupt (it is rebuilt, never trusted)."""


class CalibrationError(KspecFluxcalError):
    """The calibration cannot be derived (e.g. no usable standard star)."""


class DownloadError(KspecFluxcalError):
    """A download failed for good (after its retries)."""


class OutputWriteError(KspecFluxcalError, OSError):
    """An output file cannot be written (no permission, disk full, missing folder).

    Raised after the temporary file is removed: nothing partial is left and an
    input that was to be rewritten in place is unchanged.
    """


class BatchIncompleteError(KspecFluxcalError):
    """A batch ended before every file's result came back (e.g. the Dask scheduler was lost).

    ``records`` holds the record of every file of the batch; the unfinished
    ones have ``status = 'unfinished'``. Running the batch again finishes them.
    """

    def __init__(self, message, records=()):
        super().__init__(message)
        self.records = list(records)


class KspecFluxcalWarning(AstropyUserWarning):
    """Base class of the warnings issued by kspec_fluxcal."""


class PartialBandpassWarning(KspecFluxcalWarning):
    """A spectrum does not cover a whole bandpass; its magnitude is NaN."""


class MissingUnitWarning(KspecFluxcalWarning):
    """A header or column holds no readable unit; a default is assumed (and recorded in the output)."""
