"""Atomic file output: a file appears whole under its name, or not at all.

Every writer of the package (calibrated frames, products, caches, downloads,
synthetic grids) writes to a temporary ``.<name>.*.part`` file beside the
target and renames it over the target only when the write has completed;
whatever stops the write, the temporary file is removed and an existing
target is untouched.
"""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from astropy.io import fits

from ..exceptions import OutputWriteError


@contextmanager
def atomic_output(target):
    """Context manager yielding a temporary path beside ``target``, renamed over it on success.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_output(target) as tmp:
    ...     _ = tmp.write_text("complete")
    >>> target.read_text()
    'complete'
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(target, data):
    """Write ``data`` (bytes) to ``target`` atomically."""
    with atomic_output(target) as tmp:
        tmp.write_bytes(data)


def write_fits_atomic(hdus, target):
    """Write ``hdus`` to a temporary file beside ``target``, then rename it over ``target``.

    Whatever stops the write (an OSError, an interrupt), the temporary file is
    removed and ``target`` is untouched; an OSError becomes
    `~kspec_fluxcal.OutputWriteError`.
    """
    target = Path(target)
    try:
        with atomic_output(target) as tmp:
            fits.HDUList(hdus).writeto(tmp, overwrite=True, checksum=True)
    except OSError as exc:
        raise OutputWriteError(
            f"cannot write {target}: {exc.strerror or exc}; check that its folder exists, is writable and has "
            "free space (nothing was written; the input is unchanged)."
        ) from exc
