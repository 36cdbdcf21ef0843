"""The fibers of a frame as 1-D `~specutils.Spectrum` objects on one spectral axis, for little more than one.

``Spectrum(...)`` spends most of its time on what every fiber on one axis
shares: checking that the axis is monotonic, building its WCS (when none is
given), and checking the variance's unit against the flux's by unit algebra.
`fiber_spectra` makes the first fiber with the constructor and every other
one as a copy of the first one's state with its own flux, variance, mask and
meta: the attributes the constructor would give it, the shared spectral
axis and WCS, and an uncertainty whose ``parent_nddata`` is the fiber. Its
flux is a view of its row of ``flux``; its variance and mask are views of
its rows of copies of the arrays given, made at once (the constructor copies
them row by row, 300 calls for 300 fibers), or of the arrays themselves for
callers whose arrays nobody else holds (``copy=False``). Either way a frame's
fibers hold the rows of one array, which the list path of
`kspec_fluxcal.apply` reads without stacking them again.
``tests/test_fiber_spectra.py`` compares every public attribute with
constructor-built spectra. When a specutils release keeps another internal
state than the one this was written for, every fiber goes through the
constructor.
"""

import weakref

import numpy as np

SPECTRUM_STATE = frozenset({
    "_spectral_axis_index", "_spectral_axis", "_spectral_axis_direction", "_wcs", "_unit", "_psf",
    "_data", "_mask", "_meta", "_uncertainty",
})
"""The instance attributes of a 1-D `~specutils.Spectrum` made by this specutils (2.x) release's constructor."""

_OWN = ("_data", "_mask", "_meta", "_uncertainty")
"""Those of `SPECTRUM_STATE` each fiber has of its own; the others it shares with the first fiber."""


def fiber_spectra(spectral_axis, flux, variance, mask, metas, wcs=None, copy=True):
    """One `~specutils.Spectrum` per row of ``flux``, all on ``spectral_axis``.

    Parameters
    ----------
    spectral_axis : `~astropy.units.Quantity` or `~specutils.SpectralAxis`, shape (NPIX,)
        The fibers' common spectral axis (a `~specutils.SpectralAxis` is
        shared as it is, as the constructor shares it).
    flux : `~astropy.units.Quantity`, shape (NFIB, NPIX)
        Flux of each fiber; each spectrum's flux is a view of its row.
    variance : ndarray, shape (NFIB, NPIX)
        Variance values in the unit of ``flux`` squared (each spectrum's
        `~astropy.nddata.VarianceUncertainty` holds a view of its row of a
        copy, or of ``variance`` with ``copy=False``).
    mask : ndarray of bool, shape (NFIB, NPIX)
        True = bad (each spectrum holds a view of its row of a copy, or of
        ``mask`` with ``copy=False``).
    metas : sequence of dict
        Each fiber's ``meta`` (held as given).
    wcs : optional
        The WCS of ``spectral_axis`` (e.g. another spectrum's on the same
        axis); built by specutils, once, when not given.
    copy : bool, optional
        Copy ``variance`` and ``mask`` (once each) so that the spectra own
        their rows, as constructor-built ones do; False when the caller's
        arrays are its own, fresh, and held by nobody else.

    Returns
    -------
    list of `~specutils.Spectrum`
    """
    from astropy.nddata import VarianceUncertainty
    from specutils import Spectrum

    n_fibers = flux.shape[0]
    if n_fibers == 0:
        return []
    if copy:
        variance, mask = np.array(variance), np.array(mask)
    first = Spectrum(spectral_axis=spectral_axis, flux=flux[0], uncertainty=VarianceUncertainty(variance[0]),
                     mask=mask[0], meta=metas[0], **({} if wcs is None else {"wcs": wcs}))
    out = [first]
    if type(first) is not Spectrum or set(vars(first)) != SPECTRUM_STATE:
        axis = {"spectral_axis": first.spectral_axis, "wcs": first.wcs}
        out.extend(Spectrum(flux=flux[i], uncertainty=VarianceUncertainty(variance[i]), mask=mask[i],
                            meta=metas[i], **axis) for i in range(1, n_fibers))
        return out
    shared = {name: value for name, value in vars(first).items() if name not in _OWN}
    values = flux.value
    if first._data.dtype == values.dtype and first._mask.dtype == mask.dtype:  # views, as every other fiber's
        first._data, first._mask = values[0], mask[0]
        first.uncertainty.array = variance[0]
    variance_unit = first.uncertainty.unit
    for i in range(1, n_fibers):
        spectrum = Spectrum.__new__(Spectrum)
        spectrum.__dict__.update(shared)
        spectrum._data = values[i]
        spectrum._mask = mask[i]
        spectrum._meta = metas[i]
        uncertainty = VarianceUncertainty(variance[i], unit=variance_unit, copy=False)
        uncertainty._parent_nddata = weakref.ref(spectrum)
        spectrum._uncertainty = uncertainty
        out.append(spectrum)
    return out
