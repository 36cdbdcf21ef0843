"""The user cache folder and safe, content-keyed binary cache files.

The cache lives in ``$KSPEC_FLUXCAL_CACHE`` when set, else in the platform's
user cache folder (e.g. ``~/.cache/kspec_fluxcal``): template library folders
may be read-only. Every entry is written atomically and carries a checksum,
so a stale or corrupt file is detected and rebuilt, never trusted.
"""

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import platformdirs

from .exceptions import CacheError
from .io.atomic import atomic_output, write_bytes_atomic

__all__ = ["cache_dir"]

log = logging.getLogger(__name__)


def cache_dir(*parts):
    """Return (and create) a folder inside the package cache."""
    root = os.environ.get("KSPEC_FLUXCAL_CACHE") or platformdirs.user_cache_dir("kspec_fluxcal")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def fingerprint(*items):
    """A short hex digest of JSON-able items (arrays are hashed by their bytes)."""
    digest = hashlib.sha256()
    for item in items:
        if isinstance(item, np.ndarray):
            digest.update(np.ascontiguousarray(item).tobytes())
            digest.update(str(item.dtype).encode())
        else:
            digest.update(json.dumps(item, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]


def installed_version(name):
    """The version of the installed distribution ``name`` (also its package's name; ``'unknown'`` when not installed).

    Read from the name of its ``.dist-info`` folder beside the package, which is what
    `importlib.metadata.version` reads too after scanning every path entry and parsing the
    metadata file (40–50 ms in a new process); other layouts go to `importlib.metadata`.
    """
    import importlib.util
    from importlib import metadata

    spec = importlib.util.find_spec(name)
    if spec is None:
        return "unknown"
    key = name.replace("-", "_").lower()
    if spec.origin is not None:
        for info in Path(spec.origin).parent.parent.glob("*.dist-info"):
            dist, _, version = info.name[: -len(".dist-info")].partition("-")
            if dist.replace("-", "_").replace(".", "_").lower() == key and version:
                return version
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _checksum(path):
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def save_arrays(folder, arrays, meta=None):
    """Write ``arrays`` (name → ndarray) and ``meta`` into ``folder`` atomically.

    Each array becomes ``<name>.npy`` (memory-mappable); ``index.json`` records
    the meta and every file's checksum and is written last, so a folder
    without a valid index is never read.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = {"meta": meta or {}, "files": {}}
    for name, array in arrays.items():
        target = folder / f"{name}.npy"
        with atomic_output(target) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array))
        index["files"][name] = _checksum(target)
    write_bytes_atomic(folder / "index.json", json.dumps(index).encode())


def load_arrays(folder, mmap=True, verify=True):
    """Read a folder written by `save_arrays`: (name → array, meta).

    Raises `~kspec_fluxcal.CacheError` when the index is missing or a file does
    not match its checksum; the caller rebuilds the entry.
    """
    folder = Path(folder)
    try:
        index = json.loads((folder / "index.json").read_text())
        arrays = {}
        for name, checksum in index["files"].items():
            path = folder / f"{name}.npy"
            if verify and _checksum(path) != checksum:
                raise CacheError(f"cache file {path} does not match its checksum")
            arrays[name] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except CacheError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"cache entry {folder} is unreadable ({exc}); it will be rebuilt") from exc
    return arrays, index["meta"]


def _file_states(folder):
    """(size, mtime, inode) of every file of a cache entry."""
    states = {}
    for path in sorted(folder.glob("*.npy")) + [folder / "index.json"]:
        st = path.stat()
        states[path.name] = [st.st_size, st.st_mtime_ns, st.st_ino]
    return states


def stamp_verified(folder):
    """Record the state of a cache entry whose checksums are known to be right."""
    try:
        write_bytes_atomic(folder / "verified.json", json.dumps(_file_states(folder)).encode())
    except OSError as exc:  # a read-only cache: every load then verifies the checksums
        log.debug("cannot stamp the cache entry %s as verified: %s", folder, exc)


def load_verified_arrays(folder):
    """`load_arrays` memory-mapped, re-checksumming only files changed since their last verification.

    Hashing 600 MB takes ~0.8 s, more than the rest of a cold load, so every
    entry carries a stamp (size, mtime, inode of each file) written when its
    checksums were last verified (or right after it was written). A file that
    was rewritten, truncated or touched since then no longer matches the stamp
    and the whole entry is verified again; a mismatch raises
    `~kspec_fluxcal.CacheError` and the caller rebuilds the entry.
    """
    try:
        stamp = json.loads((folder / "verified.json").read_text())
        verify = stamp != _file_states(folder)
    except (OSError, ValueError):
        verify = True
    arrays, meta = load_arrays(folder, mmap=True, verify=verify)
    if verify:
        stamp_verified(folder)
    return arrays, meta
