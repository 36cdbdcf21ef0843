"""Standard-star catalogues: ATLAS Refcat2 CSV files, rows → AB photometry, fibre matching.

Refcat2 (Tonry et al. 2018, ApJ 867, 105) gives Gaia DR2 G/BP/RP (Vega),
Pan-STARRS1 g r i z (AB) and 2MASS J H K (Vega). `photometry_from_catalog_row`
returns every band in AB, using the m_AB − m_Vega offsets of the filter
registry (`kspec_fluxcal.photometry`).
"""

import logging
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import MaskedColumn, Table

from .containers import Photometry
from .exceptions import CatalogError
from .photometry import band_vega_to_ab
from .quantities import value_in

__all__ = ["load_standard_star_catalog", "photometry_from_catalog_row", "match_catalog_to_fibers", "query_photometry"]

log = logging.getLogger(__name__)

REFCAT2_COLUMNS = (
    "dstDegrees objid RA Dec plx dplx pmra dpmra pmdec dpmdec Gaia dGaia BP dBP RP dRP Teff AGaia "
    "dupvar Ag rp1 r1 r10 g dg gchi gcontrib r dr rchi rcontrib i di ichi icontrib z dz zchi zcontrib "
    "nstat J dJ H dH K dK"
).split()
"""Column names of the Refcat2 CSV schema, in file order."""

_UNITS = {
    "dstDegrees": u.deg,
    "RA": u.deg,
    "Dec": u.deg,
    "plx": u.mas,
    "dplx": u.mas,
    "pmra": u.mas / u.yr,
    "dpmra": u.mas / u.yr,
    "pmdec": u.mas / u.yr,
    "dpmdec": u.mas / u.yr,
    "Teff": u.K,
    "AGaia": u.mag,
    "Ag": u.mag,
    "rp1": u.arcsec,
    "r1": u.arcsec,
    "r10": u.arcsec,
}

CATALOG_BANDS = {
    "ps1_g": ("g", "dg"),
    "ps1_r": ("r", "dr"),
    "ps1_i": ("i", "di"),
    "ps1_z": ("z", "dz"),
    "gaia_g": ("Gaia", "dGaia"),
    "gaia_bp": ("BP", "dBP"),
    "gaia_rp": ("RP", "dRP"),
    "2mass_j": ("J", "dJ"),
    "2mass_h": ("H", "dH"),
    "2mass_ks": ("K", "dK"),
}
"""Registry band → (magnitude column, error column) of the Refcat2 schema."""

for _mag, _err in CATALOG_BANDS.values():
    _UNITS[_mag] = u.mag
    _UNITS[_err] = u.mag

_INTEGER_COLUMNS = ("objid", "dupvar", "nstat", "gcontrib", "rcontrib", "icontrib", "zcontrib")
_MAG_SENTINEL = 99.0
_ERR_SENTINEL = 9.9


def _to_float_column(column, name):
    """Float array of a column (masked/empty → NaN); junk raises CatalogError naming row and column."""
    mask = np.zeros(len(column), dtype=bool)
    if hasattr(column, "mask"):
        mask = np.asarray(np.ma.getmaskarray(column), dtype=bool)
    values = np.full(len(column), np.nan)
    raw = np.asarray(column.filled(0) if hasattr(column, "filled") else column)
    if raw.dtype.kind in "fiub":
        values[~mask] = raw[~mask].astype(float)
        return values
    for k, item in enumerate(raw):
        if mask[k]:
            continue
        text = item.decode() if isinstance(item, bytes) else str(item)
        text = text.strip()
        if text == "" or text.lower() in ("nan", "null", "--"):
            continue
        try:
            values[k] = float(text)
        except ValueError:
            raise CatalogError(
                f"catalogue row {k + 1} (file line {k + 2}), column {name!r}: {text!r} is not a number; "
                "fix or remove that row."
            ) from None
    return values


