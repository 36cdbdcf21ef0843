"""HST CALSPEC spectra (Bohlin et al.): real, absolutely calibrated stars, read into air wavelengths.

CALSPEC FITS tables (extension 1: ``WAVELENGTH`` in Å **vacuum**, ``FLUX`` in
erg s⁻¹ cm⁻² Å⁻¹, ``FWHM`` in Å) are the truth of the package's end-to-end
tests on real stars. Their vacuum wavelengths are converted to air here,
explicitly, as everywhere in the package.
"""

import numpy as np
from astropy import units as u
from astropy.io import fits

from .exceptions import InputDataError
from .wavelength import vacuum_to_air

__all__ = ["read_calspec"]


def read_calspec(path):
    """Read a CALSPEC FITS spectrum: (air wavelength Å, flux erg s⁻¹ cm⁻² Å⁻¹, resolution R).

    CALSPEC wavelengths are in vacuum; they are converted to air here,
    explicitly. R is the median λ/FWHM over 3500–10 000 Å.

    Raises
    ------
    InputDataError
        The file is not a readable FITS table with ``WAVELENGTH`` and ``FLUX``
        columns in extension 1.
    """
    try:
        with fits.open(path) as hdul:
            data = hdul[1].data
            vac = np.asarray(data["WAVELENGTH"], dtype=float)
            flux = np.asarray(data["FLUX"], dtype=float)
            fwhm = np.asarray(data["FWHM"], dtype=float) if "FWHM" in data.columns.names else None
    except (OSError, IndexError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputDataError(
            f"{path} is not a readable CALSPEC spectrum ({' '.join(str(exc).split())}); it must be a FITS table "
            "with WAVELENGTH (Å, vacuum) and FLUX columns in extension 1."
        ) from exc
    good = np.isfinite(flux) & (flux > 0) & np.isfinite(vac)
    vac, flux = vac[good], flux[good]
    order = np.argsort(vac)
    vac, flux = vac[order], flux[order]
    keep = np.concatenate([[True], np.diff(vac) > 0])
    vac, flux = vac[keep], flux[keep]
    air = vacuum_to_air(vac * u.AA).to_value(u.AA)
    resolution = None
    if fwhm is not None:
        fwhm = fwhm[good][order][keep]
        optical = (air > 3500) & (air < 10000) & (fwhm > 0)
        if optical.any():
            resolution = float(np.median(air[optical] / fwhm[optical]))
    return air, flux, resolution
