"""BOSZ 2024 conventions: model parameters ↔ file names, the MAST layout and the 520-model subgrid.

BOSZ 2024 (Mészáros et al. 2024, MAST HLSP "bosz") names each resampled
model after its parameters; `bosz_filename` writes such a name and
`parse_bosz_filename` reads one back. The downloader, the template library
and the synthetic grid writer all take the names from here.
"""

import re
from collections import namedtuple
from pathlib import Path
from typing import NamedTuple

from .exceptions import InputDataError

__all__ = [
    "BOSZ_RESOLUTIONS",
    "BoszParameters",
    "bosz_atmosphere",
    "bosz_vmicro",
    "bosz_filename",
    "wave_grid_filename",
    "model_relpath",
    "subgrid_parameters",
    "subgrid_models",
    "BoszModelName",
    "parse_bosz_filename",
]

#: Resolving powers of the ``resam`` products published on MAST.
BOSZ_RESOLUTIONS = (500, 1000, 2000, 5000, 10000, 20000, 50000)

SUBGRID_TEFFS = tuple(range(5000, 8001, 250))

SUBGRID_LOGGS = (3.5, 4.0, 4.5, 5.0)

SUBGRID_FEHS = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5)

#: [α/M] = +0.25 models exist in the subgrid for [M/H] at or below this value.
SUBGRID_ALPHA_FEH_MAX = -0.5

SUBGRID_ALPHA_ENHANCED = 0.25

#: Hottest Teff (K) of the subgrid taken from the MARCS plane-parallel models;
#: hotter subgrid models are ATLAS9 ones.
MARCS_TEFF_MAX = 7250


class BoszParameters(NamedTuple):
    """Parameters of one BOSZ 2024 model.

    Attributes
    ----------
    teff : int
        Effective temperature in K.
    logg : float
        Surface gravity, log10 of g in cm s⁻².
    feh : float
        Metallicity [M/H] in dex.
    alpha_m : float
        [α/M] in dex.
    carbon_m : float
        [C/M] in dex.
    vmicro : int
        Microturbulent velocity in km s⁻¹, as written in the file name.
    atmos : str
        Model-atmosphere code: ``"mp"`` (MARCS plane-parallel), ``"ms"``
        (MARCS spherical) or ``"ap"`` (ATLAS9 plane-parallel).
    """

    teff: int
    logg: float
    feh: float
    alpha_m: float
    carbon_m: float
    vmicro: int
    atmos: str


def bosz_atmosphere(teff):
    """Return the atmosphere code the subgrid uses at a given Teff.

    Parameters
    ----------
    teff : float
        Effective temperature in K.

    Returns
    -------
    str
        ``"mp"`` (MARCS plane-parallel) for Teff ≤ 7250 K, ``"ap"`` (ATLAS9)
        above. BOSZ has MARCS and ATLAS9 models side by side at 7500–8000 K;
        the subgrid takes ATLAS9 there.
    """
    return "mp" if teff <= MARCS_TEFF_MAX else "ap"


def bosz_vmicro(teff, logg, atmos):
    """Return the microturbulence (km s⁻¹) written in a subgrid file name.

    BOSZ 2024 publishes every model with v_micro = 0, 1, 2 and 4 km s⁻¹
    (tokens ``v0 v1 v2 v4``). The subgrid uses 2 km s⁻¹ for both the MARCS
    and the ATLAS9 models: archive listings show ``_v2_`` names for both
    (e.g. ``bosz2024_ap_t10000_g+4.0_..._v2_r20000_resam.txt.gz``). Change
    this one function if a different choice per (Teff, log g, atmosphere) is
    wanted.

    Parameters
    ----------
    teff : float
        Effective temperature in K.
    logg : float
        Surface gravity (log10 cm s⁻²).
    atmos : str
        Atmosphere code (``"mp"``, ``"ms"`` or ``"ap"``).

    Returns
    -------
    int
        Microturbulent velocity in km s⁻¹.
    """
    return 2


