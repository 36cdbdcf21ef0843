"""Tests of kspec_fluxcal.catalog: Refcat2 CSV reading, rows → AB photometry, matching, VizieR."""

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from astropy import units as u
from astropy.io.votable import from_table
from astropy.table import Table

from kspec_fluxcal import catalog as cat
from kspec_fluxcal.exceptions import CatalogError
from kspec_fluxcal.photometry import load_filter_curve

HEADER = ", ".join(cat.REFCAT2_COLUMNS)


def refcat_row(ra, dec, objid=1, gaia=12.0, g=12.3, j=11.0, **overrides):
    values = {name: "0" for name in cat.REFCAT2_COLUMNS}
    values.update(
        dstDegrees="0.01",
        objid=str(objid),
        RA=f"{ra:.7f}",
        Dec=f"{dec:.7f}",
        plx="2.5",
        dplx="0.05",
        Gaia=f"{gaia}",
        dGaia="0.002",
        BP=f"{gaia + 0.35}",
        dBP="0.005",
        RP=f"{gaia - 0.45}",
        dRP="0.004",
        Teff="6000",
        AGaia="0.05",
        Ag="0.07",
        g=f"{g}",
        dg="0.01",
        r=f"{g - 0.35}",
        dr="0.01",
        i=f"{g - 0.45}",
        di="0.01",
        z=f"{g - 0.5}",
        dz="0.02",
        J=f"{j}",
        dJ="0.02",
        H=f"{j - 0.3}",
        dH="0.03",
        K=f"{j - 0.35}",
        dK="0.03",
    )
    values.update({k: str(v) for k, v in overrides.items()})
    return ", ".join(values[name] for name in cat.REFCAT2_COLUMNS)


def write_catalog(path, rows, header=HEADER):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_load_catalog_units_and_values(tmp_path):
    path = write_catalog(
        tmp_path / "cat.csv", [refcat_row(150.1, 2.2, objid=123456789012345678), refcat_row(150.2, 2.3)]
    )
    table = cat.load_standard_star_catalog(path)
    assert len(table) == 2
    assert table["RA"].unit == u.deg and table["plx"].unit == u.mas
    assert table["pmra"].unit == u.mas / u.yr and table["Gaia"].unit == u.mag and table["Teff"].unit == u.K
    assert table["objid"][0] == 123456789012345678
    assert table["RA"][0] == pytest.approx(150.1)


def test_missing_columns_are_named(tmp_path):
    names = [n for n in cat.REFCAT2_COLUMNS if n != "Dec"]
    path = tmp_path / "nodec.csv"
    path.write_text(", ".join(names) + "\n" + ", ".join("1" for _ in names) + "\n")
    with pytest.raises(CatalogError, match="'Dec'"):
        cat.load_standard_star_catalog(path)
    path.write_text("RA, Dec, objid\n10.0, 20.0, 5\n")
    with pytest.raises(CatalogError, match="photometric band"):
        cat.load_standard_star_catalog(path)


def test_junk_value_names_row_and_column(tmp_path):
    rows = [refcat_row(10.0, 20.0), refcat_row(10.1, 20.1, dg="abc")]
    with pytest.raises(CatalogError, match=r"row 2.*'dg'.*'abc'"):
        cat.load_standard_star_catalog(write_catalog(tmp_path / "junk.csv", rows))


def test_out_of_range_coordinates_suggest_units(tmp_path):
    with pytest.raises(CatalogError, match="radians"):
        cat.load_standard_star_catalog(write_catalog(tmp_path / "ra.csv", [refcat_row(400.0, 20.0)]))
    with pytest.raises(CatalogError, match="degrees"):
        cat.load_standard_star_catalog(write_catalog(tmp_path / "dec.csv", [refcat_row(10.0, -95.0)]))


