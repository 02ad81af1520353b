"""Verified, resumable, atomic, locked downloads into the cache.

A file is streamed to `<file>.part` while its sha256 is computed, checked against the expected size and
sha256 (or, where none is published, for being what it claims: `vqclip.filetypes`), and only then renamed
into place; `<file>.sha256` then records the digest (with the size and mtime it was made for), so later runs
trust the file without re-hashing it and `vqclip models verify` can re-check it.

Real hosts misbehave, and each way is handled here:
- `<file>.part.json` records which URL, and which version of it (ETag or Last-Modified), the partial bytes
  came from. A transfer resumes (Range + If-Range) only from its own URL's bytes and starts over otherwise,
  so a mirror's bytes are never appended to another's.
- A body that is a web page (a dead host's "link does not exist" page with status 200, a login page after a
  redirect) fails that mirror at once, before a byte is written.
- A Content-Length larger than the body keeps every byte received and resumes from there.
- A file found at the final path (copied there by hand, or in a read-only shared cache) is checked once and
  used, online or offline.
- `<file>.lock` makes a second process wait for the first one's transfer; it is removed on release.

Nothing here prints: progress goes to a `progress` callable as
`vqclip.events.Progress(job="download", unit="byte", stage=<file label>, done, total)`, and a note for the
user (a retry, the next mirror, waiting for another process) rides in its `extra["note"]`.
"""

import errno
import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import requests

from vqclip.errors import CacheError, ChecksumError, DownloadError, OfflineError
from vqclip.events import Progress, ProgressFn, ignore
from vqclip.filetypes import WEB_PAGE_TYPES, content_problem, looks_like_web_page

try:
    import fcntl
except ImportError:  # Windows: filelock's lock, which removes its file on release there
    fcntl = None

