"""The package's version: the one place it is written (setup.cfg reads it with ``attr:``).

A module of its own so that ``kspec_fluxcal.__version__`` costs nothing at import: reading it from the installed
metadata (`importlib.metadata`) costs 50–130 ms per process.
"""

__version__ = "0.1.0.dev0"
