"""Tests of kspec_fluxcal.masks: region files, mask arrays and coverage."""

import numpy as np
import pytest
from astropy import units as u

from kspec_fluxcal import masks
from kspec_fluxcal.containers import make_spectrum
from kspec_fluxcal.exceptions import InputDataError


def test_default_telluric_regions():
    regions = masks.load_mask_regions()
    assert regions.unit == u.AA and regions.shape[1] == 2
    for band in ([6860, 6960], [7150, 7340], [7590, 7700], [8100, 8360], [8920, 9200]):
        assert any(np.all(r.value == band) for r in regions)
    assert masks.load_mask_regions("telluric_default") is not None
    assert np.all(np.diff(regions[:, 0].value) > 0)


def test_region_file_in_angstrom(tmp_path):
    path = tmp_path / "mine.dat"
    path.write_text("# start end (air, Angstrom)\n5000 5100  # first\n4000 4100\n5050 5200\n")
    regions = masks.load_mask_regions(path)
    np.testing.assert_array_equal(regions.value, [[4000, 4100], [5000, 5200]])
    with pytest.raises(InputDataError, match="no mask named"):
        masks.load_mask_regions(tmp_path / "missing.dat")
    bad = tmp_path / "bad.dat"
    bad.write_text("5000 4000\n")
    with pytest.raises(InputDataError, match="before it starts"):
        masks.combine_regions(masks.load_mask_regions(bad))


def test_combine_regions_merges_and_sorts():
    merged = masks.combine_regions([[30, 40], [10, 20]] * u.AA, [[15, 25], [40, 45], [60, 70]] * u.AA)
    np.testing.assert_array_equal(merged.to_value(u.AA), [[10, 25], [30, 45], [60, 70]])
    np.testing.assert_allclose(masks.combine_regions([[1, 2]] * u.nm).value, [[10, 20]])
    assert masks.combine_regions().shape == (0, 2)


def test_mask_array_and_coverage():
    wave = np.linspace(6000.0, 8000.0, 2001)
    regions = [[6500, 7000], [7500, 7600]] * u.AA
    mask = masks.load_mask_array(wave, regions)
    assert mask.dtype == bool
    assert mask[wave == 6500].all() and mask[wave == 7000].all() and not mask[wave == 7001].any()
    assert np.count_nonzero(mask) == 501 + 101
    assert masks.mask_coverage_fraction(wave, regions) == pytest.approx(0.3)
    assert masks.mask_coverage_fraction(wave, [[5000, 6100], [7900, 9000]] * u.AA) == pytest.approx(0.1)
    assert masks.mask_coverage_fraction(wave * u.AA, np.empty((0, 2)) * u.AA) == 0.0
    assert masks.mask_coverage_fraction(wave, "telluric_default") > 0


def test_apply_mask_leaves_original_untouched():
    wave = np.linspace(6000.0, 8000.0, 201)
    original_mask = np.zeros(wave.size, bool)
    original_mask[:3] = True
    spec = make_spectrum(
        wave,
        np.ones(wave.size),
        variance=np.full(wave.size, 0.01),
        mask=original_mask,
        flux_unit="ct",
        meta={"name": "x"},
    )
    masked = masks.apply_named_mask(spec, "telluric_default")
    assert masked is not spec
    np.testing.assert_array_equal(spec.mask, original_mask)
    assert masked.mask[:3].all()
    assert masked.mask[(wave >= 6860) & (wave <= 6960)].all()
    assert not masked.mask[(wave > 6000) & (wave < 6800) & (np.arange(wave.size) >= 3)].any()
    np.testing.assert_array_equal(masked.flux, spec.flux)
    np.testing.assert_array_equal(masked.uncertainty.array, spec.uncertainty.array)
    assert masked.meta == {"name": "x"}
    direct = masks.apply_mask_regions(spec, [[6000, 6100]] * u.AA)
    assert direct.mask[wave <= 6100].all()
