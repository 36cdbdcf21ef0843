"""Download the seed's BOSZ 2024 subgrid from the MAST HLSP archive.

BOSZ 2024 (Mészáros et al. 2024, A&A 688, A197; MAST HLSP "bosz",
doi:10.17909/T95G68) stores one gzipped two-column text file per model,
laid out as ``<base>r<R>/m<±X.XX>/<file>``, and one wavelength grid per
resolution, ``<base>wavelength_grids/bosz2024_wave_r<R>.txt``. This module
fetches the 520-model subgrid used by kspec_fluxcal (Teff 5000–8000 K in
250 K steps, log g 3.5–5.0, [M/H] −1.00…+0.50, [α/M] 0.00 and +0.25 for
[M/H] ≤ −0.50) into the same layout on disk, with the wavelength grid kept
beside the metallicity folders (``<dest>/r<R>/bosz2024_wave_r<R>.txt``).

Downloads run concurrently, are retried with exponential back-off on
transient failures and are written atomically
(`kspec_fluxcal.io.atomic.atomic_output`), so an interrupted run never leaves
a truncated model behind.

Run it as ``python -m kspec_fluxcal.download_bosz --dest data/bosz2024``.
"""

import argparse
import http.client
import logging
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from .bosz import BOSZ_RESOLUTIONS, check_resolution, subgrid_models, wave_grid_filename
from .exceptions import DownloadError, InputDataError
from .io.atomic import atomic_output

__all__ = ["DownloadSummary", "subgrid_urls", "download_subgrid", "main"]

log = logging.getLogger(__name__)


#: Root of the BOSZ 2024 HLSP on MAST.
DEFAULT_BASE_URL = "https://archive.stsci.edu/hlsps/bosz/bosz2024/"

#: Remote folder (relative to the archive root) that holds the wave grids.
WAVE_GRID_REMOTE_FOLDER = "wavelength_grids"

_USER_AGENT = "kspec_fluxcal-download_bosz (python urllib)"

_CHUNK = 1 << 16

_RETRYABLE_STATUS = frozenset({408, 425, 429})


def _url(base_url, relpath):
    """Join an archive root and a relative path, percent-encoding ``+``."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    return base + urllib.parse.quote(relpath, safe="/")


def _wave_grid_remote_relpath(resolution):
    return f"{WAVE_GRID_REMOTE_FOLDER}/{wave_grid_filename(resolution)}"


def _wave_grid_local_relpath(resolution):
    return f"r{check_resolution(resolution)}/{wave_grid_filename(resolution)}"


def subgrid_urls(resolution=10000, base_url=DEFAULT_BASE_URL):
    """Return the URLs of the subgrid: 520 models, then the wavelength grid.

    Parameters
    ----------
    resolution : int, optional
        Resolving power of the resampled products.
    base_url : str, optional
        Archive root (``…/bosz2024/``).

    Returns
    -------
    list of str
        521 URLs, ``+`` encoded as ``%2B``.
    """
    urls = [_url(base_url, relpath) for _, relpath in subgrid_models(resolution)]
    urls.append(_url(base_url, _wave_grid_remote_relpath(resolution)))
    return urls


@dataclass
class DownloadSummary:
    """Outcome of a download run.

    Attributes
    ----------
    dest : pathlib.Path
        Folder the files were saved under.
    ok : list of str
        Relative paths downloaded in this run.
    skipped : list of str
        Relative paths already present (non-empty) and left alone.
    not_found : list of str
        Relative paths the archive does not have (HTTP 404/410).
    failed : list of str
        Relative paths that could not be fetched after all retries.
    errors : dict of str to str
        Last error message of every failed or not-found path.
    planned : list of str
        URLs a dry run would have downloaded (empty unless ``dry_run``).
    dry_run : bool
        Whether nothing was downloaded on purpose.
    """

    dest: Path
    ok: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    not_found: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    errors: dict = field(default_factory=dict)
    planned: list = field(default_factory=list)
    dry_run: bool = False

    @property
    def total(self):
        """Number of files considered."""
        return len(self.ok) + len(self.skipped) + len(self.not_found) + len(self.failed) + len(self.planned)

    @property
    def success(self):
        """True when no file failed (files the archive lacks do not count)."""
        return not self.failed

    def __str__(self):
        if self.dry_run:
            return (
                f"dry run: {len(self.planned)} to download, {len(self.skipped)} already present "
                f"(of {self.total}) in {self.dest}"
            )
        return (
            f"{len(self.ok)} downloaded, {len(self.skipped)} skipped, {len(self.not_found)} not found, "
            f"{len(self.failed)} failed (of {self.total}) in {self.dest}"
        )


class _NotFound(Exception):
    """The server answered 404/410 for every candidate URL."""


class _FetchFailed(Exception):
    """A file that cannot be fetched: an error retrying cannot fix (HTTP 403,
    a disk error) or a transient one that outlived the retries."""


class _TruncatedBody(Exception):
    """The body ended before Content-Length bytes arrived."""


_TRANSIENT = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    _TruncatedBody,
)


def _fetch_once(url, target, timeout):
    """Stream one URL into ``target`` atomically (a truncated body leaves nothing behind)."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response, atomic_output(target) as part:
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        with open(part, "wb") as handle:
            while chunk := response.read(_CHUNK):
                handle.write(chunk)
                received += len(chunk)
        if expected is not None and received != expected:
            raise _TruncatedBody(f"received {received} of {expected} bytes")
        if received == 0:
            raise _TruncatedBody("the server sent an empty body")


