"""Worker preload of the cluster tests (``dask worker --preload tests/cluster_gate.py``): a gate in the write.

In a worker started with ``$KSPEC_TEST_GATE`` set to a folder, every write of
a calibrated RED file (the temporary ``.<name>.*.part`` beside its target)
goes on as usual, then the worker

* touches ``started-<name>-<pid>`` in the folder (the test sees which worker
  process is writing which file), and
* while ``hold-<name>`` exists in the folder (at most 120 s), waits, with the
  complete temporary file on disk and the target not yet renamed.

The test kills a worker or the scheduler at a known point, with no sleep
racing the work.
"""

import os
import time
from pathlib import Path

from astropy.io import fits

GATE = os.environ.get("KSPEC_TEST_GATE")
HOLD_LIMIT = 120.0

# distributed may import a preload file more than once: wrap the original write, never a wrapper
_writeto = getattr(fits.HDUList.writeto, "__wrapped__", fits.HDUList.writeto)


def _gated_writeto(self, name, *args, **kwargs):
    _writeto(self, name, *args, **kwargs)
    part = Path(name).name
    if GATE and part.startswith(".") and part.endswith(".part") and "_red.fits." in part:
        red = part[1:].split(".fits.")[0] + ".fits"
        gate = Path(GATE)
        (gate / f"started-{red}-{os.getpid()}").touch()
        deadline = time.monotonic() + HOLD_LIMIT
        while (gate / f"hold-{red}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


_gated_writeto.__wrapped__ = _writeto

if GATE:
    fits.HDUList.writeto = _gated_writeto
