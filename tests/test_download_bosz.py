"""Tests of the BOSZ 2024 subgrid downloader, against a local HTTP server."""

import gzip
import http.server
import io
import logging
import re
import threading
import urllib.parse
from collections import Counter

import pytest

from kspec_fluxcal import download_bosz
from kspec_fluxcal.bosz import bosz_filename, subgrid_models
from kspec_fluxcal.download_bosz import DownloadSummary, download_subgrid, main, subgrid_urls
from kspec_fluxcal.exceptions import InputDataError

NAME_RE = re.compile(
    r"^bosz2024_(?P<atmos>mp|ap)_t(?P<teff>\d+)_g(?P<logg>[+-]\d\.\d)_m(?P<feh>[+-]\d\.\d\d)"
    r"_a(?P<alpha>[+-]\d\.\d\d)_c(?P<carbon>[+-]\d\.\d\d)_v(?P<vmicro>\d+)_r(?P<res>\d+)_resam\.txt\.gz$"
)


# --------------------------------------------------------------------------
# Names and URLs
# --------------------------------------------------------------------------


def test_bosz_filename_matches_the_archive_convention():
    assert (
        bosz_filename(6000, 4.0, 0.0)
        == "bosz2024_mp_t6000_g+4.0_m+0.00_a+0.00_c+0.00_v2_r10000_resam.txt.gz"
    )
    name = bosz_filename(7750, 3.5, -0.5, alpha_m=0.25, resolution=5000)
    assert name == "bosz2024_ap_t7750_g+3.5_m-0.50_a+0.25_c+0.00_v2_r5000_resam.txt.gz"
    # a negative zero must not leak into the name
    assert "_m+0.00_" in bosz_filename(5000, 4.5, -0.0)
    assert "_c-0.25_" in bosz_filename(5000, 4.5, 0.0, carbon_m=-0.25, atmos="ms")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"teff": 6000.5, "logg": 4.0, "feh": 0.0},
        {"teff": 6000, "logg": 4.0, "feh": 0.0, "vmicro": 1.5},
        {"teff": 6000, "logg": 4.0, "feh": 0.0, "atmos": "xx"},
        {"teff": 6000, "logg": 4.0, "feh": 0.0, "resolution": -5},
    ],
)
def test_bosz_filename_rejects_bad_input(kwargs):
    with pytest.raises(InputDataError):
        bosz_filename(**kwargs)


def test_subgrid_url_list():
    urls = subgrid_urls(base_url="https://example.org/bosz2024/")
    assert len(urls) == 521
    assert len(set(urls)) == 521
    model_urls, wave_url = urls[:-1], urls[-1]
    assert wave_url.endswith("/bosz2024_wave_r10000.txt")
    assert "resam" not in wave_url
    counts = Counter()
    for url in model_urls:
        assert url.startswith("https://example.org/bosz2024/r10000/m")
        path = urllib.parse.urlsplit(url).path
        assert "+" not in path
        assert "%2B" in path
        folder, name = urllib.parse.unquote(path).split("/")[-2:]
        match = NAME_RE.match(name)
        assert match, name
        assert folder == f"m{match['feh']}"
        teff = int(match["teff"])
        assert match["atmos"] == ("mp" if teff <= 7250 else "ap")
        assert match["vmicro"] == "2" and match["res"] == "10000" and match["carbon"] == "+0.00"
        counts[match["alpha"]] += 1
        if match["alpha"] == "+0.25":
            assert float(match["feh"]) <= -0.5
        counts[match["atmos"]] += 1
    assert counts["+0.25"] == 156
    assert counts["+0.00"] == 364
    assert counts["mp"] == 10 * 4 * 10 and counts["ap"] == 3 * 4 * 10


def test_subgrid_models_parameters_agree_with_paths():
    models = subgrid_models(resolution=5000)
    assert len(models) == 520
    params = {(p.teff, p.logg, p.feh, p.alpha_m) for p, _ in models}
    assert len(params) == 520
    for p, relpath in models:
        match = NAME_RE.match(relpath.split("/")[-1])
        assert relpath.startswith("r5000/")
        assert int(match["teff"]) == p.teff
        assert float(match["logg"]) == p.logg
        assert float(match["feh"]) == p.feh
        assert float(match["alpha"]) == p.alpha_m


# --------------------------------------------------------------------------
# A fake archive on 127.0.0.1
# --------------------------------------------------------------------------


