"""The first calibration of a process reads what an earlier process derived from the prepared grid."""

import numpy as np
from astropy import units as u

from kspec_fluxcal import matching
from kspec_fluxcal.continuum import smoothing_operator
from kspec_fluxcal.templates import PreparedGrid, TemplateLibrary


def test_normalised_templates_are_cached_beside_the_prepared_grid(synthetic_grid_dir):
    grid = PreparedGrid.build(TemplateLibrary(synthetic_grid_dir), np.geomspace(5000.0, 6000.0, 1500) * u.AA, 2.0)
    flux = np.asarray(grid.flux, dtype=float)
    op = smoothing_operator(grid.wavelength.to_value(u.AA), 150.0 * u.AA)
    computed = matching._normalised_templates(grid, flux, op, 150.0)
    read = matching._normalised_templates(grid, flux, op, 150.0)
    assert all(isinstance(a, np.memmap) for a in read)  # read back, not recomputed
    for a, b in zip(computed, read):
        np.testing.assert_array_equal(a, b)
    cont = op(flux)  # and what is read is the normalisation itself
    good = np.all(np.isfinite(flux) & (cont > 0), axis=0)
    np.testing.assert_array_equal(read[0], good)
    np.testing.assert_allclose(read[1][:, good], flux[:, good] / cont[:, good], rtol=1e-12)
    other = matching._normalised_templates(grid, flux, smoothing_operator(grid.wavelength.to_value(u.AA),
                                                                          300.0 * u.AA), 300.0)
    assert not isinstance(other[1], np.memmap)  # another smoothing is another entry