def test_sentinels_become_nan_and_vega_bands_convert(tmp_path):
    rows = [
        refcat_row(10.0, 20.0, J="99.999", dJ="9.999", dH="9.9", K="", dK="", BP="nan", dr="0", Teff="", Ag=""),
    ]
    table = cat.load_standard_star_catalog(write_catalog(tmp_path / "s.csv", rows))
    phot = cat.photometry_from_catalog_row(table[0])
    assert phot.filter_names == list(cat.CATALOG_BANDS)
    for band in ("2mass_j", "2mass_h", "2mass_ks", "gaia_bp", "ps1_r"):
        mag, err = phot[band]
        assert np.isnan(mag) and np.isnan(err), band
    assert phot["ps1_g"] == pytest.approx((12.3, 0.01))
    gaia_g = load_filter_curve("gaia_g").vega_to_ab
    rp = load_filter_curve("gaia_rp").vega_to_ab
    assert phot["gaia_g"][0] == pytest.approx(12.0 + gaia_g)
    assert phot["gaia_rp"][0] == pytest.approx(11.55 + rp)
    assert gaia_g == pytest.approx(25.7916 - 25.6914)
    assert np.isnan(phot.meta["teff_catalog"]) and np.isnan(phot.meta["a_g"])
    assert phot.meta["a_gaia"] == pytest.approx(0.05)
    assert phot.meta["ra"] == pytest.approx(10.0)
    ok = cat.photometry_from_catalog_row(
        cat.load_standard_star_catalog(write_catalog(tmp_path / "ok.csv", [refcat_row(1, 2)]))[0],
        bands=["2mass_j", "2mass_ks"],
    )
    np.testing.assert_allclose(ok.magnitudes, [11.0 + 0.91, 10.65 + 1.85])
    assert ok.meta["teff_catalog"] == 6000
    with pytest.raises(CatalogError, match="ps1_y"):
        cat.photometry_from_catalog_row(table[0], bands=["ps1_y"])


def make_field(rng, n_standards=6, n_field=10):
    ra0, dec0 = 150.0, 2.0
    ra = ra0 + rng.uniform(-0.5, 0.5, n_standards + n_field)
    dec = dec0 + rng.uniform(-0.5, 0.5, n_standards + n_field)
    catalog = Table({"RA": ra * u.deg, "Dec": dec * u.deg, "objid": np.arange(ra.size)})
    jitter = rng.normal(0, 0.3, (2, n_standards)) / 3600.0
    fibres = Table(
        {
            "TYPE": ["P", "C", "S"] * n_standards,
            "NAME": [f"f{k}" for k in range(3 * n_standards)],
            "RA": np.zeros(3 * n_standards),
            "DEC": np.zeros(3 * n_standards),
        }
    )
    standards = np.flatnonzero(fibres["TYPE"] == "C")
    fibres["RA"][standards] = ra[:n_standards] + jitter[0] / np.cos(np.radians(dec[:n_standards]))
    fibres["DEC"][standards] = dec[:n_standards] + jitter[1]
    return fibres, catalog, standards


def test_positional_matching_recovers_shuffled_catalog():
    rng = np.random.default_rng(3)
    fibres, catalog, standards = make_field(rng)
    order = rng.permutation(len(catalog))
    shuffled = catalog[order]
    result = cat.match_catalog_to_fibers(fibres, shuffled)
    assert list(result["FIBER"]) == list(standards)
    assert np.all(result["MATCHED"])
    np.testing.assert_array_equal(shuffled["objid"][result["CATALOG_ROW"]], np.arange(len(standards)))
    assert np.all(result["SEPARATION"].quantity.to_value(u.arcsec) < 2)


def test_radian_fibre_coordinates_are_converted():
    rng = np.random.default_rng(4)
    fibres, catalog, _ = make_field(rng)
    fibres["RA"] = np.radians(fibres["RA"])
    fibres["DEC"] = np.radians(fibres["DEC"])
    fibres["RA"].unit = u.rad
    fibres["DEC"].unit = u.rad
    assert np.all(cat.match_catalog_to_fibers(fibres, catalog)["MATCHED"])


def test_unmatched_and_conflicting_standards_are_reported():
    rng = np.random.default_rng(5)
    fibres, catalog, standards = make_field(rng, n_standards=4)
    fibres["RA"][standards[1]] += 0.1  # far from every catalogue row
    fibres["RA"][standards[2]] = catalog["RA"][3] + 1.0 / 3600  # claims the row of standard 3, 1″ away
    fibres["DEC"][standards[2]] = catalog["Dec"][3]
    fibres["RA"][standards[3]] = catalog["RA"][3]
    fibres["DEC"][standards[3]] = catalog["Dec"][3]
    result = cat.match_catalog_to_fibers(fibres, catalog)
    assert list(result["MATCHED"]) == [True, False, False, True]
    assert list(result["CATALOG_ROW"]) == [0, -1, -1, 3]
    assert "arcsec away" in result["REASON"][1]
    assert f"nearer fibre {standards[3]}" in result["REASON"][2]
    assert result["REASON"][0] == ""