def _download_one(urls, target, retries, backoff, timeout):
    """Fetch a file from the first candidate URL that exists.

    Returns ``None`` on success; raises `_NotFound` when every URL answered
    404/410 and `_FetchFailed` for any other failure (after the retries when
    the failure is transient).
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _FetchFailed(f"cannot create {target.parent}: {exc}") from exc
    missing = []
    for url in urls:
        for attempt in range(retries + 1):
            try:
                _fetch_once(url, target, timeout)
                return
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code in (404, 410):
                    missing.append(f"HTTP {exc.code} for {url}")
                    break
                if exc.code < 500 and exc.code not in _RETRYABLE_STATUS:
                    raise _FetchFailed(f"HTTP {exc.code} {exc.reason} for {url}") from exc
                error = exc
            except _TRANSIENT as exc:
                error = exc
            except OSError as exc:
                raise _FetchFailed(f"cannot write {target}: {exc}") from exc
            if attempt < retries:
                delay = backoff * 2**attempt
                log.debug("%s: %s; retrying in %.2f s", url, error, delay)
                time.sleep(delay)
        else:
            raise _FetchFailed(f"{url}: {error} (gave up after {retries + 1} attempts)") from error
    raise _NotFound("; ".join(missing))


class _Progress:
    """Text progress bar on a terminal, log lines otherwise."""

    def __init__(self, total, enabled, stream=None):
        self.total = total
        self.done = 0
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.bar = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, status, relpath, summary):
        self.done += 1
        if not self.enabled:
            log.debug("[%d/%d] %s %s", self.done, self.total, status, relpath)
        elif self.bar:
            width = 30
            filled = int(width * self.done / self.total)
            self.stream.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"ok {len(summary.ok)} skip {len(summary.skipped)} "
                f"404 {len(summary.not_found)} fail {len(summary.failed)}"
            )
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        else:
            log.info("[%d/%d] %s %s", self.done, self.total, status, relpath)


def _check_options(workers, retries, backoff, timeout):
    if int(workers) != workers or workers < 1:
        raise InputDataError(f"workers must be a positive integer, got {workers!r}")
    if int(retries) != retries or retries < 0:
        raise InputDataError(f"retries must be a non-negative integer, got {retries!r}")
    if backoff < 0:
        raise InputDataError(f"backoff must be >= 0 seconds, got {backoff!r}")
    if timeout <= 0:
        raise InputDataError(f"timeout must be > 0 seconds, got {timeout!r}")


def download_subgrid(
    dest,
    resolution=10000,
    base_url=DEFAULT_BASE_URL,
    workers=8,
    retries=3,
    backoff=0.5,
    timeout=60,
    force=False,
    dry_run=False,
    progress=True,
):
    """Download the 520-model BOSZ 2024 subgrid and its wavelength grid.

    Parameters
    ----------
    dest : str or os.PathLike
        Folder to save into, in the MAST layout: models go to
        ``<dest>/r<R>/m<±X.XX>/`` and the wave grid to
        ``<dest>/r<R>/bosz2024_wave_r<R>.txt``.
    resolution : int, optional
        Resolving power of the resampled products (10 000 by default).
    base_url : str, optional
        Archive root; point it at a mirror or a local server.
    workers : int, optional
        Number of concurrent downloads.
    retries : int, optional
        Extra attempts after a transient failure (HTTP 5xx/408/429, timeout,
        dropped connection, truncated body). HTTP 404 is not retried.
    backoff : float, optional
        Delay in seconds before the first retry; doubled at each retry.
    timeout : float, optional
        Socket timeout in seconds of each request.
    force : bool, optional
        Download files that are already present too.
    dry_run : bool, optional
        Only list what would be downloaded (`DownloadSummary.planned`).
    progress : bool, optional
        Show a progress bar on stderr (a terminal) or log one line per file.

    Returns
    -------
    DownloadSummary
        What was downloaded, skipped, not found or failed.

    Raises
    ------
    InputDataError
        If an option is out of range.
    DownloadError
        If the destination folder cannot be created.
    """
    _check_options(workers, retries, backoff, timeout)
    resolution = check_resolution(resolution)
    dest = Path(dest)
    jobs = [(relpath, (_url(base_url, relpath),)) for _, relpath in subgrid_models(resolution)]
    jobs.append(
        (
            _wave_grid_local_relpath(resolution),
            (
                _url(base_url, _wave_grid_remote_relpath(resolution)),
                _url(base_url, _wave_grid_local_relpath(resolution)),
            ),
        )
    )
    summary = DownloadSummary(dest=dest, dry_run=dry_run)
    pending = []
    for relpath, urls in jobs:
        target = dest / relpath
        if not force and target.is_file() and target.stat().st_size > 0:
            summary.skipped.append(relpath)
        else:
            pending.append((relpath, urls, target))

    if dry_run:
        summary.planned = [urls[0] for _, urls, _ in pending]
        for url in summary.planned:
            log.debug("would download %s", url)
        log.info("%s", summary)
        return summary

    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot create the destination folder {dest}: {exc}; choose a writable --dest"
        ) from exc

    log.info("downloading %d files from %s into %s (%d already present)", len(pending), base_url, dest,
             len(summary.skipped))
    bar = _Progress(len(pending), progress)
    with ThreadPoolExecutor(max_workers=int(workers)) as pool:
        futures = {
            pool.submit(_download_one, urls, target, int(retries), backoff, timeout): relpath
            for relpath, urls, target in pending
        }
        for future in as_completed(futures):
            relpath = futures[future]
            try:
                future.result()
            except _NotFound as exc:
                summary.not_found.append(relpath)
                summary.errors[relpath] = str(exc)
                status = "not found"
            except _FetchFailed as exc:
                summary.failed.append(relpath)
                summary.errors[relpath] = str(exc)
                status = "FAILED"
            else:
                summary.ok.append(relpath)
                status = "ok"
            bar.update(status, relpath, summary)

    for relpath in summary.not_found:
        log.warning("not in the archive: %s (%s)", relpath, summary.errors[relpath])
    for relpath in summary.failed:
        log.error("failed: %s (%s)", relpath, summary.errors[relpath])
    for bucket in (summary.ok, summary.not_found, summary.failed):
        bucket.sort()
    if summary.failed:
        log.error("%s; run again to retry the failed files", summary)
    else:
        log.info("%s", summary)
    return summary


def add_download_arguments(parser):
    """Add the downloader's options to ``parser`` (shared with ``kspec-fluxcal download-templates``)."""
    parser.add_argument("--dest", default="data/bosz2024",
                        help="destination folder (MAST layout inside); default: %(default)s")
    parser.add_argument("--resolution", type=int, default=10000, choices=BOSZ_RESOLUTIONS,
                        help="resolving power of the resampled models; default: %(default)s")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="archive root; default: %(default)s")
    parser.add_argument("--workers", type=int, default=8, help="concurrent downloads; default: %(default)s")
    parser.add_argument("--retries", type=int, default=3,
                        help="extra attempts after a transient failure; default: %(default)s")
    parser.add_argument("--dry-run", action="store_true", help="list the URLs to fetch and download nothing")
    parser.add_argument("--force", action="store_true", help="download files that are already present too")
    return parser