class FakeArchive:
    """Files served by path, with scripted failures, and a request log."""

    def __init__(self):
        self.files = {}
        self.fail_503 = Counter()  # path -> number of 503 answers before success
        self.truncate = Counter()  # path -> number of truncated answers before success
        self.always_500 = set()
        self.requests = Counter()
        self.raw_paths = []
        self.lock = threading.Lock()

    def handler(self):
        archive = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format, *args):
                pass

            def do_GET(self):
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                with archive.lock:
                    archive.requests[path] += 1
                    archive.raw_paths.append(self.path)
                    fail_503 = archive.fail_503[path] > 0
                    if fail_503:
                        archive.fail_503[path] -= 1
                    truncate = archive.truncate[path] > 0
                    if truncate:
                        archive.truncate[path] -= 1
                if path in archive.always_500:
                    self.send_error(500, "scripted failure")
                elif fail_503:
                    self.send_error(503, "busy")
                elif path not in archive.files:
                    self.send_error(404, "no such file")
                else:
                    body = archive.files[path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if truncate:
                        self.wfile.write(body[: len(body) // 2])
                        self.close_connection = True
                    else:
                        self.wfile.write(body)

        return Handler


@pytest.fixture
def archive():
    """A `FakeArchive` served on 127.0.0.1; yields (archive, base URL)."""
    fake = FakeArchive()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}/bosz2024/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def six_models(monkeypatch):
    """Restrict the subgrid to six models (mp and ap, solar and α-rich)."""
    everything = subgrid_models(10000)
    chosen = [everything[i] for i in (0, 1, 2, 3)]
    chosen += [m for m in everything if m[0].atmos == "ap"][:1]
    chosen += [m for m in everything if m[0].alpha_m > 0][-1:]
    assert len({relpath for _, relpath in chosen}) == 6
    monkeypatch.setattr(download_bosz, "subgrid_models", lambda resolution=10000: list(chosen))
    return [relpath for _, relpath in chosen]


WAVE_LOCAL = "r10000/bosz2024_wave_r10000.txt"
WAVE_REMOTE = "/bosz2024/wavelength_grids/bosz2024_wave_r10000.txt"


def _body(relpath):
    return gzip.compress(f"{relpath}\n".encode() * 2000, mtime=0)


def _publish(fake, relpaths, skip=()):
    for relpath in relpaths:
        if relpath not in skip:
            fake.files["/bosz2024/" + relpath] = _body(relpath)
    fake.files[WAVE_REMOTE] = b"5.0000000e+02\n5.0002154e+02\n" * 500


def _no_part_files(dest):
    return not list(dest.rglob("*.part"))


def test_download_end_to_end(archive, six_models, tmp_path):
    fake, base_url = archive
    missing, flaky, cut, present, doomed = six_models[1:6]
    _publish(fake, six_models, skip={missing})
    fake.fail_503["/bosz2024/" + flaky] = 1
    fake.truncate["/bosz2024/" + cut] = 1
    fake.always_500.add("/bosz2024/" + doomed)
    (tmp_path / present).parent.mkdir(parents=True)
    (tmp_path / present).write_bytes(b"already here")

    summary = download_subgrid(
        tmp_path, base_url=base_url, workers=3, retries=2, backoff=0.01, timeout=10, progress=False
    )

    assert isinstance(summary, DownloadSummary)
    assert sorted(summary.ok) == sorted([six_models[0], flaky, cut, WAVE_LOCAL])
    assert summary.skipped == [present]
    assert summary.not_found == [missing]
    assert summary.failed == [doomed]
    assert not summary.success
    assert "500" in summary.errors[doomed]
    assert str(summary).startswith("4 downloaded, 1 skipped, 1 not found, 1 failed (of 7)")

    for relpath in (six_models[0], flaky, cut):
        assert (tmp_path / relpath).read_bytes() == _body(relpath)
    assert (tmp_path / WAVE_LOCAL).read_bytes() == fake.files[WAVE_REMOTE]
    assert (tmp_path / present).read_bytes() == b"already here"
    assert not (tmp_path / missing).exists()
    assert not (tmp_path / doomed).exists()
    assert _no_part_files(tmp_path)

    assert fake.requests["/bosz2024/" + flaky] == 2
    assert fake.requests["/bosz2024/" + cut] == 2
    assert fake.requests["/bosz2024/" + missing] == 1  # a 404 is not retried
    assert fake.requests["/bosz2024/" + doomed] == 3  # 1 + 2 retries
    assert fake.requests["/bosz2024/" + present] == 0
    # '+' reaches the server percent-encoded
    model_paths = [p for p in fake.raw_paths if "resam" in p]
    assert model_paths and all("%2B" in p and "+" not in p for p in model_paths)


def test_truncated_body_that_never_completes_fails_cleanly(archive, six_models, tmp_path):
    fake, base_url = archive
    _publish(fake, six_models)
    cut = six_models[0]
    fake.truncate["/bosz2024/" + cut] = 10
    summary = download_subgrid(tmp_path, base_url=base_url, retries=1, backoff=0.01, progress=False)
    assert summary.failed == [cut]
    assert "bytes" in summary.errors[cut]
    assert fake.requests["/bosz2024/" + cut] == 2
    assert not (tmp_path / cut).exists()
    assert _no_part_files(tmp_path)
    assert len(summary.ok) == 6


def test_wave_grid_falls_back_to_the_resolution_folder(archive, six_models, tmp_path):
    fake, base_url = archive
    _publish(fake, six_models)
    fake.files["/bosz2024/" + WAVE_LOCAL] = fake.files.pop(WAVE_REMOTE)
    summary = download_subgrid(tmp_path, base_url=base_url, backoff=0.01, progress=False)
    assert summary.success and WAVE_LOCAL in summary.ok
    assert (tmp_path / WAVE_LOCAL).read_bytes() == fake.files["/bosz2024/" + WAVE_LOCAL]


def test_force_downloads_present_files_again(archive, six_models, tmp_path):
    fake, base_url = archive
    _publish(fake, six_models)
    first = download_subgrid(tmp_path, base_url=base_url, backoff=0.01, progress=False)
    assert len(first.ok) == 7
    stale = tmp_path / six_models[2]
    stale.write_bytes(b"stale")
    (tmp_path / six_models[3]).write_bytes(b"")  # empty files are never trusted

    second = download_subgrid(tmp_path, base_url=base_url, backoff=0.01, progress=False)
    assert second.ok == [six_models[3]]
    assert len(second.skipped) == 6
    assert stale.read_bytes() == b"stale"

    third = download_subgrid(tmp_path, base_url=base_url, backoff=0.01, force=True, progress=False)
    assert len(third.ok) == 7 and not third.skipped
    assert stale.read_bytes() == _body(six_models[2])
    assert fake.requests["/bosz2024/" + six_models[2]] == 2


def test_dry_run_downloads_nothing(archive, six_models, tmp_path):
    fake, base_url = archive
    _publish(fake, six_models)
    dest = tmp_path / "grid"
    summary = download_subgrid(dest, base_url=base_url, dry_run=True)
    assert summary.dry_run
    assert len(summary.planned) == 7
    assert all(url.startswith(base_url) for url in summary.planned)
    assert not summary.ok and not summary.failed
    assert not dest.exists()
    assert sum(fake.requests.values()) == 0
    assert "dry run: 7 to download" in str(summary)


def test_progress_lines_are_logged_when_stderr_is_not_a_terminal(archive, six_models, tmp_path, caplog):
    fake, base_url = archive
    _publish(fake, six_models)
    with caplog.at_level(logging.INFO, logger="kspec_fluxcal.download_bosz"):
        download_subgrid(tmp_path, base_url=base_url, backoff=0.01, progress=True)
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("[7/7] ok ") for m in messages)
    assert "7 downloaded, 0 skipped, 0 not found, 0 failed" in messages[-1]


def test_progress_bar_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = download_bosz._Progress(2, True, stream=stream)
    summary = DownloadSummary(dest=".")
    summary.ok.append("a")
    bar.update("ok", "a", summary)
    bar.update("ok", "b", summary)
    text = stream.getvalue()
    assert text.startswith("\r[") and text.count("\r") == 2 and text.endswith("2/2 ok 1 skip 0 404 0 fail 0\n")


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(InputDataError, match="workers"):
        download_subgrid(tmp_path, workers=0, dry_run=True)
    with pytest.raises(InputDataError, match="retries"):
        download_subgrid(tmp_path, retries=-1, dry_run=True)


def test_main_exit_codes(archive, six_models, tmp_path, capsys):
    fake, base_url = archive
    _publish(fake, six_models, skip={six_models[0]})
    common = ["--base-url", base_url, "--workers", "2", "--quiet"]

    # dry run: prints the URLs, writes nothing
    assert main(["--dest", str(tmp_path / "dry"), "--dry-run", *common]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 7 and all(url.startswith(base_url) for url in printed)
    assert not (tmp_path / "dry").exists()

    # a model missing from the archive is reported but is no failure
    assert main(["--dest", str(tmp_path / "a"), *common]) == 0
    assert (tmp_path / "a" / six_models[1]).is_file()

    # a server error that outlives the retries is
    fake.always_500.add("/bosz2024/" + six_models[1])
    assert main(["--dest", str(tmp_path / "b"), "--retries", "0", *common]) == 1

    # an unwritable destination gives a one-line reason and status 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--dest", str(blocker / "sub"), *common]) == 1
    assert "error: cannot create the destination folder" in capsys.readouterr().err


def test_a_local_write_error_fails_the_file_not_the_run(archive, six_models, tmp_path):
    fake, base_url = archive
    _publish(fake, six_models)
    blocked = tmp_path / six_models[0]
    blocked.parent.parent.mkdir(parents=True)
    blocked.parent.write_text("a file where a folder should be")
    summary = download_subgrid(tmp_path, base_url=base_url, backoff=0.01, progress=False)
    expected = [r for r in six_models if r.startswith(six_models[0].rsplit("/", 1)[0] + "/")]
    assert sorted(summary.failed) == sorted(expected)
    assert all("cannot create" in summary.errors[r] for r in expected)
    assert len(summary.ok) == 7 - len(expected)