def test_order_matching():
    rng = np.random.default_rng(6)
    fibres, catalog, standards = make_field(rng, n_standards=3, n_field=0)
    result = cat.match_catalog_to_fibers(fibres, catalog[:2], method="order")
    assert list(result["CATALOG_ROW"]) == [0, 1, -1]
    assert "only 2 rows" in result["REASON"][2]
    assert np.all(result["SEPARATION"].quantity[:2].to_value(u.arcsec) < 2)
    with pytest.raises(CatalogError, match="method"):
        cat.match_catalog_to_fibers(fibres, catalog, method="nearest")


class _VizierStub(BaseHTTPRequestHandler):
    body = b""
    status = 200
    requests = []

    def do_POST(self):  # noqa: N802 (http.server API)
        length = int(self.headers.get("Content-Length", 0))
        type(self).requests.append((self.path, self.rfile.read(length).decode()))
        self.send_response(self.status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def vizier_stub(monkeypatch):
    """A local VizieR stand-in; astroquery (which always speaks https to a host) is pointed at it here."""
    from astroquery.vizier import VizierClass

    handler = type("Handler", (_VizierStub,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host = f"127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(VizierClass, "_server_to_url",
                        lambda self, return_type="votable": f"http://{self.VIZIER_SERVER}/viz-bin/{return_type}")
    yield handler, host
    server.shutdown()
    server.server_close()
    thread.join()


def votable_bytes(table, name=cat.REFCAT2_VIZIER_TABLE):
    vot = from_table(table)
    vot.resources[0].tables[0].name = name
    buffer = io.BytesIO()
    vot.to_xml(buffer)
    return buffer.getvalue()


def test_query_photometry_against_local_server(vizier_stub):
    handler, url = vizier_stub
    answer = Table(
        {
            "_r": [0.001, 0.002] * u.deg,
            "RA_ICRS": [150.0, 150.01] * u.deg,
            "DE_ICRS": [2.0, 2.01] * u.deg,
            "Gmag": [12.0, 13.0] * u.mag,
            "e_Gmag": [0.002, 0.003] * u.mag,
            "gmag": [12.3, 99.0] * u.mag,
            "e_gmag": [0.01, 9.99] * u.mag,
            "Jmag": [11.0, 12.0] * u.mag,
            "e_Jmag": [0.02, 0.03] * u.mag,
        }
    )
    handler.body = votable_bytes(answer)
    result = cat.query_photometry(150.0, 2.0, 30 * u.arcsec, server=url, timeout=5)
    assert handler.requests and handler.requests[0][0] == "/viz-bin/votable"
    assert "refcat2" in handler.requests[0][1]
    assert list(result["RA"]) == [150.0, 150.01]
    assert result["Gaia"].unit == u.mag
    phot = cat.photometry_from_catalog_row(result[1], bands=["gaia_g", "ps1_g"])
    assert np.isnan(phot["ps1_g"][0])
    assert phot["gaia_g"][0] == pytest.approx(13.0 + load_filter_curve("gaia_g").vega_to_ab)


def test_query_photometry_errors(vizier_stub):
    handler, url = vizier_stub
    handler.status = 500
    handler.body = b"server error"
    with pytest.raises(CatalogError, match="failed"):
        cat.query_photometry(150.0, 2.0, 30 * u.arcsec, server=url, timeout=5)
    with pytest.raises(CatalogError, match="refcat2"):
        cat.query_photometry(150.0, 2.0, 30 * u.arcsec, catalog="apass")


@pytest.mark.remote_data
def test_query_photometry_real_vizier():
    result = cat.query_photometry(150.1, 2.2, 1 * u.arcmin)
    assert len(result) > 0 and "Gaia" in result.colnames