CHUNK = 1 << 20  # bytes per read when hashing files on disk
NET_CHUNK = 1 << 16  # bytes per network read
RETRIES = 3  # attempts per URL for transient failures (connection errors, timeouts, 5xx, short bodies)
BACKOFF = 1.0  # seconds before the second attempt; doubles after each further failure
TIMEOUT = (10, 60)  # connect, read (seconds)
_MISSING = {400, 401, 403, 404, 410, 451}  # statuses that retrying the same URL will not change
_TRUE = ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """`$VQCLIP_CACHE`, else the platform cache dir (`$XDG_CACHE_HOME/vqclip` on Linux)."""
    env = os.environ.get("VQCLIP_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("vqclip", appauthor=False))


def in_cache(path: Path) -> bool:
    """True for files under the cache folder (which `vqclip models verify` can re-check and re-fetch)."""
    return Path(path).resolve().is_relative_to(cache_dir().resolve())


def offline_reason(offline: bool | None = None) -> str | None:
    """What switched the network off (`--offline`, `VQCLIP_OFFLINE=1`, `HF_HUB_OFFLINE=1`), or None."""
    if offline is not None:
        return "--offline" if offline else None
    for var in ("VQCLIP_OFFLINE", "HF_HUB_OFFLINE"):
        value = os.environ.get(var, "")
        if value.lower() in _TRUE:
            return f"{var}={value}"
    return None


def offline_mode(offline: bool | None = None) -> bool:
    """True when the network must not be used: --offline, VQCLIP_OFFLINE=1 or HF_HUB_OFFLINE=1."""
    return offline_reason(offline) is not None


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


def _write_json(path: Path, record: dict) -> None:
    """Atomically: a unique temporary file beside `path`, then a rename (no reader sees half a record)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_json(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_stamp(path: Path, digest: str) -> None:
    st = path.stat()
    _write_json(stamp_path(path), {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns})


def read_stamp(path: Path) -> dict | None:
    return _read_json(stamp_path(path))


def is_verified(path: Path, sha256: str | None = None) -> bool:
    """A cached file is trusted when its stamp matches its size and mtime (and the expected sha256)."""
    stamp = read_stamp(path)
    if not stamp or not path.is_file():
        return False
    st = path.stat()
    if stamp.get("size") != st.st_size or stamp.get("mtime_ns") != st.st_mtime_ns:
        return False
    return sha256 is None or stamp.get("sha256") == sha256


# ---- what to fetch, and checking a file in place -------------------------------------------------


@dataclass
class Target:
    """What to download and how to check it."""

    path: Path
    urls: tuple[str, ...]
    size: int | None = None
    sha256: str | None = None
    label: str = ""  # for messages: "vqgan_imagenet_f16_16384 (model.ckpt)"
    fetch_command: str = ""  # for messages: the command that downloads it
    content: str | None = None  # what the file must be when no sha256 is known (vqclip.filetypes.CONTENTS)

    @property
    def name(self) -> str:
        return self.label or self.path.name


def check_file(target: Target) -> str | None:
    """Re-check the file at `target.path`: None when it is good (it is then stamped), else what is wrong.

    Size and sha256 where published; otherwise the sha256 recorded at its first download, and what it
    holds (a web page is not a checkpoint). Used for files found in place and by `vqclip models verify`.
    """
    path = target.path
    if not path.is_file():
        return "missing"
    actual_size = path.stat().st_size
    if target.size is not None and actual_size != target.size:
        return f"size {actual_size} bytes, expected {target.size}"
    expected = target.sha256 or (read_stamp(path) or {}).get("sha256")
    digest = sha256_file(path)
    if expected and digest != expected:
        return f"sha256 {digest}, expected {expected}"
    if target.sha256 is None and target.content:
        problem = content_problem(path, target.content)
        if problem:
            return f"it is {problem}"
    with suppress(OSError):  # a read-only cache: the file is good all the same, checked again next time
        write_stamp(path, digest)
    return None


def remove_cached(target: Target) -> None:
    """Delete a cached file and its stamp (a bad file is fetched again on next use)."""
    with cache_errors(target.path.parent):
        target.path.unlink(missing_ok=True)
        stamp_path(target.path).unlink(missing_ok=True)


# ---- cache folder errors and the lock ---------------------------------------------------------------


@contextmanager
def cache_errors(folder: Path) -> Iterator[None]:
    """Turn a failing write into the cache (read-only, not a folder, a full disk) into one CacheError."""
    try:
        yield
    except requests.RequestException:  # also an OSError, but the network's
        raise
    except OSError as err:
        raise _cache_error(folder, err) from err


def _cache_error(folder: Path, err: OSError) -> CacheError:
    hint = "Set VQCLIP_CACHE to a folder you can write to."
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return CacheError(
            f"The disk holding the cache folder {folder} is full.",
            f"Free some space (the download resumes where it stopped), or {hint[0].lower()}{hint[1:]}",
        )
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), err.filename)
        return CacheError(f"The cache folder {folder} cannot be made: {blocker} is a file, not a folder.", hint)
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CacheError(f"The cache folder {folder} is not writable ({err.strerror.lower()}).", hint)
    return CacheError(f"Cannot write to the cache folder {folder} ({err.strerror or err}).", hint)


@contextmanager
def _download_lock(path: Path, on_wait) -> Iterator[None]:
    """Hold `<file>.lock` (waiting for another process's transfer, after calling `on_wait`); removed on release.

    The file is unlinked while still locked, so a waiter that then gets the lock holds an unlinked file;
    it notices and locks the path afresh. Two processes therefore never hold the same path at once.
    """
    lock_path = path.with_name(path.name + ".lock")
    if fcntl is None:
        from filelock import FileLock

        with FileLock(str(lock_path)):
            yield
        return
    fd = _lock(lock_path, on_wait)
    try:
        yield
    finally:
        with suppress(FileNotFoundError):
            lock_path.unlink()
        os.close(fd)


def _lock(lock_path: Path, on_wait) -> int:
    waiting = False
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waiting:
                    on_wait()
                    waiting = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _still_named(fd, lock_path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder removed it on release: lock the file now at the path


def _still_named(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


# ---- fetch ---------------------------------------------------------------------------------------


def fetch(target: Target, offline: bool | None = None, progress: ProgressFn = ignore, session=None) -> Path:
    """Download `target` into place unless a good copy is already there; return its path.

    Args:
        target: destination, URLs (mirrors, tried in order), expected size and sha256 (or content).
        offline: never touch the network (default: from VQCLIP_OFFLINE / HF_HUB_OFFLINE).
        progress: receives Progress(job="download", unit="byte") events; notes in `extra["note"]`.
        session: a `requests.Session` to use (proxies come from HTTP(S)_PROXY as usual).
    """
    path = target.path
    if is_verified(path, target.sha256):
        return path
    problem = check_file(target) if path.is_file() else None  # placed by hand: checked once, then stamped
    if path.is_file() and problem is None:
        return path
    reason = offline_reason(offline)
    if reason:
        raise _offline_error(target, reason, problem)
    with cache_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        with _download_lock(path, lambda: progress(_note(target, "waiting for another vqclip process to fetch it"))):
            if is_verified(path, target.sha256):  # the other process finished it
                return path
            return _fetch_locked(target, progress, session or requests.Session())


def _offline_error(target: Target, reason: str, problem: str | None) -> OfflineError:
    where = target.urls[0] if target.urls else "no known URL"
    how = f"Run `{target.fetch_command}`" if target.fetch_command else "Download it"
    state = f"in the cache is not usable ({problem})" if problem else "is not in the cache"
    return OfflineError(
        f"{target.name} {state} ({target.path}) and the network is off ({reason}).",
        f"{how} while online (it comes from {where}), or copy the file to {target.path}.",
    )


def _note(target: Target, text: str) -> Progress:
    return Progress("download", 0, target.size, unit="byte", stage=target.name, extra={"note": text})


@dataclass
class _Failure(Exception):
    """Why one URL did not give the file. kind: network (worth retrying), missing, web page or mismatch."""

    reason: str
    kind: str
    url: str = ""

    def __str__(self) -> str:
        return self.reason


def _fetch_locked(target: Target, progress: ProgressFn, session) -> Path:
    failures = []
    for url in target.urls:
        failure = _try_url(url, target, progress, session)
        if failure is None:
            return target.path
        failures.append(failure)
        if url != target.urls[-1]:
            progress(_note(target, f"{url} failed ({failure.reason}); trying the next mirror"))
    raise _all_failed(target, failures)


def _try_url(url: str, target: Target, progress: ProgressFn, session) -> _Failure | None:
    """Fetch from one URL, retrying transient failures with backoff; None once the file is in place."""
    delay = BACKOFF
    for attempt in range(1, RETRIES + 1):
        try:
            digest = _transfer(url, target, progress, session)
        except _Failure as failure:
            failure.url = url
            if failure.kind != "network":
                return failure
            if attempt == RETRIES:
                failure.reason += f" ({RETRIES} tries)"
                return failure
            progress(_note(target, f"{failure.reason}; retrying in {delay:.0f} s"))
            time.sleep(delay)
            delay *= 2
            continue
        _install(target, digest)
        return None
    raise AssertionError("unreachable: the last attempt returns")


def _install(target: Target, digest: str) -> None:
    part = _part(target.path)
    os.replace(part, target.path)
    _record_path(part).unlink(missing_ok=True)
    write_stamp(target.path, digest)


def _all_failed(target: Target, failures: list[_Failure]):
    tried = "; ".join(f"{f.url}: {f.reason}" for f in failures) or "no URL is known for this file"
    kinds = {f.kind for f in failures}
    if kinds == {"mismatch"}:
        return ChecksumError(f"Could not download {target.name}; tried: {tried}.", _hint(target, kinds))
    error = DownloadError(f"Could not download {target.name}; tried: {tried}.", _hint(target, kinds))
    error.causes = frozenset(kinds)
    return error


def _hint(target: Target, kinds: set[str]) -> str:
    """Advice that fits what went wrong: connection advice only for connection failures."""
    advice = []
    if "network" in kinds:
        advice.append("Check your connection or proxy (HTTPS_PROXY) and try again: the download resumes.")
    if kinds & {"missing", "web page"}:
        advice.append("A link that answers 'not found' or with a web page has moved or expired.")
    if "mismatch" in kinds:
        advice.append("A server sent a different file than the one expected; it was discarded.")
    advice.append(f"You can also put the file at {target.path} yourself: it is checked before use.")
    return " ".join(advice)


# ---- one transfer ------------------------------------------------------------------------------------


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _record_path(part: Path) -> Path:
    """Beside `<file>.part`: the URL and version its bytes belong to."""
    return part.with_name(part.name + ".json")


def _resumable(part: Path, url: str, target: Target) -> tuple[int, dict]:
    """(bytes to resume from, the part's record): resume only this URL's own earlier bytes."""
    record = _read_json(_record_path(part)) or {}
    have = part.stat().st_size if part.is_file() else 0
    if not have or record.get("url") != url or (target.size is not None and have > target.size):
        return 0, {}
    return have, record


def _request_headers(have: int, record: dict) -> dict:
    if not have:
        return {}
    headers = {"Range": f"bytes={have}-"}
    if record.get("validator"):  # the server sends the whole file instead if it changed since
        headers["If-Range"] = record["validator"]
    return headers


def _validator(resp) -> str | None:
    """A strong ETag, else Last-Modified: what If-Range may name."""
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified")


def _transfer(url: str, target: Target, progress: ProgressFn, session) -> str:
    """Stream `url` into `<file>.part`, resuming this URL's bytes; return the sha256 of the complete, checked file."""
    part = _part(target.path)
    have, record = _resumable(part, url, target)
    try:
        resp = session.get(url, headers=_request_headers(have, record), stream=True, timeout=TIMEOUT)
    except requests.RequestException as err:
        raise _Failure(_reason(err), "network") from err
    with resp:
        if resp.status_code == 416 and have:  # asked past the end: what we have may be all of it
            return _finish(part, target)
        _check_response(resp)
        total = _total(resp)
        if resp.status_code == 206 and (_range_start(resp) != have or record.get("total") not in (None, total)):
            _discard(part)  # another range, or the file behind this URL changed: its old bytes are no use
            raise _Failure("the server sent another range or version of the file; starting over", "network")
        start = have if resp.status_code == 206 else 0  # a 200 is the whole file: start over
        return _stream(resp, part, target, url, start, total, progress)


def _check_response(resp) -> None:
    """A status or a Content-Type that shows this URL will not give the file."""
    if resp.status_code in _MISSING:
        raise _Failure(f"HTTP {resp.status_code}", "missing")
    if resp.status_code >= 400:
        raise _Failure(f"HTTP {resp.status_code}", "network")
    kind = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if kind in WEB_PAGE_TYPES:
        raise _Failure(_web_page(resp, f"({kind})"), "web page")


def _web_page(resp, why: str) -> str:
    moved = f" after a redirect to {resp.url}" if resp.history else ""
    return f"it answered with a web page {why}{moved}, not the file"


def _total(resp) -> int | None:
    """The size of the whole file by this response's headers (Content-Range, else Content-Length)."""
    value = resp.headers.get("Content-Range", "").rpartition("/")[2]
    if resp.status_code == 206 and value.isdigit():
        return int(value)
    length = resp.headers.get("Content-Length", "")
    return int(length) if length.isdigit() and resp.status_code == 200 else None


def _stream(resp, part: Path, target: Target, url: str, have: int, total: int | None, progress) -> str:
    """Append the body to `part` (or start it over when `have` is 0), hashing as it goes."""
    if hasattr(resp.raw, "enforce_content_length"):  # an overstated Content-Length must not cost the last bytes
        resp.raw.enforce_content_length = False
    chunks = resp.iter_content(NET_CHUNK)
    done = have
    try:
        first = next(chunks, b"")
        if not have and looks_like_web_page(first):
            raise _Failure(_web_page(resp, "(HTML)"), "web page")
        h = _hasher(part) if have else hashlib.sha256()
        expected = total or target.size
        with open(part, "ab" if have else "wb") as f:  # truncated before the record names the new URL
            _write_json(_record_path(part), {"url": url, "validator": _validator(resp), "total": total})
            for chunk in itertools.chain([first], chunks):
                f.write(chunk)
                h.update(chunk)
                done += len(chunk)
                progress(Progress("download", done, expected, unit="byte", stage=target.name))
    except requests.RequestException as err:
        raise _Failure(f"connection lost after {done} bytes ({_reason(err)})", "network") from err
    if total is not None and done < total and done != target.size:  # a short body, unless the file is all here
        raise _Failure(f"connection closed after {done} of {total} bytes", "network")
    return _finish(part, target, h)


def _finish(part: Path, target: Target, h=None) -> str:
    """The digest of a complete part file; a wrong size, sha256 or content deletes it (never moved into place)."""
    size = part.stat().st_size
    if target.size is not None and size != target.size:
        if size < target.size:
            raise _Failure(f"connection closed after {size} of {target.size} bytes", "network")
        _discard(part)
        raise _Failure(f"wrong size: {size} bytes, expected {target.size}; the file was discarded", "mismatch")
    digest = (h or _hasher(part)).hexdigest()
    if target.sha256 is not None and digest != target.sha256:
        _discard(part)
        raise _Failure(f"sha256 mismatch: got {digest}, expected {target.sha256}; the file was discarded", "mismatch")
    problem = content_problem(part, target.content) if target.sha256 is None and target.content else None
    if problem:
        _discard(part)
        raise _Failure(f"the file is {problem}; it was discarded", "mismatch")
    return digest


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _record_path(part).unlink(missing_ok=True)


def _range_start(resp) -> int | None:
    value = resp.headers.get("Content-Range", "")  # "bytes 100-999/1000"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _reason(err: Exception) -> str:
    if isinstance(err, requests.Timeout) or "timed out" in str(err).lower():
        return "timed out"
    if isinstance(err, requests.ConnectionError):
        return "connection failed"
    return type(err).__name__