def _signed(value, decimals):
    """Format ``value`` with an explicit sign, never as ``-0.00``."""
    rounded = round(float(value), decimals) + 0.0
    return f"{rounded:+.{decimals}f}"


def check_resolution(resolution):
    """Raise `~kspec_fluxcal.InputDataError` unless ``resolution`` is a positive whole resolving power."""
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution <= 0:
        raise InputDataError(
            f"resolution must be a positive integer resolving power, got {resolution!r}; "
            f"BOSZ 2024 publishes {', '.join(map(str, BOSZ_RESOLUTIONS))}"
        )
    return int(resolution)


def bosz_filename(teff, logg, feh, alpha_m=0.0, carbon_m=0.0, vmicro=2, atmos=None, resolution=10000):
    """Return the BOSZ 2024 file name of one resampled model.

    Parameters
    ----------
    teff : int
        Effective temperature in K (a whole number).
    logg : float
        Surface gravity (log10 cm s⁻²), written with one decimal.
    feh : float
        [M/H] in dex, written with two decimals.
    alpha_m, carbon_m : float, optional
        [α/M] and [C/M] in dex, written with two decimals.
    vmicro : int, optional
        Microturbulent velocity in km s⁻¹ (a whole number: 0, 1, 2 or 4 on
        MAST).
    atmos : {None, "mp", "ms", "ap"}, optional
        Atmosphere code; `None` applies the subgrid rule of
        `bosz_atmosphere`.
    resolution : int, optional
        Resolving power of the resampled product.

    Returns
    -------
    str
        E.g. ``bosz2024_mp_t6000_g+4.0_m+0.00_a+0.00_c+0.00_v2_r10000_resam.txt.gz``.

    Raises
    ------
    InputDataError
        If Teff or vmicro is not a whole number, or the atmosphere code is
        unknown.
    """
    if float(teff) != int(teff) or teff <= 0:
        raise InputDataError(f"teff must be a positive whole number of kelvin, got {teff!r}")
    if float(vmicro) != int(vmicro) or vmicro < 0:
        raise InputDataError(
            f"vmicro must be a non-negative whole number of km/s (BOSZ uses 0, 1, 2, 4), got {vmicro!r}"
        )
    if atmos is None:
        atmos = bosz_atmosphere(teff)
    if atmos not in ("mp", "ms", "ap"):
        raise InputDataError(
            f"atmos must be 'mp', 'ms' or 'ap' (or None for the subgrid rule), got {atmos!r}"
        )
    resolution = check_resolution(resolution)
    return (
        f"bosz2024_{atmos}_t{int(teff)}_g{_signed(logg, 1)}_m{_signed(feh, 2)}"
        f"_a{_signed(alpha_m, 2)}_c{_signed(carbon_m, 2)}_v{int(vmicro)}_r{resolution}_resam.txt.gz"
    )


def wave_grid_filename(resolution=10000):
    """Return the name of the shared wavelength grid of one resolution.

    Parameters
    ----------
    resolution : int, optional
        Resolving power.

    Returns
    -------
    str
        E.g. ``bosz2024_wave_r10000.txt`` (one column, Å in air above 2000 Å).
    """
    return f"bosz2024_wave_r{check_resolution(resolution)}.txt"


def model_relpath(params, resolution=10000):
    """Return the path of a model relative to the archive root (POSIX form).

    Parameters
    ----------
    params : BoszParameters
        Model parameters.
    resolution : int, optional
        Resolving power.

    Returns
    -------
    str
        ``r<R>/m<±X.XX>/<file name>``.
    """
    name = bosz_filename(*params[:6], atmos=params.atmos, resolution=resolution)
    return f"r{check_resolution(resolution)}/m{_signed(params.feh, 2)}/{name}"


