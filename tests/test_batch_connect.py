"""A scheduler that cannot be reached ends ``batch --scheduler`` within ``--connect-timeout`` with one line, exit 2."""

import socket

import pytest

from kspec_fluxcal import batch
from kspec_fluxcal.cli import main
from kspec_fluxcal.exceptions import InputDataError
from kspec_fluxcal.pipeline import FluxcalConfig
from kspec_fluxcal.simulate import write_bosz_grid

pytest.importorskip("distributed")


def _closed_port():
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_library(tmp_path_factory):
    dest = tmp_path_factory.mktemp("tiny_bosz")
    write_bosz_grid(dest, teffs=(6000,), loggs=(4.5,), fehs=(0.0,), resolution=2000, wave_range=(3000.0, 10000.0),
                    layout="flat", workers=1)
    return dest


def test_unreachable_scheduler_is_one_line_and_exit_2(tiny_library, tmp_path, capsys):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    cat = tmp_path / "cat.csv"
    cat.write_text("RA,Dec\n")
    status = main(["batch", str(tmp_path / "a_red.fits"), "--catalog", str(cat), "--templates", str(tiny_library),
                   "--scheduler", address, "--connect-timeout", "1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith(f"kspec-fluxcal: error: cannot reach a Dask scheduler at {address} "
                                               "within 1 s"), err
    assert "--connect-timeout" in err[0]
    assert not (tmp_path / "kspec_fluxcal_runlog.ecsv").exists()  # nothing ran, nothing to log


def test_the_connect_timeout_reaches_the_client(monkeypatch, tmp_path):
    """The client is asked to give up after the connect timeout (default 5 s, not distributed's 30 s)."""
    import distributed

    seen = []

    class Refused:
        def __init__(self, address, timeout=None, **kwargs):
            seen.append(timeout)
            raise OSError(f"Timed out trying to connect to {address} after {timeout} s")

    monkeypatch.setattr(distributed, "Client", Refused)
    config = FluxcalConfig(calibration=tmp_path / "night.fits")
    for kwargs, expected in (({}, 5.0), ({"connect_timeout": 0.5}, 0.5)):
        with pytest.raises(InputDataError, match=f"within {expected:g} s"):
            batch.calibrate_batch([tmp_path / "a_red.fits"], None, config, scheduler="tcp://head:8786",
                                  run_log=False, **kwargs)
    assert seen == [5.0, 0.5] and batch.CONNECT_TIMEOUT == 5.0
    with pytest.raises(InputDataError, match="positive number of seconds"):
        batch.calibrate_batch([tmp_path / "a_red.fits"], None, config, scheduler="tcp://head:8786",
                              run_log=False, connect_timeout=0)


def test_an_address_that_is_not_dask_is_an_input_error(monkeypatch, tmp_path):
    """Whatever the handshake raises (garbage from another service), it reads as an unreachable scheduler."""
    import distributed

    def garbage(address, timeout=None, **kwargs):
        raise MemoryError("Unable to allocate 3.07 EiB for an array")

    monkeypatch.setattr(distributed, "Client", garbage)
    with pytest.raises(InputDataError, match="cannot reach a Dask scheduler at tcp://web:80 within 5 s"):
        batch.calibrate_batch([tmp_path / "a_red.fits"], None, FluxcalConfig(calibration=tmp_path / "n.fits"),
                              scheduler="tcp://web:80", run_log=False)


def test_a_local_cluster_leaves_the_default_dashboard_port_alone():
    """Two suites (or two nights) on one machine: a held port 8787 neither warns nor moves the package's cluster."""
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            held.bind(("127.0.0.1", 8787))
            held.listen()
        except OSError:  # another process holds it already: the situation this test is about
            pass
        with batch.dask_client(workers=1) as client:  # "Port 8787 is already in use" would be an error here
            server = client.cluster.scheduler.http_server
    assert server.address == "127.0.0.1" and server.port != 8787
