"""Stellar template libraries and their preparation for an instrument.

In the order of the data flow:

* `~kspec_fluxcal.templates.formats`: BOSZ 2024 and Castelli–Kurucz file names and readers;
* `~kspec_fluxcal.templates.correction`: `TemplateCorrection`, the misfit the models share;
* `~kspec_fluxcal.templates.library`: `TemplateLibrary`, a folder indexed and cached as one binary grid;
* `~kspec_fluxcal.templates.lsf`: the instrument's line spread function as one sparse operator;
* `~kspec_fluxcal.templates.prepared`: `PreparedGrid`, a whole grid at the instrument's resolution
  with reddened band fluxes, cached per instrument set-up.

All wavelengths are in Å, in air.
"""

from ..bosz import BoszModelName, parse_bosz_filename
from .correction import TemplateCorrection
from .library import PARAMETER_SCALES, TemplateLibrary
from .lsf import TemplateResolutionWarning, lsf_operator, prepare_template
from .prepared import PreparedGrid

__all__ = [
    "BoszModelName",
    "parse_bosz_filename",
    "TemplateLibrary",
    "TemplateCorrection",
    "PARAMETER_SCALES",
    "TemplateResolutionWarning",
    "lsf_operator",
    "prepare_template",
    "PreparedGrid",
]
