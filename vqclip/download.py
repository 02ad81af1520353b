"""Verified, resumable, atomic, locked downloads, and the cache directory.

A file is streamed to `<file>.part` while its sha256 is computed, resumed with an HTTP Range request
after an interruption, checked against the expected size and sha256, and only then renamed into place.
A file lock makes a second process wait for the first one's transfer instead of starting its own.
After a verified download `<file>.sha256` records the digest (and the size and mtime it was made for),
so later runs trust the file without re-hashing it and `vqclip models verify` can re-check it.
"""

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from filelock import FileLock, Timeout

from vqclip.errors import ChecksumError, DownloadError, OfflineError

CHUNK = 1 << 20  # bytes per read when hashing files on disk
NET_CHUNK = 1 << 16  # bytes per network read: at most this much is lost when a connection drops
RETRIES = 3  # attempts per URL for transient failures (connection errors, timeouts, 5xx)
BACKOFF = 1.0  # seconds before the second attempt; doubles after each further failure
TIMEOUT = (10, 60)  # connect, read (seconds)
_PERMANENT = {400, 401, 403, 404, 410, 451}


def cache_dir() -> Path:
    """`$VQCLIP_CACHE`, else the platform cache dir (`$XDG_CACHE_HOME/vqclip` on Linux)."""
    env = os.environ.get("VQCLIP_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("vqclip", appauthor=False))


def offline_mode(offline: bool | None = None) -> bool:
    """True when the network must not be used: --offline, VQCLIP_OFFLINE=1 or HF_HUB_OFFLINE=1."""
    if offline is not None:
        return offline
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("VQCLIP_OFFLINE", "HF_HUB_OFFLINE")
    )


