"""Quantities at the public boundary: Quantities converted, bare numbers in the documented unit."""

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table

from kspec_fluxcal.calibration import fit_smooth_vectors
from kspec_fluxcal.catalog import match_catalog_to_fibers
from kspec_fluxcal.engine import EngineOptions
from kspec_fluxcal.exceptions import InputDataError
from kspec_fluxcal.pipeline import FluxcalConfig
from kspec_fluxcal.quantities import value_in


def test_value_in_converts_quantities_and_keeps_bare_numbers():
    assert value_in(0.3 * u.nm, u.AA, "fwhm") == pytest.approx(3.0)
    assert value_in(2.0, u.arcsec, "max_sep") == 2.0
    np.testing.assert_allclose(value_in([1.0, 2.0] * u.arcmin, u.arcsec, "sep"), [60.0, 120.0])
    with pytest.raises(InputDataError, match="max_sep is given in 'km'.*arcsec"):
        value_in(3 * u.km, u.arcsec, "max_sep")


def test_config_and_options_take_quantities():
    config = FluxcalConfig(fwhm=0.25 * u.nm, max_sep=0.05 * u.arcmin)
    assert config.fwhm == pytest.approx(2.5) and config.max_sep == pytest.approx(3.0)
    assert FluxcalConfig(fwhm=2.5, max_sep=3.0).max_sep == 3.0
    assert EngineOptions(knot_spacing=30 * u.nm).knot_spacing == pytest.approx(300.0)
    with pytest.raises(InputDataError, match="fwhm"):
        FluxcalConfig(fwhm=2.5 * u.s)


@pytest.mark.parametrize("bad", ["often", 0.0, 1.5, None])
def test_line_depth_is_auto_or_a_fraction(bad):
    assert EngineOptions().line_depth == "auto" and EngineOptions(line_depth=0.08).line_depth == 0.08
    with pytest.raises(InputDataError, match="line_depth must be 'auto' or a fraction"):
        EngineOptions(line_depth=bad)


def test_knot_spacing_as_quantity_gives_the_same_spline():
    wave = np.linspace(4000.0, 8000.0, 2000)
    rng = np.random.default_rng(1)
    values = (1 + 0.2 * np.sin(wave / 700.0) + rng.normal(0, 0.01, wave.size))[None, :]
    variance = np.full_like(values, 1e-4)
    exclude = np.zeros_like(values, dtype=bool)
    bare = fit_smooth_vectors(wave, values, variance, exclude, knot_spacing=250.0)
    quantity = fit_smooth_vectors(wave, values, variance, exclude, knot_spacing=25 * u.nm)
    coarse = fit_smooth_vectors(wave, values, variance, exclude, knot_spacing=0.1 * u.um)
    np.testing.assert_array_equal(bare[0], quantity[0])
    assert not np.array_equal(bare[0], coarse[0])


def test_match_max_sep_bare_number_is_arcsec():
    fibres = Table({"TYPE": ["C"], "NAME": ["s"], "RA": [150.0], "DEC": [2.0]})
    catalog = Table({"RA": [150.0 + 1.5 / 3600 / np.cos(np.radians(2.0))], "Dec": [2.0]})
    assert match_catalog_to_fibers(fibres, catalog, max_sep=2.0)["MATCHED"][0]
    assert not match_catalog_to_fibers(fibres, catalog, max_sep=1.0)["MATCHED"][0]
    assert match_catalog_to_fibers(fibres, catalog, max_sep=0.03 * u.arcmin)["MATCHED"][0]
