"""`PreparedGrid.build`'s band layout is computed once per process and per set of band curves."""

import numpy as np
import pytest
from astropy import units as u

from kspec_fluxcal.photometry import register_filter, unregister_filter
from kspec_fluxcal.templates import prepared


@pytest.fixture
def fresh_memo(monkeypatch):
    monkeypatch.setattr(prepared, "_LAYOUT_MEMO", prepared.collections.OrderedDict())


def _box(lo, hi):
    wave = np.linspace(lo - 200.0, hi + 200.0, 400)
    return wave * u.AA, np.where((wave > lo) & (wave < hi), 1.0, 0.0)


def test_the_layout_is_computed_once_and_read_only(fresh_memo, monkeypatch):
    wave = np.linspace(3000.0, 11000.0, 8001)
    calls = []
    compute = prepared._compute_band_layout
    monkeypatch.setattr(prepared, "_compute_band_layout", lambda *a: calls.append(a) or compute(*a))
    first = prepared._band_layout(wave, ("ps1_g", "ps1_r"))
    again = prepared._band_layout(wave.copy(), ("ps1_g", "ps1_r"))  # equal grid, another array
    assert again is first and len(calls) == 1
    fresh = compute(wave, ("ps1_g", "ps1_r"))
    assert fresh[3] == first[3]
    np.testing.assert_array_equal(fresh[0].toarray(), first[0].toarray())
    with pytest.raises(ValueError):
        first[1][0, 0] = 1.0
    other = prepared._band_layout(wave, ("ps1_g", "ps1_i"))  # other bands, other layout
    assert len(calls) == 2 and other[3] != first[3]
    # a new process (no memo) reads the layout from the package cache instead of computing it
    monkeypatch.setattr(prepared, "_LAYOUT_MEMO", prepared.collections.OrderedDict())
    read = prepared._band_layout(wave, ("ps1_g", "ps1_r"))
    assert len(calls) == 2 and read is not first and read[3] == first[3]
    np.testing.assert_array_equal(read[0].toarray(), first[0].toarray())
    np.testing.assert_array_equal(read[1], first[1])
    np.testing.assert_array_equal(read[2], first[2])
    assert read[0].has_sorted_indices and read[0].has_canonical_format
    # without the cache it is computed
    monkeypatch.setattr(prepared, "_LAYOUT_MEMO", prepared.collections.OrderedDict())
    prepared._band_layout(wave, ("ps1_g", "ps1_r"), cache=False)
    assert len(calls) == 3


def test_a_damaged_cached_layout_is_computed_again(fresh_memo, monkeypatch, caplog):
    wave = np.linspace(3000.0, 11000.0, 8001)
    first = prepared._band_layout(wave, ("ps1_z",))
    folder = next(p for p in prepared.cache_dir("band-layouts").iterdir() if p.is_dir()
                  and (p / "lam.npy").exists() and np.load(p / "lam.npy").shape == (1, prepared._BAND_SUBBINS)
                  and np.array_equal(np.load(p / "lam.npy"), first[1]))
    (folder / "lam.npy").write_bytes(b"damaged")
    monkeypatch.setattr(prepared, "_LAYOUT_MEMO", prepared.collections.OrderedDict())
    again = prepared._band_layout(wave, ("ps1_z",))
    assert "computing the band layout again" in caplog.text
    np.testing.assert_array_equal(again[1], first[1])


def test_a_band_registered_again_with_another_curve_gets_a_new_layout(fresh_memo):
    wave = np.linspace(3000.0, 11000.0, 8001)
    register_filter("memo_box", _box(5000.0, 6000.0), wavelength_unit="Angstrom")
    try:
        before = prepared._band_layout(wave, ("memo_box",))
        register_filter("memo_box", _box(5000.0, 6500.0), wavelength_unit="Angstrom", overwrite=True)
        after = prepared._band_layout(wave, ("memo_box",))
    finally:
        unregister_filter("memo_box")
    assert after[3] != before[3]
    assert after[1][0].max() > before[1][0].max()  # the wider band's sub-bins reach further red
