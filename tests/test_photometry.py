"""Tests of kspec_fluxcal.photometry: magnitudes, the filter registry and synthetic photometry."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from scipy.integrate import simpson

from kspec_fluxcal import photometry as ph
from kspec_fluxcal import wavelength
from kspec_fluxcal.containers import FLAM, FilterCurve, Photometry, make_spectrum
from kspec_fluxcal.exceptions import InputDataError, PartialBandpassWarning
from kspec_fluxcal.photometry import ab
from kspec_fluxcal.photometry import teff as colour_teff

from .conftest import skip_or_fail

H_CGS = 6.62607015e-27
K_CGS = 1.380649e-16
C_CGS = 2.99792458e10


def flat_fnu_spectrum(fnu_jy=3631.0, start=2000.0, stop=30000.0):
    wave = np.exp(np.arange(np.log(start), np.log(stop), 1e-4))
    flam = fnu_jy * 1e-23 * ab.C_AA_PER_S / wave**2
    return make_spectrum(wave, flam, flux_unit=FLAM)


def blackbody_fnu(wave_aa, teff):
    nu = C_CGS / (wave_aa * 1e-8)
    return 2 * H_CGS * nu**3 / C_CGS**2 / np.expm1(H_CGS * nu / (K_CGS * teff)) * 1e-20


def reference_ab_mag(curve, teff):
    """Independent photon-counting AB magnitude: ∫ f_ν T dν/ν / ∫ T dν/ν on a fine grid."""
    band_wave = curve.wavelength.to_value(u.AA)
    wave = np.linspace(band_wave[0], band_wave[-1], 200001)
    trans = np.interp(wave, band_wave, curve.transmission)
    fnu = blackbody_fnu(wave, teff)
    mean = simpson(fnu * trans / wave, x=wave) / simpson(trans / wave, x=wave)
    return -2.5 * np.log10(mean) - 48.60


def test_registry_names_and_systems():
    assert ph.REGISTERED_BANDS[:5] == ("ps1_g", "ps1_r", "ps1_i", "ps1_z", "ps1_y")
    curves = ph.load_filter_curves()
    assert list(curves) == list(ph.REGISTERED_BANDS)
    for name, curve in curves.items():
        assert isinstance(curve, FilterCurve)
        assert curve.name == name
        assert curve.transmission[0] == 0 and curve.transmission[-1] == 0
        assert curve.source
    assert curves["gaia_g"].system == "Vega"
    assert curves["gaia_g"].vega_to_ab == pytest.approx(0.1002)
    assert curves["gaia3_rp"].vega_to_ab == pytest.approx(0.3561)
    assert curves["2mass_ks"].vega_to_ab == pytest.approx(1.85)
    assert curves["ps1_r"].system == "AB" and curves["ps1_r"].vega_to_ab == 0
    assert ph.load_filter_curve("ps1_g") is ph.load_filter_curve("ps1_g")


def test_filters_are_converted_to_air():
    import speclite.filters

    vac = speclite.filters.load_filter("gaiadr2-G").wavelength
    air = ph.load_filter_curve("gaia_g").wavelength.to_value(u.AA)
    np.testing.assert_allclose(air, ph.vacuum_to_air(vac * u.AA).value, rtol=1e-12)
    assert 0.8 < vac[0] - air[0] < 0.9  # 3000 Å
    assert 2.9 < vac[-1] - air[-1] < 3.1  # 10900 Å


def test_unknown_band_lists_known_names():
    with pytest.raises(KeyError, match="ps1_g"):
        ph.load_filter_curve("johnson_v")


def test_flat_fnu_is_zero_ab_in_every_band():
    spec = flat_fnu_spectrum()
    mags = ph.synthetic_photometry(spec, list(ph.REGISTERED_BANDS))
    assert mags.unit == u.ABmag and ph.synthetic_photometry(spec, "ps1_r").unit == u.ABmag
    np.testing.assert_allclose(mags.value, 0.0, atol=1e-3)
    wave = spec.spectral_axis.value
    matrix = ph.band_flux_matrix(wave, ph.REGISTERED_BANDS)
    np.testing.assert_allclose(-2.5 * np.log10(matrix @ spec.flux.value) - 48.60, 0.0, atol=1e-3)


def test_flux_density_units_are_accepted():
    spec = flat_fnu_spectrum()
    in_jy = make_spectrum(spec.spectral_axis, spec.flux.to(u.Jy, u.spectral_density(spec.spectral_axis)))
    assert ph.synthetic_photometry(in_jy, "ps1_r").value == pytest.approx(0.0, abs=1e-3)
    counts = make_spectrum(spec.spectral_axis, spec.flux.value, flux_unit="ct")
    with pytest.raises(InputDataError, match="spectral flux density"):
        ph.synthetic_photometry(counts, "ps1_r")


@pytest.mark.parametrize("teff", [4000, 5000, 6000, 7000, 8000, 9000])
def test_blackbodies_agree_with_independent_integral(teff):
    wave = np.arange(2000.0, 30000.0, 1.0)
    flam = blackbody_fnu(wave, teff) * ab.C_AA_PER_S / wave**2
    spec = make_spectrum(wave, flam, flux_unit=FLAM)
    names = list(ph.REGISTERED_BANDS)
    mags = ph.synthetic_photometry(spec, names).value
    weights = ph.band_flux_matrix(wave, names)
    from_weights = -2.5 * np.log10(weights @ flam) - 48.60
    reference = np.array([reference_ab_mag(ph.load_filter_curve(n), teff) for n in names])
    np.testing.assert_allclose(mags, reference, atol=1e-3)
    np.testing.assert_allclose(from_weights, reference, atol=1e-3)
    np.testing.assert_allclose(from_weights, mags, atol=1e-4)


def test_weights_on_coarse_grid_match_synphot():
    wave = np.arange(2000.0, 12000.0, 20.0)
    flam = blackbody_fnu(wave, 5500) * ab.C_AA_PER_S / wave**2
    spec = make_spectrum(wave, flam, flux_unit=FLAM)
    for name in ("ps1_g", "gaia_bp", "sdss_z"):
        w = ph.band_flux_weights(wave * u.AA, name)
        assert w.shape == wave.shape and w.dtype == float
        assert -2.5 * np.log10(flam @ w) - 48.60 == pytest.approx(ph.synthetic_photometry(spec, name).value, abs=1e-5)


def test_partial_coverage_gives_nan_and_warning():
    spec = flat_fnu_spectrum(start=4000.0, stop=9000.0)
    with pytest.warns(PartialBandpassWarning, match="ps1_g"):
        assert np.isnan(ph.synthetic_photometry(spec, "ps1_g").value)
    with pytest.raises(InputDataError, match="does not cover"):
        ph.synthetic_photometry(spec, "ps1_g", strict=True)
    with pytest.warns(PartialBandpassWarning):
        mags = ph.synthetic_photometry(spec, ["ps1_r", "2mass_j"])
    assert np.isfinite(mags.value[0]) and np.isnan(mags.value[1])
    wave = spec.spectral_axis.value
    assert ph.band_flux_weights(wave, "ps1_g") is None
    matrix = ph.band_flux_matrix(wave, ["ps1_g", "ps1_r"])
    assert np.all(np.isnan(matrix[0])) and np.all(np.isfinite(matrix[1]))


def test_band_argument_forms():
    spec = flat_fnu_spectrum()
    curve = ph.load_filter_curve("ps1_i")
    by_name = ph.synthetic_photometry(spec, "ps1_i").value
    assert ph.synthetic_photometry(spec, curve).value == pytest.approx(by_name)
    assert ph.synthetic_photometry(spec, curve.bandpass).value == pytest.approx(by_name)
    color = ph.synthetic_color(spec, "ps1_g", "ps1_z")
    assert color.unit == u.mag and color.value == pytest.approx(0.0, abs=1e-3)


def test_masked_pixels_are_skipped():
    spec = flat_fnu_spectrum()
    mask = np.zeros(spec.flux.shape, bool)
    mask[1000:1010] = True
    flux = spec.flux.value.copy()
    flux[1000:1010] = 1e9
    masked = make_spectrum(spec.spectral_axis, flux, flux_unit=FLAM, mask=mask)
    assert ph.synthetic_photometry(masked, "ps1_g").value == pytest.approx(0.0, abs=1e-3)


def test_magnitude_conversions_and_errors():
    fnu, err = ph.ab_mag_to_fnu(10.0 * u.ABmag, 0.1 * u.mag)
    assert fnu.unit == ab.FNU
    assert fnu.to_value(u.Jy) == pytest.approx(3631e-4, rel=1e-4)
    assert (err / fnu).value == pytest.approx(0.4 * np.log(10) * 0.1)
    mag, mag_err = ph.fnu_to_ab_mag(fnu.to(u.Jy), err.to(u.Jy))
    assert mag.value == pytest.approx(10.0)
    assert mag_err.to_value(u.mag) == pytest.approx(0.1)
    assert np.isnan(ph.fnu_to_ab_mag(-1 * u.Jy).value)
    flam, flam_err = ph.ab_mag_to_flam(np.array([0.0, 1.0]), 5000 * u.AA, np.array([0.01, 0.02]))
    assert flam.unit == FLAM
    expected = 3630.78e-23 * ab.C_AA_PER_S / 5000.0**2
    assert flam[0].value == pytest.approx(expected, rel=1e-4)
    assert flam[1].value / flam[0].value == pytest.approx(10**-0.4)
    np.testing.assert_allclose((flam_err / flam).value, 0.4 * np.log(10) * np.array([0.01, 0.02]))
    with pytest.raises(InputDataError):
        ph.fnu_to_ab_mag(1.0 * FLAM)
    with pytest.raises(InputDataError):
        ph.fnu_to_ab_mag(1.0)


def test_vacuum_air_conversion():
    vac = np.array([1500.0, 3000.0, 6564.614, 12000.0, 25000.0]) * u.AA
    air = ph.vacuum_to_air(vac)
    assert air[0] == vac[0]
    assert air[2].value == pytest.approx(6562.801, abs=0.01)  # Hα
    np.testing.assert_allclose(ph.air_to_vacuum(air).value, vac.value, rtol=1e-12)
    assert ph.vacuum_to_air(656.4614 * u.nm).unit == u.nm
    from specutils.utils.wcs_utils import vac_to_air

    np.testing.assert_allclose(air[1:].value, vac_to_air(vac[1:]).value, rtol=1e-12)


def test_register_custom_filters_from_micron_and_angstrom_files(tmp_path):
    curve = ph.load_filter_curve("ps1_r")
    wave_aa = curve.wavelength.to_value(u.AA)
    micron_file = tmp_path / "r_micron.dat"
    np.savetxt(micron_file, np.c_[wave_aa / 1e4, curve.transmission], header="lambda_um T")
    aa_file = tmp_path / "r_aa.dat"
    np.savetxt(aa_file, np.c_[wave_aa, curve.transmission], header="lambda_AA T")
    spec = flat_fnu_spectrum(1000.0)
    try:
        ph.register_filter("test_um", micron_file)
        ph.register_filter("test_aa", aa_file, wavelength_unit="Angstrom", system="Vega", vega_to_ab=0.2)
        assert "test_um" in ph.registered_bands()
        reference = ph.synthetic_photometry(spec, "ps1_r").value
        assert ph.synthetic_photometry(spec, "test_um").value == pytest.approx(reference, abs=1e-6)
        assert ph.synthetic_photometry(spec, "test_aa").value == pytest.approx(reference, abs=1e-6)
        assert ph.load_filter_curve("test_aa").vega_to_ab == 0.2
        with pytest.raises(InputDataError, match="overwrite"):
            ph.register_filter("test_um", micron_file)
        vac = ph.register_filter("test_um", micron_file, medium="vacuum", overwrite=True)
        assert vac.wavelength[1] < curve.wavelength[1]
        ph.register_filter("test_arrays", (wave_aa * u.AA, curve.transmission))
        assert ph.band_flux_weights(spec.spectral_axis, "test_arrays") is not None
    finally:
        for name in ("test_um", "test_aa", "test_arrays"):
            ph.unregister_filter(name)
    with pytest.raises(KeyError):
        ph.load_filter_curve("test_um")
    with pytest.raises(KeyError):
        ph.unregister_filter("ps1_g")


def test_register_rejects_percent_and_untapered_curves_get_zero_ends(tmp_path):
    bad = tmp_path / "percent.dat"
    np.savetxt(bad, np.c_[[0.5, 0.6, 0.7], [10.0, 80.0, 10.0]])
    with pytest.raises(InputDataError, match="fraction"):
        ph.register_filter("test_pct", bad)
    try:
        curve = ph.register_filter("test_box", ([5000.0, 5100.0, 5200.0] * u.AA, [1.0, 1.0, 1.0]))
        assert curve.transmission[0] == 0 and curve.transmission[-1] == 0
        assert curve.wavelength[0].value < 5000.0 < 5200.0 < curve.wavelength[-1].value
    finally:
        ph.unregister_filter("test_box")


def _photometry(bp_rp_vega, bands=("gaia_bp", "gaia_rp"), err=0.01):
    offsets = [ph.load_filter_curve(b).vega_to_ab for b in bands]
    mags = np.array([12.0 + bp_rp_vega, 12.0]) + offsets
    return Photometry(list(bands), mags, [err, err])


def test_teff_from_bp_rp_follows_relation():
    teff, (low, high) = ph.estimate_teff_from_color(_photometry(0.82, ("gaia3_bp", "gaia3_rp")))
    b = colour_teff._MBM21_BPRP_DWARF
    assert teff == pytest.approx(5040 / (b[0] + b[1] * 0.82 + b[2] * 0.82**2))
    assert low < teff < high
    assert high - teff > teff - low  # reddening allowance on the hot side
    dr2 = ph.estimate_teff_from_color(_photometry(0.82))
    assert dr2[1][1] - dr2[1][0] > high - low


def test_teff_missing_band_and_out_of_range():
    phot = Photometry(["gaia_bp", "ps1_g"], [12.0, 12.0], [0.01, 0.01])
    with pytest.raises(InputDataError, match="gaia_rp"):
        ph.estimate_teff_from_color(phot)
    with pytest.raises(InputDataError, match="outside"):
        ph.estimate_teff_from_color(_photometry(2.5))
    with pytest.raises(InputDataError, match="method"):
        ph.estimate_teff_from_color(_photometry(0.8), method="u_g")
    with pytest.raises(InputDataError, match="ps1_r"):
        ph.estimate_teff_from_color(Photometry(["ps1_g"], [12.0], [0.01]), method="g_r")
    with pytest.raises(InputDataError, match="outside"):
        ph.estimate_teff_from_color(Photometry(["ps1_g", "ps1_r"], [13.5, 12.0], [0.01, 0.01]), method="g_r")


def test_teff_from_g_r_inverts_the_shipped_relation():
    fehs, teffs, colors = colour_teff._g_r_relation()
    solar = int(np.flatnonzero(fehs == 0.0)[0])
    for k in (2, 6, 10):
        phot = Photometry(["ps1_g", "ps1_r"], [12.0 + colors[solar, k], 12.0], [0.005, 0.005])
        teff, (low, high) = ph.estimate_teff_from_color(phot, method="g_r", feh=0.0)
        assert teff == pytest.approx(teffs[k], abs=1.0)
        assert low < teff < high and high - teff > teff - low  # reddening allowance on the hot side


G_R_TABLE_FOLDERS = ("ckm10", "ckm05", "ckp00", "ckp02", "ckp05")
"""The ck04 metallicity folders ([M/H] −1.0 … +0.5) the shipped PS1 g−r table was made from."""


def test_shipped_g_r_table_is_reproducible(ck04_subset):
    """The package's PS1 g−r table is what color_teff_table makes from the named Castelli–Kurucz folders."""
    from astropy.table import Table

    from kspec_fluxcal.templates import TemplateLibrary

    library = TemplateLibrary(ck04_subset(G_R_TABLE_FOLDERS), correction=None)  # the table predates the correction
    made = ph.color_teff_table(library)
    shipped = Table.read(Path(ph.__file__).parents[1] / "data" / colour_teff._G_R_TABLE, format="ascii.ecsv")
    assert list(shipped.meta["folders"]) == list(G_R_TABLE_FOLDERS)  # its provenance names the subset
    np.testing.assert_array_equal(made["teff"], shipped["teff"])
    np.testing.assert_array_equal(made["feh"], shipped["feh"])
    np.testing.assert_allclose(made["color"], shipped["color"], atol=1e-4)


