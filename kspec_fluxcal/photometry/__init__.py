"""Photometry: AB magnitudes, the filter registry, synthetic photometry and Teff from colour.

In the order of the data flow:

* `~kspec_fluxcal.photometry.ab`: AB magnitudes ↔ f_ν and f_λ;
* `~kspec_fluxcal.photometry.filters`: the registry of synphot bandpasses (Pan-STARRS1, Gaia,
  2MASS, SDSS and your own), converted to air wavelengths, with their Vega → AB offsets;
* `~kspec_fluxcal.photometry.synthetic`: photon-counting AB magnitudes of spectra, and the same
  integrals as matrices for whole template grids;
* `~kspec_fluxcal.photometry.teff`: Teff windows from Gaia BP−RP or PS1 g−r.

Air or vacuum, family by family (the registry converts every vacuum curve):

* Gaia DR2/DR3: measured in space, tabulated in vacuum → converted.
* 2MASS (Cohen, Wheaton & Megeath 2003): infrared curves are tabulated in
  vacuum by convention → converted (shift ≈ 3–6 Å, < 0.3 mmag for stars).
* Pan-STARRS1 (Tonry et al. 2012) and SDSS (Doi et al. 2010): the papers do not
  state the medium explicitly; we follow the survey conventions (SDSS uses
  vacuum wavelengths throughout, PS1 was calibrated on vacuum CALSPEC spectra)
  and treat them as vacuum. The choice shifts the curves by 1–3 Å, which
  changes the synthetic magnitude of an F/G star by well under 1 mmag.
"""

from ..wavelength import air_to_vacuum, vacuum_to_air
from .ab import ab_mag_to_flam, ab_mag_to_fnu, fnu_to_ab_mag
from .filters import (
    REGISTERED_BANDS,
    band_support,
    band_vega_to_ab,
    load_filter_curve,
    load_filter_curves,
    register_filter,
    registered_bands,
    unregister_filter,
)
from .synthetic import band_flux_matrix, band_flux_weights, synthetic_color, synthetic_photometry
from .teff import color_teff_table, estimate_teff_from_color

__all__ = [
    "ab_mag_to_fnu",
    "fnu_to_ab_mag",
    "ab_mag_to_flam",
    "vacuum_to_air",
    "air_to_vacuum",
    "REGISTERED_BANDS",
    "registered_bands",
    "load_filter_curve",
    "load_filter_curves",
    "register_filter",
    "unregister_filter",
    "band_support",
    "band_vega_to_ab",
    "band_flux_weights",
    "band_flux_matrix",
    "synthetic_photometry",
    "synthetic_color",
    "estimate_teff_from_color",
    "color_teff_table",
]
