"""`fiber_spectra` makes spectra equal, in every public attribute and in use, to constructor-built ones."""

import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import NDUncertainty, VarianceUncertainty

from kspec_fluxcal.io import fiber_spectra as module
from kspec_fluxcal.io.fiber_spectra import fiber_spectra

specutils = pytest.importorskip("specutils")
Spectrum = specutils.Spectrum

N_FIB, N_PIX = 5, 40
LINKED = ("extra_coords", "global_coords", "plotter")
"""ndcube's per-cube helper objects."""


def _inputs(seed=3):
    rng = np.random.default_rng(seed)
    wave = np.linspace(4000.0, 4400.0, N_PIX) * u.AA
    flux = rng.uniform(1.0, 2.0, (N_FIB, N_PIX)) * u.Unit("erg / (s cm2 Angstrom)")
    variance = rng.uniform(0.01, 0.02, (N_FIB, N_PIX))
    mask = rng.uniform(size=(N_FIB, N_PIX)) < 0.2
    metas = [{"fiber": i, "fibre": {"NAME": f"f{i}"}} for i in range(N_FIB)]
    return wave, flux, variance, mask, metas


def _constructed(wave, flux, variance, mask, metas):
    return [Spectrum(spectral_axis=wave, flux=flux[i], uncertainty=VarianceUncertainty(variance[i]), mask=mask[i],
                     meta=metas[i]) for i in range(len(metas))]


def _public(spectrum):
    """Every public attribute of ``spectrum`` that is no method or I/O helper (name -> value)."""
    out = {}
    for name in dir(spectrum):
        if name.startswith("_"):
            continue
        try:
            value = getattr(spectrum, name)
        except Exception as exc:  # an attribute this spectrum cannot have (e.g. no rest value): same on both
            value = ("raises", type(exc))
        if not callable(value) or hasattr(value, "pixel_to_world"):  # methods out, callable WCS objects in
            out[name] = value
    return out


def _same(a, b, name):
    if isinstance(a, NDUncertainty):
        assert type(a) is type(b) and a.unit == b.unit, name
        np.testing.assert_array_equal(a.array, b.array, err_msg=name)
    elif isinstance(a, u.Quantity):
        assert type(a) is type(b) and a.unit == b.unit, name
        np.testing.assert_array_equal(a.value, b.value, err_msg=name)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    elif hasattr(a, "pixel_to_world"):  # wcs, combined_wcs
        pixels = np.arange(N_PIX)
        assert type(a) is type(b)
        np.testing.assert_array_equal(u.Quantity(a.pixel_to_world(pixels)), u.Quantity(b.pixel_to_world(pixels)))
    elif name in LINKED:
        assert type(a) is type(b), name
    else:
        assert a == b, name


def test_every_public_attribute_equals_the_constructors():
    inputs = _inputs()
    made, built = fiber_spectra(*inputs), _constructed(*inputs)
    assert [type(s) for s in made] == [Spectrum] * N_FIB
    names = set(_public(built[0]))
    assert {"flux", "spectral_axis", "uncertainty", "mask", "meta", "wcs", "unit", "wavelength"} <= names
    for m, b in zip(made, built):
        pm, pb = _public(m), _public(b)
        assert set(pm) == set(pb)
        for name in pb:
            _same(pm[name], pb[name], name)
        for name in LINKED:  # made on first use, each tied to its own spectrum
            assert getattr(m, name)._ndcube is m, name
        assert list(m.extra_coords.keys()) == list(m.global_coords.keys()) == []
        assert m.uncertainty.parent_nddata is m  # the fiber's own uncertainty, tied to it
        assert m.uncertainty.unit == m.flux.unit**2


def test_each_fiber_owns_its_mask_and_variance_as_the_constructor_gives():
    wave, flux, variance, mask, metas = _inputs()
    made = fiber_spectra(wave, flux, variance, mask, metas)
    made[1].mask[:] = True
    made[1].uncertainty.array[:] = -1.0
    assert not made[2].mask.all() and not mask[1].all()
    assert (made[2].uncertainty.array > 0).all() and (variance[1] > 0).all()


def test_the_fibers_work_as_spectra():
    inputs = _inputs()
    for m, b in zip(fiber_spectra(*inputs), _constructed(*inputs)):
        for op in (lambda s: s + s, lambda s: s * 2, lambda s: s[5:20]):
            rm, rb = op(m), op(b)
            _same(rm.flux, rb.flux, "flux")
            _same(rm.spectral_axis, rb.spectral_axis, "spectral_axis")
            _same(rm.uncertainty, rb.uncertainty, "uncertainty")
            _same(rm.mask, rb.mask, "mask")


def test_another_specutils_state_goes_through_the_constructor(monkeypatch):
    """Written for specutils 2.x's state; any other and every fiber is made by ``Spectrum(...)``."""
    monkeypatch.setattr(module, "SPECTRUM_STATE", module.SPECTRUM_STATE | {"_new_in_a_later_release"})
    calls = []
    original = Spectrum.__init__

    def counting(self, *args, **kwargs):
        calls.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Spectrum, "__init__", counting)
    inputs = _inputs()
    made = fiber_spectra(*inputs)
    assert len(calls) == N_FIB
    for m, b in zip(made, _constructed(*inputs)):
        _same(m.flux, b.flux, "flux")
        _same(m.uncertainty, b.uncertainty, "uncertainty")


def test_the_fibers_hold_views_of_their_rows_and_a_list_calibrates_them_without_stacking():
    """Fibers of one frame are rows of one array: the list path reads that array as it is (no copy)."""
    from kspec_fluxcal.apply import _rows

    wave, flux, variance, mask, metas = _inputs()
    made = fiber_spectra(wave, flux, variance, mask, metas, copy=False)
    for i, spectrum in enumerate(made):
        assert np.shares_memory(spectrum.data, flux.value[i])
        assert np.shares_memory(spectrum.uncertainty.array, variance[i])
        assert np.shares_memory(spectrum.mask, mask[i])
    copied = fiber_spectra(wave, flux, variance, mask, metas)
    assert np.shares_memory(_rows([s.mask for s in copied]), copied[0].mask)  # rows of one copy
    assert not np.shares_memory(_rows([s.mask for s in copied]), mask)
    rows = _rows([s.uncertainty.array for s in made])
    assert np.shares_memory(rows, variance) and not rows.flags.writeable
    np.testing.assert_array_equal(rows, variance)
    apart = _rows([s.uncertainty.array.copy() for s in made])  # separate arrays are stacked
    assert not np.shares_memory(apart, variance)
    np.testing.assert_array_equal(apart, variance)
    np.testing.assert_array_equal(_rows([variance[0], variance[2]]), variance[[0, 2]])  # not consecutive
