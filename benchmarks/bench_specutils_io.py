"""Benchmark of the specutils paths on one frame (a script, not a test).

A RED frame of NFIB fibers × NPIX pixels on one shared grid (flat random
counts, ``BUNIT = 'Counts'``, ``WAVELA`` in ``'Angstroms'``) is read with
``SpectrumList.read`` and ``Spectrum.read``, calibrated through
`kspec_fluxcal.apply_flux_calibration` with arrays, a 2-D ``Spectrum`` and a
``SpectrumList``, and written with the ``KSPEC-RED`` writer. Best of
``--repeat`` runs. The floor of the ``SpectrumList`` case is printed too:
making its NFIB calibrated ``Spectrum`` objects alone (the call the
package makes, `kspec_fluxcal.io.fiber_spectra.fiber_spectra`, on the first
fiber's spectral axis and WCS, holding views of the rows of the calibrated
arrays), with nothing calibrated.

Usage::

    python benchmarks/bench_specutils_io.py [--fibers 300] [--pixels 6000] [--repeat 3]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from specutils import Spectrum, SpectrumList

import kspec_fluxcal
from kspec_fluxcal.containers import FLAM, CalibrationVector
from kspec_fluxcal.io.fiber_spectra import fiber_spectra


def _frame(path, n_fib, n_pix):
    wave = np.linspace(3600.0, 9800.0, n_pix)
    counts = np.random.default_rng(0).uniform(50.0, 500.0, (n_fib, n_pix))
    primary = fits.PrimaryHDU(counts)
    primary.header["BUNIT"] = "Counts"
    wavela = fits.ImageHDU(wave, name="WAVELA")
    wavela.header["BUNIT"] = "Angstroms"
    fibres = fits.table_to_hdu(Table({"TYPE": ["P"] * n_fib, "NAME": [f"f{i}" for i in range(n_fib)]}))
    fibres.name = "FIBRES"
    fits.HDUList([primary, fits.ImageHDU(counts, name="VARIANCE"), wavela, fibres]).writeto(path)
    unit = FLAM / u.ct
    return CalibrationVector(wave * u.AA, np.full(n_pix, 1e-17) * unit, np.full(n_pix, 1e-40) * unit**2)


def _best(function, repeat):
    """Best wall time and best CPU time (s) of ``repeat`` calls."""
    times, cpus = [], []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        function()
        times.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return min(times), min(cpus)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fibers", type=int, default=300)
    parser.add_argument("--pixels", type=int, default=6000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frame_red.fits"
        vector = _frame(path, args.fibers, args.pixels)
        frame = Spectrum.read(path)
        fibers = SpectrumList.read(path)
        calibrated = kspec_fluxcal.apply_flux_calibration(frame, vector)
        listed = kspec_fluxcal.apply_flux_calibration(fibers, vector)

        flux = u.Quantity(np.stack([s.flux.value for s in listed]), listed[0].flux.unit)
        variance = np.stack([s.uncertainty.array for s in listed])
        mask = np.stack([s.mask for s in listed])
        metas = [s.meta for s in listed]

        def make_spectra():
            return fiber_spectra(listed[0].spectral_axis, flux, variance, mask, metas, wcs=listed[0].wcs,
                                 copy=False)

        cases = {
            "SpectrumList.read": lambda: SpectrumList.read(path),
            "Spectrum.read (2-D)": lambda: Spectrum.read(path),
            "apply_flux_calibration(arrays)": lambda: kspec_fluxcal.apply_flux_calibration(
                frame.flux, frame.uncertainty.quantity, vector, wavelength=frame.spectral_axis),
            "apply_flux_calibration(2-D Spectrum)": lambda: kspec_fluxcal.apply_flux_calibration(frame, vector),
            "apply_flux_calibration(SpectrumList)": lambda: kspec_fluxcal.apply_flux_calibration(fibers, vector),
            f"  of which {args.fibers} x Spectrum(...) alone": make_spectra,
            "Spectrum.write(format='KSPEC-RED')": lambda: calibrated.write(Path(tmp) / "out.fits",
                                                                           format="KSPEC-RED", overwrite=True),
        }
        print(f"{args.fibers} fibers x {args.pixels} pixels, best of {args.repeat} (wall; CPU = user + system of "
              "this process, which a loaded machine inflates less)")
        best, cpu = {}, {}
        for label, function in cases.items():
            best[label], cpu[label] = _best(function, args.repeat)
            print(f"  {label:40s} {1e3 * best[label]:8.1f} ms   CPU {1e3 * cpu[label]:8.1f} ms")
        for name, times in (("wall", best), ("CPU", cpu)):
            ratio = times["apply_flux_calibration(SpectrumList)"] / times["apply_flux_calibration(arrays)"]
            floor = times[f"  of which {args.fibers} x Spectrum(...) alone"] / times["apply_flux_calibration(arrays)"]
            print(f"  {name:4s} SpectrumList / arrays               {ratio:8.2f} x   (target <= 2); making the "
                  f"Spectrum objects / arrays {floor:.2f} x")


if __name__ == "__main__":
    main()
