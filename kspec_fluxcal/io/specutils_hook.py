"""Register the KSPEC specutils formats when specutils is imported, without importing it.

Importing specutils costs about a second (it imports ndcube, which imports
matplotlib.pyplot and dask.array), so `kspec_fluxcal` does not import it;
yet ``Spectrum.read`` must know the ``KSPEC-RED`` and ``KSPEC-FLUXCAL``
formats as soon as `kspec_fluxcal` is imported, whichever of the two is
imported first. `register_specutils_formats` does it now when specutils is
already imported, and otherwise installs a one-shot finder on
`sys.meta_path` that lets specutils load normally and then registers the
formats (`kspec_fluxcal.io.specutils_formats`) right after specutils has
executed, before ``import specutils`` returns.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__all__ = ["register_specutils_formats"]

_FORMATS_MODULE = "kspec_fluxcal.io.specutils_formats"


def _register():
    importlib.import_module(_FORMATS_MODULE)


class _SpecutilsFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of ``specutils`` so that the formats follow its import."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "specutils":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one shot; the search below must not find this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module):
            try:
                exec_module(module)
            finally:
                del loader.exec_module  # the loader is this module's own: back to its class's method
            _register()

        loader.exec_module = exec_then_register
        return spec


def register_specutils_formats():
    """Make specutils know the KSPEC formats: now when it is imported, else as soon as it is."""
    if "specutils" in sys.modules:
        _register()
    elif not any(isinstance(finder, _SpecutilsFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SpecutilsFinder())