def run_download(args):
    """Download as ``args`` (from `add_download_arguments`, plus ``quiet``) ask; return the exit status.

    A dry run prints the URLs on standard output and its summary on standard
    error. Raises `~kspec_fluxcal.DownloadError` or
    `~kspec_fluxcal.InputDataError` when the download cannot start.
    """
    summary = download_subgrid(
        args.dest,
        resolution=args.resolution,
        base_url=args.base_url,
        workers=args.workers,
        retries=args.retries,
        force=args.force,
        dry_run=args.dry_run,
        progress=not args.quiet,
    )
    if args.dry_run:
        print("\n".join(summary.planned))
    print(summary, file=sys.stderr if args.dry_run else sys.stdout)
    return 0 if summary.success else 1


def main(argv=None):
    """Command-line entry point.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when no file failed (files missing from the archive are reported
        but do not fail the run), 1 otherwise.
    """
    parser = argparse.ArgumentParser(
        prog="python -m kspec_fluxcal.download_bosz",
        description="Download the 520-model BOSZ 2024 subgrid used by kspec_fluxcal from MAST.",
    )
    add_download_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress display, warnings and errors only")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        level = logging.WARNING if args.quiet else logging.INFO
        logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    try:
        return run_download(args)
    except (DownloadError, InputDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