def load_standard_star_catalog(path):
    """Read an ATLAS Refcat2 CSV file (the schema of ``DESIGN.md``).

    Parameters
    ----------
    path : str or `~pathlib.Path`
        Comma-separated file with one header line (spaces after the commas
        are allowed).

    Returns
    -------
    `~astropy.table.Table`
        One row per star; units on the columns (deg, mas, mas/yr, mag, K,
        arcsec). Empty cells become NaN; sentinel values (≥ 99 mag,
        ≥ 9.9 mag errors) are kept as they are and interpreted by
        `photometry_from_catalog_row`.

    Raises
    ------
    CatalogError
        The file is missing, unreadable or holds no rows, ``RA``/``Dec`` or
        every photometric band is missing, a value is not a number (row and
        column named), or RA/Dec are out of range.
    """
    if not Path(path).is_file():
        raise CatalogError(f"catalogue {path} does not exist; give the field's Refcat2 CSV file.")
    try:
        table = Table.read(path, format="ascii.csv", guess=False, fast_reader=False)
    except (OSError, ValueError, IndexError) as exc:
        detail = str(exc).partition("\n")[0]
        raise CatalogError(f"cannot read catalogue {path}: {detail}. It must be a comma-separated file.") from exc
    if len(table.colnames) == 1:
        raise CatalogError(
            f"catalogue {path} has a single column ({table.colnames[0][:60]!r}); it must be comma-separated "
            "with the Refcat2 columns (RA, Dec, g, dg, …)."
        )
    if len(table) == 0:
        raise CatalogError(f"catalogue {path} holds no rows, only a header; it needs the field's standard stars.")
    for name in list(table.colnames):
        stripped = name.strip()
        if stripped != name:
            table.rename_column(name, stripped)
    for required in ("RA", "Dec"):
        if required not in table.colnames:
            raise CatalogError(
                f"catalogue {path} has no {required!r} column (columns: {', '.join(table.colnames)}); "
                "a Refcat2 CSV needs RA and Dec in degrees."
            )
    bands = [b for b, (m, e) in CATALOG_BANDS.items() if m in table.colnames and e in table.colnames]
    if not bands:
        raise CatalogError(
            f"catalogue {path} has no photometric band (a magnitude column and its error, e.g. "
            "'g'/'dg', 'Gaia'/'dGaia' or 'J'/'dJ'); nothing to calibrate against."
        )
    out = Table(meta={"source": str(path)})
    for name in table.colnames:
        column = table[name]
        if name == "objid":
            out[name] = column
        elif name in _INTEGER_COLUMNS:
            out[name] = _to_float_column(column, name)
        elif name in _UNITS or name in REFCAT2_COLUMNS:
            out[name] = _to_float_column(column, name) * _UNITS.get(name, u.one)
        else:
            out[name] = column
    _check_coordinates(out["RA"].value, out["Dec"].value, path)
    log.debug("read %d catalogue rows from %s (bands: %s)", len(out), path, ", ".join(bands))
    return out


def _check_coordinates(ra, dec, path):
    bad_ra = np.isfinite(ra) & ((ra < 0) | (ra >= 360))
    bad_dec = np.isfinite(dec) & (np.abs(dec) > 90)
    if np.any(bad_ra) or np.any(bad_dec):
        k = int(np.flatnonzero(bad_ra | bad_dec)[0])
        raise CatalogError(
            f"catalogue {path} row {k + 1}: RA={ra[k]}, Dec={dec[k]} are outside 0–360° / ±90°; "
            "RA and Dec must be in degrees (are they in radians, or RA in hours?)."
        )
    missing = ~(np.isfinite(ra) & np.isfinite(dec))
    if np.any(missing):
        raise CatalogError(
            f"catalogue {path} row {int(np.flatnonzero(missing)[0]) + 1} has no RA/Dec; every row needs both."
        )


def _cell(row, name):
    """Float value of a row cell; absent, masked, empty or junk → NaN."""
    try:
        value = row[name]
    except (KeyError, IndexError, ValueError):
        return np.nan
    if value is np.ma.masked:
        return np.nan
    if isinstance(value, u.Quantity):
        value = value.value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return np.nan
    return value