def subgrid_parameters():
    """Return the parameters of the 520 models of the subgrid.

    Returns
    -------
    list of BoszParameters
        13 Teff × 4 log g × 7 [M/H] with [α/M] = 0, plus the same Teff and
        log g for the 3 [M/H] ≤ −0.50 with [α/M] = +0.25; [C/M] = 0 for all,
        the atmosphere from `bosz_atmosphere` and vmicro from `bosz_vmicro`.
    """
    models = []
    for feh in SUBGRID_FEHS:
        alphas = (0.0, SUBGRID_ALPHA_ENHANCED) if feh <= SUBGRID_ALPHA_FEH_MAX else (0.0,)
        for alpha_m in alphas:
            for teff in SUBGRID_TEFFS:
                atmos = bosz_atmosphere(teff)
                for logg in SUBGRID_LOGGS:
                    vmicro = bosz_vmicro(teff, logg, atmos)
                    models.append(BoszParameters(teff, logg, feh, alpha_m, 0.0, vmicro, atmos))
    return models


def subgrid_models(resolution=10000):
    """Return the subgrid models with their paths relative to the archive root.

    Parameters
    ----------
    resolution : int, optional
        Resolving power of the resampled products.

    Returns
    -------
    list of (BoszParameters, str)
        One entry per model; the path is ``r<R>/m<±X.XX>/<file name>``.
    """
    return [(params, model_relpath(params, resolution)) for params in subgrid_parameters()]


BoszModelName = namedtuple(
    "BoszModelName", ["atmos", "teff", "logg", "feh", "alpha_m", "carbon_m", "vmicro", "resolution"]
)


BoszModelName.__doc__ = """Parameters encoded in a BOSZ 2024 resampled-model file name.

Attributes
----------
atmos : str
    Atmosphere code: ``mp`` (MARCS plane-parallel), ``ms`` (MARCS spherical),
    ``ap`` (ATLAS9 plane-parallel).
teff : float
    Effective temperature (K).
logg : float
    Surface gravity, log10(g / cm s⁻²).
feh, alpha_m, carbon_m : float
    [M/H], [α/M] and [C/M] (dex).
vmicro : float
    Microturbulent velocity (km s⁻¹).
resolution : int
    Resolving power R of the resampled product.
"""

_NUM = r"[+-]\d+(?:\.\d+)?"

_BOSZ_RE = re.compile(
    rf"^bosz2024_(?P<atmos>[a-z]{{2}})_t(?P<teff>\d+(?:\.\d+)?)_g(?P<logg>{_NUM})_m(?P<feh>{_NUM})"
    rf"_a(?P<alpha_m>{_NUM})_c(?P<carbon_m>{_NUM})_v(?P<vmicro>\d+(?:\.\d+)?)_r(?P<resolution>\d+)"
    r"_resam\.txt\.gz$"
)


def parse_bosz_filename(name):
    """Parameters of a BOSZ 2024 resampled model from its file name.

    Parameters
    ----------
    name : str or os.PathLike
        A file name or path, e.g.
        ``bosz2024_mp_t6000_g+4.0_m+0.00_a+0.00_c+0.00_v2_r5000_resam.txt.gz``.

    Returns
    -------
    BoszModelName or None
        None when the name is not that of a BOSZ 2024 ``_resam.txt.gz`` model
        (the wave-grid file, ``rorig_noresam`` files and foreign files).

    Examples
    --------
    >>> p = parse_bosz_filename("bosz2024_mp_t6000_g+4.0_m+0.00_a+0.00_c+0.00_v2_r5000_resam.txt.gz")
    >>> p.teff, p.logg, p.feh, p.vmicro, p.resolution
    (6000.0, 4.0, 0.0, 2.0, 5000)
    >>> parse_bosz_filename("bosz2024_wave_r5000.txt") is None
    True
    """
    match = _BOSZ_RE.match(Path(name).name)
    if match is None:
        return None
    g = match.groupdict()
    return BoszModelName(
        atmos=g["atmos"],
        teff=float(g["teff"]),
        logg=float(g["logg"]),
        feh=float(g["feh"]),
        alpha_m=float(g["alpha_m"]),
        carbon_m=float(g["carbon_m"]),
        vmicro=float(g["vmicro"]),
        resolution=int(g["resolution"]),
    )