def _hasher(path: Path):
    """A sha256 object fed with the file's bytes, read in chunks (never the whole file at once)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h


def sha256_file(path: Path) -> str:
    return _hasher(path).hexdigest()


# ---- the stamp beside a verified file ----------------------------------------------------------


def stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_stamp(path: Path, digest: str) -> None:
    st = path.stat()
    record = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    tmp = stamp_path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, stamp_path(path))


def read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(stamp_path(path).read_text())
    except (OSError, ValueError):
        return None


def is_verified(path: Path, sha256: str | None = None) -> bool:
    """A cached file is trusted when its stamp matches its size and mtime (and the expected sha256)."""
    stamp = read_stamp(path)
    if not stamp or not path.is_file():
        return False
    st = path.stat()
    if stamp.get("size") != st.st_size or stamp.get("mtime_ns") != st.st_mtime_ns:
        return False
    return sha256 is None or stamp.get("sha256") == sha256


def verify_file(path: Path, size: int | None, sha256: str | None) -> str | None:
    """Re-hash a cached file. Returns None when it is good, else what is wrong with it."""
    if not path.is_file():
        return "missing"
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size {actual_size} bytes, expected {size}"
    expected = sha256 or (read_stamp(path) or {}).get("sha256")
    digest = sha256_file(path)
    if expected and digest != expected:
        return f"sha256 {digest}, expected {expected}"
    write_stamp(path, digest)
    return None


# ---- progress ------------------------------------------------------------------------------------


class _Progress:
    """Bytes, speed and ETA on stderr with rich; silent when quiet."""

    def __init__(self, label: str, quiet: bool):
        self.quiet = quiet
        self.label = label
        self._progress = None

    def __enter__(self):
        if not self.quiet:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=None)
        return self

    def start(self, total: int | None, done: int) -> None:
        if self._progress:
            self._progress.update(self._task, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self._progress:
            self._progress.advance(self._task, n)

    def __exit__(self, *exc):
        if self._progress:
            self._progress.__exit__(*exc)


def log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# ---- the transfer -------------------------------------------------------------------------------


class _Transient(Exception):
    """Worth retrying the same URL (connection lost, timeout, 5xx, short body)."""


class _Permanent(Exception):
    """Not worth retrying this URL (404, 403, wrong content)."""


@dataclass
class Target:
    """What to download and how to check it."""

    path: Path
    urls: tuple[str, ...]
    size: int | None = None
    sha256: str | None = None
    label: str = ""  # for messages: "vqgan_imagenet_f16_16384 (model.ckpt)"
    fetch_command: str = ""  # for messages: the command that downloads it


def fetch(target: Target, offline: bool | None = None, quiet: bool = False, session=None) -> Path:
    """Download `target` into place unless a verified copy is already there; return its path.

    Args:
        target: destination, URLs (mirrors, tried in order), expected size and sha256.
        offline: never touch the network (default: from VQCLIP_OFFLINE / HF_HUB_OFFLINE).
        quiet: no progress or messages on stderr.
        session: a `requests.Session` to use (proxies come from HTTP(S)_PROXY as usual).
    """
    path = target.path
    label = target.label or path.name
    if is_verified(path, target.sha256):
        return path
    if offline_mode(offline):
        where = target.urls[0] if target.urls else "no known URL"
        fetch_hint = f"`{target.fetch_command}`" if target.fetch_command else "a download"
        raise OfflineError(
            f"{label} is not in the cache ({path}) and the network is off.",
            f"Run {fetch_hint} while online (it comes from {where}), or copy the file to {path}.",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"Waiting for another vqclip process that is downloading {label} ...", quiet)
        lock.acquire()
    try:
        if is_verified(path, target.sha256):  # the other process finished it
            return path
        if path.is_file() and target.sha256 is not None and verify_file(path, target.size, target.sha256) is None:
            return path  # placed by hand: hashed once, stamped, trusted from now on
        return _fetch_locked(target, label, quiet, session or requests.Session())
    finally:
        lock.release()


def _fetch_locked(target: Target, label: str, quiet: bool, session) -> Path:
    part = target.path.with_name(target.path.name + ".part")
    tried = []  # one "url: why (tries)" per URL
    for url in target.urls:
        delay = BACKOFF
        for attempt in range(1, RETRIES + 1):
            try:
                digest = _transfer(url, part, target, label, quiet, session)
            except _Transient as err:
                if attempt == RETRIES:
                    tried.append(f"{url}: {err} ({RETRIES} tries)")
                    break
                log(f"{label}: {err}; retrying in {delay:.0f} s", quiet)
                time.sleep(delay)
                delay *= 2
                continue
            except _Permanent as err:
                tried.append(f"{url}: {err}")
                break
            os.replace(part, target.path)
            write_stamp(target.path, digest)
            return target.path
        if url != target.urls[-1]:
            log(f"{label}: {url} failed; trying the next mirror", quiet)
    if not target.urls:
        tried.append("no URL is known for this file")
    bad_sum = [t for t in tried if "sha256" in t or "size" in t]
    cls = ChecksumError if bad_sum and len(bad_sum) == len(tried) else DownloadError
    raise cls(
        f"Could not download {label}; tried: " + "; ".join(tried) + ".",
        f"Check your connection or proxy (HTTPS_PROXY), or download the file yourself to {target.path}.",
    )


def _transfer(url: str, part: Path, target: Target, label: str, quiet: bool, session) -> str:
    """Stream `url` into `part`, resuming what is there; return the sha256 of the complete, checked file."""
    have = part.stat().st_size if part.exists() else 0
    if target.size is not None and have > target.size:
        part.unlink()
        have = 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=TIMEOUT, allow_redirects=True)
    except requests.RequestException as err:
        raise _Transient(_reason(err)) from err
    with resp:
        if resp.status_code == 416 and have:  # asked past the end: what we have may be all of it
            return _check(part, target, _hasher(part))
        if resp.status_code in _PERMANENT:
            raise _Permanent(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise _Transient(f"HTTP {resp.status_code}")
        if resp.status_code == 206 and have and _range_start(resp) == have:
            mode, done = "ab", have
            h = _hasher(part)
        else:  # 200: the server ignored the Range header (or there was nothing to resume): start over
            mode, done = "wb", 0
            h = hashlib.sha256()
        length = resp.headers.get("Content-Length")
        total = done + int(length) if length and length.isdigit() else target.size
        with _Progress(label, quiet) as bar, open(part, mode) as f:
            bar.start(total, done)
            try:
                for chunk in resp.iter_content(NET_CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    bar.advance(len(chunk))
            except requests.RequestException as err:
                raise _Transient(f"connection lost after {done} bytes ({_reason(err)})") from err
        if length and length.isdigit() and done != total:
            raise _Transient(f"connection closed after {done} of {total} bytes")
    return _check(part, target, h)


def _check(part: Path, target: Target, h) -> str:
    """The digest of a complete part file; a wrong size or sha256 deletes it (never moved into place)."""
    size = part.stat().st_size
    if target.size is not None and size != target.size:
        if size < target.size:
            raise _Transient(f"connection closed after {size} of {target.size} bytes")
        part.unlink()
        raise _Permanent(f"wrong size: {size} bytes, expected {target.size}")
    digest = h.hexdigest()
    if target.sha256 is not None and digest != target.sha256:
        part.unlink()
        raise _Permanent(f"sha256 mismatch: got {digest}, expected {target.sha256}; the file was discarded")
    return digest


def _range_start(resp) -> int | None:
    value = resp.headers.get("Content-Range", "")  # "bytes 100-999/1000"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _reason(err: Exception) -> str:
    if isinstance(err, requests.ConnectionError):
        return "connection failed"
    if isinstance(err, requests.Timeout):
        return "timed out"
    return type(err).__name__