def photometry_from_catalog_row(row, bands=None):
    """AB `~kspec_fluxcal.containers.Photometry` of one catalogue row.

    Parameters
    ----------
    row : `~astropy.table.Row` or dict
        A row of `load_standard_star_catalog` (or anything indexable by the
        Refcat2 column names).
    bands : list of str, optional
        Registry names to include (default: every key of `CATALOG_BANDS`).

    Returns
    -------
    `~kspec_fluxcal.containers.Photometry`
        AB magnitudes: PS1 as given, Gaia DR2 and 2MASS converted with the
        registry's m_AB − m_Vega. Missing values (empty, NaN, magnitude ≥ 99,
        error ≥ 9.9 or ≤ 0) are NaN in both magnitude and error. ``meta``
        holds ``ra``, ``dec``, ``objid``, ``teff_catalog``, ``a_gaia`` and
        ``a_g`` (NaN when missing).

    Examples
    --------
    >>> phot = photometry_from_catalog_row({"RA": 10.0, "Dec": -5.0, "g": 12.0, "dg": 0.01,
    ...                                     "Gaia": 11.5, "dGaia": 0.002, "J": 99.0, "dJ": 9.99},
    ...                                    bands=["ps1_g", "gaia_g", "2mass_j"])
    >>> [round(float(m), 4) for m in phot.magnitudes]
    [12.0, 11.6002, nan]
    """
    bands = list(CATALOG_BANDS) if bands is None else list(bands)
    mags, errs = [], []
    for band in bands:
        if band not in CATALOG_BANDS:
            raise CatalogError(f"band {band!r} is not in a Refcat2 catalogue; choose from {', '.join(CATALOG_BANDS)}.")
        mag_col, err_col = CATALOG_BANDS[band]
        mag, err = _cell(row, mag_col), _cell(row, err_col)
        if not (np.isfinite(mag) and np.isfinite(err)) or mag >= _MAG_SENTINEL or err >= _ERR_SENTINEL or err <= 0:
            mags.append(np.nan)
            errs.append(np.nan)
            continue
        mags.append(mag + band_vega_to_ab(band))
        errs.append(err)
    objid = None
    try:
        objid = row["objid"]
        objid = objid.item() if hasattr(objid, "item") else objid
    except (KeyError, IndexError, ValueError):
        objid = None
    teff = _cell(row, "Teff")
    meta = {
        "ra": _cell(row, "RA"),
        "dec": _cell(row, "Dec"),
        "objid": objid,
        "teff_catalog": teff if teff > 0 else np.nan,
        "a_gaia": _cell(row, "AGaia"),
        "a_g": _cell(row, "Ag"),
    }
    return Photometry(bands, np.array(mags), np.array(errs), meta)


def _fiber_coordinates(fibres):
    """RA, Dec in degrees of every fibre (NaN where missing)."""
    coords = []
    for name in ("RA", "DEC"):
        if name not in fibres.colnames:
            coords.append(np.full(len(fibres), np.nan))
            continue
        column = fibres[name]
        unit = getattr(column, "unit", None)
        values = np.asarray(np.ma.filled(np.ma.asarray(column, dtype=float), np.nan), dtype=float)
        if unit is not None and u.Unit(unit) != u.one:
            values = (values * u.Unit(unit)).to_value(u.deg)
        coords.append(values)
    return coords


def separation_arcsec(ra1, dec1, ra2, dec2):
    """Angular separation (arcsec) between positions given in degrees (Vincenty's formula, as astropy's).

    Plain arrays instead of `~astropy.coordinates.SkyCoord`, whose import (with astropy.wcs) a calibrating
    process does not otherwise need.
    """
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(a, dtype=float)) for a in (ra1, dec1, ra2, dec2))
    dlon = lon2 - lon1
    num1 = np.cos(lat2) * np.sin(dlon)
    num2 = np.cos(lat1) * np.sin(lat2) - np.sin(lat1) * np.cos(lat2) * np.cos(dlon)
    denom = np.sin(lat1) * np.sin(lat2) + np.cos(lat1) * np.cos(lat2) * np.cos(dlon)
    return np.degrees(np.arctan2(np.hypot(num1, num2), denom)) * 3600.0