CALSPEC_STARS = {
    # file stem: (spectral type Teff in K, V mag) from the data README
    "hd031128_stis_006": (6600, 9.14),
    "hd111980_stis_006": (6250, 8.38),
    "bd_17d4708_stisnic_007": (6100, 9.47),
    "hd209458_stisnic_008": (5950, 7.65),
    "p177d_stisnic_010": (5950, 13.49),
    "hd38949_stis_007": (5900, 7.80),
}


def read_calspec_air(path):
    data = fits.getdata(path, 1)
    wave = np.asarray(data["WAVELENGTH"], float)
    flux = np.asarray(data["FLUX"], float)
    keep = wave >= wavelength.AIR_VACUUM_LIMIT  # the air/vacuum convention steps back at 2000 Å
    air = ph.vacuum_to_air(wave[keep] * u.AA)
    return make_spectrum(air, flux[keep], flux_unit=FLAM)


@pytest.mark.parametrize("stem", sorted(CALSPEC_STARS))
def test_calspec_synthetic_magnitudes_and_teff(calspec_dir, stem):
    matches = sorted(calspec_dir.glob(stem + "*.fits*"))
    if not matches:
        skip_or_fail(f"{stem} not in {calspec_dir}")
    spec = read_calspec_air(matches[0])
    teff_true, vmag = CALSPEC_STARS[stem]
    bands = ["gaia_g", "gaia_bp", "gaia_rp", "gaia3_bp", "gaia3_rp", "ps1_g", "ps1_r", "ps1_i", "ps1_z"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mags = ph.synthetic_photometry(spec, bands).value
    assert np.all(np.isfinite(mags))
    gaia_g_vega = mags[0] - ph.load_filter_curve("gaia_g").vega_to_ab
    assert abs(gaia_g_vega - vmag) < 0.5
    assert 0.2 < mags[5] - mags[6] < 0.6  # PS1 g−r of F/G stars
    for pair in ((1, 2), (3, 4)):
        phot = Photometry([bands[pair[0]], bands[pair[1]]], mags[list(pair)], [0.01, 0.01])
        _, (low, high) = ph.estimate_teff_from_color(phot)
        assert low < teff_true < high
    _, (low, high) = ph.estimate_teff_from_color(Photometry(["ps1_g", "ps1_r"], mags[5:7], [0.01, 0.01]),
                                                 method="g_r")
    assert low < teff_true < high