def nearest_on_sky(ra, dec, cat_ra, cat_dec, block=4_000_000):
    """For each position, the nearest catalogue row and its separation (arcsec); all inputs in degrees.

    The nearest in angle is the largest dot product of unit vectors, taken in blocks of at most ``block``
    (position, row) pairs. Rows with a non-finite position are never nearest; with no such row the index
    is -1 and the separation infinite.
    """
    def unit(lon, lat):
        lon, lat = np.radians(np.asarray(lon, dtype=float)), np.radians(np.asarray(lat, dtype=float))
        return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)

    here, there = unit(ra, dec), unit(cat_ra, cat_dec)
    good = np.all(np.isfinite(there), axis=1)
    there = np.where(good[:, None], there, 0.0)
    idx = np.full(len(here), -1, dtype=int)
    step = max(1, block // max(len(there), 1))
    for start in range(0, len(here) if np.any(good) else 0, step):
        dots = here[start:start + step] @ there.T
        dots[:, ~good] = -np.inf
        idx[start:start + step] = np.argmax(dots, axis=1)
    sep = np.full(len(here), np.inf)
    found = idx >= 0
    sep[found] = separation_arcsec(np.asarray(ra, float)[found], np.asarray(dec, float)[found],
                                   np.asarray(cat_ra, float)[idx[found]], np.asarray(cat_dec, float)[idx[found]])
    return idx, sep


def _check_coordinate_units(fiber_coords, catalog, limit):
    """Raise CatalogError when the catalogue matches the fibres once its RA/Dec are read as radians or RA as hours."""
    ra, dec = np.asarray(catalog["RA"], float), np.asarray(catalog["Dec"], float)
    readings = []
    if np.all(np.abs(ra) <= 2 * np.pi) and np.all(np.abs(dec) <= np.pi / 2):
        readings.append(("RA and Dec look like radians", np.degrees(ra), np.degrees(dec)))
    if np.all(ra < 24):
        readings.append(("RA looks like hours", 15 * ra, dec))
    for label, alt_ra, alt_dec in readings:
        _, sep = nearest_on_sky(*fiber_coords, alt_ra, alt_dec)
        n = int(np.count_nonzero(sep <= limit))
        if n:
            raise CatalogError(
                f"no standard fibre has a catalogue row within {limit:g} arcsec, but {n} of {len(sep)} do once "
                f"the catalogue is converted: its {label}. Give RA and Dec in degrees."
            )


def match_catalog_to_fibers(fibres, catalog, max_sep=2 * u.arcsec, method="position"):
    """Assign a catalogue row to every standard-star fibre (``TYPE == 'C'``).

    Parameters
    ----------
    fibres : `~astropy.table.Table`
        The FIBRES table: ``TYPE``, ``NAME`` and, for positional matching,
        ``RA``/``DEC`` (degrees unless the column unit says otherwise).
    catalog : `~astropy.table.Table`
        From `load_standard_star_catalog` (``RA``/``Dec`` in degrees).
    max_sep : `~astropy.units.Quantity` or float
        Largest accepted separation for positional matching (arcsec when a
        bare number).
    method : {'position', 'order'}
        Nearest catalogue row on the sky, or the i-th standard ↔ the i-th row.

    Returns
    -------
    `~astropy.table.Table`
        One row per standard fibre: ``FIBER`` (index in ``fibres``), ``NAME``,
        ``CATALOG_ROW`` (−1 when unmatched), ``SEPARATION`` (arcsec, NaN when
        unknown), ``MATCHED`` and ``REASON`` (why a fibre is unmatched; empty
        when matched). When two fibres claim one row the nearer keeps it.

    Raises
    ------
    CatalogError
        No standard matches by position, but some would if the catalogue's
        RA/Dec were read as radians or its RA as hours (the message says
        which): the catalogue is in the wrong units.
    """
    if method not in ("position", "order"):
        raise CatalogError(f"method must be 'position' or 'order'; got {method!r}.")
    if "TYPE" not in fibres.colnames:
        raise CatalogError("the fibre table has no TYPE column; standards are the rows with TYPE == 'C'.")
    types = np.array([(t.decode() if isinstance(t, bytes) else str(t)).strip().upper() for t in fibres["TYPE"]])
    fibers = np.flatnonzero(types == "C")
    names = (
        [str(n.decode() if isinstance(n, bytes) else n).strip() for n in fibres["NAME"]]
        if "NAME" in fibres.colnames
        else [""] * len(fibres)
    )
    n = fibers.size
    rows = np.full(n, -1, dtype=int)
    seps = np.full(n, np.nan)
    reasons = [""] * n
    fra, fdec = _fiber_coordinates(fibres)
    fra, fdec = fra[fibers], fdec[fibers]
    has_coords = np.isfinite(fra) & np.isfinite(fdec)
    cat_ra, cat_dec = np.asarray(catalog["RA"], float), np.asarray(catalog["Dec"], float)
    if method == "order":
        for k in range(n):
            if k >= len(catalog):
                reasons[k] = f"catalogue has only {len(catalog)} rows for {n} standards"
                continue
            rows[k] = k
            if has_coords[k]:
                seps[k] = separation_arcsec(fra[k], fdec[k], cat_ra[k], cat_dec[k])
    elif len(catalog) == 0:
        reasons = ["catalogue is empty"] * n
    else:
        limit = value_in(max_sep, u.arcsec, "max_sep")
        if np.any(has_coords):
            here = fra[has_coords], fdec[has_coords]
            idx, sep = nearest_on_sky(*here, cat_ra, cat_dec)
            for k, i, s in zip(np.flatnonzero(has_coords), idx, sep):
                seps[k] = s
                if s <= limit:
                    rows[k] = i
                else:
                    reasons[k] = f"nearest catalogue row {i} is {s:.2f} arcsec away (> {limit:g} arcsec)"
            if not np.any(rows >= 0):
                _check_coordinate_units(here, catalog, limit)
        for k in np.flatnonzero(~has_coords):
            reasons[k] = "fibre has no RA/DEC"
        for row in np.unique(rows[rows >= 0]):
            claimants = np.flatnonzero(rows == row)
            if claimants.size < 2:
                continue
            keep = claimants[np.argmin(seps[claimants])]
            for k in claimants:
                if k != keep:
                    rows[k] = -1
                    reasons[k] = (
                        f"catalogue row {row} is claimed by the nearer fibre {fibers[keep]} "
                        f"({seps[keep]:.2f} vs {seps[k]:.2f} arcsec)"
                    )
    result = Table()
    result["FIBER"] = fibers
    result["NAME"] = [names[f] for f in fibers]
    result["CATALOG_ROW"] = rows
    result["SEPARATION"] = seps * u.arcsec
    result["MATCHED"] = rows >= 0
    result["REASON"] = reasons
    for k in np.flatnonzero(rows < 0):
        log.info("standard fibre %d (%s) unmatched: %s", fibers[k], names[fibers[k]], reasons[k])
    return result


# VizieR J/ApJ/867/105/refcat2 column names → Refcat2 CSV names (first exact match wins;
# case matters: Gmag is Gaia G, gmag is PS1 g).
_VIZIER_COLUMNS = {
    "RA": ("RA_ICRS", "RAJ2000", "_RAJ2000", "RA"),
    "Dec": ("DE_ICRS", "DEJ2000", "_DEJ2000", "Dec"),
    "dstDegrees": ("_r",),
    "objid": ("objid", "ObjID"),
    "plx": ("Plx", "plx"),
    "dplx": ("e_Plx", "dplx"),
    "pmra": ("pmRA", "pmra"),
    "dpmra": ("e_pmRA", "dpmra"),
    "pmdec": ("pmDE", "pmdec"),
    "dpmdec": ("e_pmDE", "dpmdec"),
    "Gaia": ("Gmag", "Gaia"),
    "dGaia": ("e_Gmag", "dGaia"),
    "BP": ("BPmag", "BP"),
    "dBP": ("e_BPmag", "dBP"),
    "RP": ("RPmag", "RP"),
    "dRP": ("e_RPmag", "dRP"),
    "Teff": ("Teff",),
    "AGaia": ("AGaia", "AG"),
    "dupvar": ("DupVar", "dupvar"),
    "Ag": ("Ag", "Agmag"),
    "rp1": ("rp1",),
    "r1": ("r1",),
    "r10": ("r10",),
    "g": ("gmag", "g"),
    "dg": ("e_gmag", "dg"),
    "r": ("rmag", "r"),
    "dr": ("e_rmag", "dr"),
    "i": ("imag", "i"),
    "di": ("e_imag", "di"),
    "z": ("zmag", "z"),
    "dz": ("e_zmag", "dz"),
    "nstat": ("Nstat", "nstat"),
    "J": ("Jmag", "J"),
    "dJ": ("e_Jmag", "dJ"),
    "H": ("Hmag", "H"),
    "dH": ("e_Hmag", "dH"),
    "K": ("Kmag", "K"),
    "dK": ("e_Kmag", "dK"),
}

REFCAT2_VIZIER_TABLE = "J/ApJ/867/105/refcat2"
"""VizieR table of ATLAS Refcat2 (Tonry et al. 2018)."""


def _vizier_to_schema(table):
    out = Table(meta={"source": REFCAT2_VIZIER_TABLE})
    for target in REFCAT2_COLUMNS:
        for source in _VIZIER_COLUMNS.get(target, (target,)):
            if source not in table.colnames:
                continue
            column = table[source]
            if target == "objid":
                out[target] = np.asarray(column)
            else:
                values = np.asarray(np.ma.filled(np.ma.asarray(column, dtype=float), np.nan), dtype=float)
                if target == "dstDegrees" and getattr(column, "unit", None) is not None:
                    values = (values * u.Unit(column.unit)).to_value(u.deg)
                out[target] = values * _UNITS.get(target, u.one)
            break
    return out


def query_photometry(ra, dec, radius, catalog="refcat2", timeout=30, server=None, row_limit=-1):
    """Refcat2 stars around a position, from VizieR, in the `load_standard_star_catalog` schema.

    Parameters
    ----------
    ra, dec : float or `~astropy.units.Quantity`
        Field centre (degrees for plain numbers).
    radius : `~astropy.units.Quantity` or float
        Search radius (degrees for plain numbers).
    catalog : {'refcat2'}
        The catalogue (VizieR ``J/ApJ/867/105/refcat2``).
    timeout : float
        Seconds to wait for the service.
    server : str, optional
        VizieR mirror host, e.g. ``'vizier.cfa.harvard.edu'`` (default
        astroquery's ``conf.server``).
    row_limit : int
        Most rows to fetch (−1: all).

    Returns
    -------
    `~astropy.table.Table`
        Rows in the Refcat2 CSV schema (``RA``, ``Dec``, ``Gaia`` … with units);
        empty when no star is in the circle.

    Raises
    ------
    CatalogError
        Unknown catalogue, or the service is unreachable, times out or answers
        something unreadable (the message says which).
    """
    if catalog != "refcat2":
        raise CatalogError(f"catalog must be 'refcat2'; got {catalog!r}.")
    from astroquery.vizier import VizierClass, conf

    ra = ra.to_value(u.deg) if isinstance(ra, u.Quantity) else float(ra)
    dec = dec.to_value(u.deg) if isinstance(dec, u.Quantity) else float(dec)
    radius = radius.to(u.deg) if isinstance(radius, u.Quantity) else float(radius) * u.deg
    vizier = VizierClass(
        columns=["**", "+_r"],
        catalog=REFCAT2_VIZIER_TABLE,
        timeout=timeout,
        vizier_server=server or conf.server,
        row_limit=row_limit,
    )
    from astropy.coordinates import SkyCoord

    centre = SkyCoord(ra * u.deg, dec * u.deg)
    try:
        result = vizier.query_region(centre, radius=radius, catalog=REFCAT2_VIZIER_TABLE, cache=False)
    except Exception as exc:  # network stacks raise many unrelated types
        raise CatalogError(
            f"VizieR query of {REFCAT2_VIZIER_TABLE} at RA={ra:.5f}, Dec={dec:.5f} failed "
            f"({type(exc).__name__}: {exc}); check the network or give a local catalogue file."
        ) from exc
    if isinstance(result, (str, bytes)):
        raise CatalogError("VizieR answered something that is not a table; try again later or use a local file.")
    tables = [result[k] for k in result.keys()] if len(result) else []
    if not tables:
        log.info("VizieR: no %s star within %s of (%.5f, %.5f)", REFCAT2_VIZIER_TABLE, radius, ra, dec)
        empty = Table()
        for name in REFCAT2_COLUMNS:
            empty[name] = MaskedColumn([], dtype=float, unit=_UNITS.get(name))
        return empty
    out = _vizier_to_schema(tables[0])
    if "RA" not in out.colnames or "Dec" not in out.colnames:
        raise CatalogError(f"VizieR answer has no RA/Dec columns (got {', '.join(tables[0].colnames)}); cannot use it.")
    return out
