"""Verified, resumable, atomic, locked downloads into the cache.

A file is streamed to `<file>.part` while its sha256 is computed, checked against the expected size and
sha256 (or, where none is published, for being what it claims: `vqclip.weights.filetypes`), and only then renamed
into place and stamped (`vqclip.weights.cache`).

Real hosts misbehave, and each way is handled here:
- `<file>.part.json` records which URL, and which version of it (ETag or Last-Modified), the partial bytes
  came from. A transfer resumes (Range + If-Range) only from its own URL's bytes and starts over otherwise,
  so a mirror's bytes are never appended to another's.
- A body that is a web page (a dead host's "link does not exist" page with status 200, a login page after a
  redirect) fails that mirror at once, before a byte is written.
- A Content-Length larger than the body keeps every byte received and resumes from there.
- A file found at the final path (copied there by hand, or in a read-only shared cache) is checked once and
  used, online or offline.
- `<file>.lock` makes a second process wait for the first one's transfer (`vqclip.weights.cache.download_lock`).

Nothing here prints: progress goes to a `progress` callable as
`vqclip.events.Progress(job="download", unit="byte", stage=<file label>, done, total)`, and a note for the
user (a retry, the next mirror, waiting for another process) rides in its `extra["note"]`.
"""

import hashlib
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from vqclip.errors import ChecksumError, DownloadError, OfflineError
from vqclip.events import Progress, ProgressFn, ignore
from vqclip.weights.cache import (
    FileTarget,
    cache_errors,
    check_file,
    download_lock,
    hasher,
    is_verified,
    read_json,
    write_json,
    write_stamp,
)
from vqclip.weights.filetypes import WEB_PAGE_TYPES, content_problem, looks_like_web_page

__all__ = ["FileTarget", "fetch", "offline_mode", "offline_reason"]

NET_CHUNK = 1 << 16  # bytes per network read
RETRIES = 3  # attempts per URL for transient failures (connection errors, timeouts, 5xx, short bodies)
BACKOFF = 1.0  # seconds before the second attempt; doubles after each further failure
TIMEOUT = (10, 60)  # connect, read (seconds)
_MISSING = {400, 401, 403, 404, 410, 451}  # statuses that retrying the same URL will not change
_TRUE = ("1", "true", "yes", "on")


def offline_reason(offline: bool | None = None) -> str | None:
    """What switched the network off (`--offline`, `VQCLIP_OFFLINE=1`, `HF_HUB_OFFLINE=1`), or None."""
    if offline is not None:
        return "--offline" if offline else None
    for var in ("VQCLIP_OFFLINE", "HF_HUB_OFFLINE"):
        value = os.environ.get(var, "")
        if value.lower() in _TRUE:
            return f"{var}={value}"
    return None


def online_again(reason: str) -> str:
    """How to turn the network back on, for a hint: "without --offline", "with HF_HUB_OFFLINE unset"."""
    return "without --offline" if reason == "--offline" else f"with {reason.partition('=')[0]} unset"


def offline_mode(offline: bool | None = None) -> bool:
    """True when the network must not be used: --offline, VQCLIP_OFFLINE=1 or HF_HUB_OFFLINE=1."""
    return offline_reason(offline) is not None


# ---- fetch ---------------------------------------------------------------------------------------


def fetch(target: FileTarget, offline: bool | None = None, progress: ProgressFn = ignore, session=None) -> Path:
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
        with download_lock(path, lambda: progress(_note(target, "waiting for another vqclip process to fetch it"))):
            if is_verified(path, target.sha256):  # the other process finished it
                return path
            return _fetch_locked(target, progress, session or requests.Session())


def _offline_error(target: FileTarget, reason: str, problem: str | None) -> OfflineError:
    where = target.urls[0] if target.urls else "no known URL"
    how = f"Run `{target.fetch_command}`" if target.fetch_command else "Download it"
    state = f"in the cache is not usable ({problem})" if problem else "is not in the cache"
    return OfflineError(
        f"{target.name} {state} ({target.path}) and the network is off ({reason}).",
        f"{how} {online_again(reason)} (it comes from {where}), or copy the file to {target.path}.",
    )


def _note(target: FileTarget, text: str) -> Progress:
    return Progress("download", 0, target.size, unit="byte", stage=target.name, extra={"note": text})


@dataclass
class _Failure(Exception):
    """Why one URL did not give the file. kind: network (worth retrying), missing, web page or mismatch."""

    reason: str
    kind: str
    url: str = ""

    def __str__(self) -> str:
        return self.reason


def _fetch_locked(target: FileTarget, progress: ProgressFn, session) -> Path:
    failures = []
    for url in target.urls:
        failure = _try_url(url, target, progress, session)
        if failure is None:
            return target.path
        failures.append(failure)
        if url != target.urls[-1]:
            progress(_note(target, f"{url} failed ({failure.reason}); trying the next mirror"))
    raise _all_failed(target, failures)


def _try_url(url: str, target: FileTarget, progress: ProgressFn, session) -> _Failure | None:
    """Fetch from one URL, retrying transient failures with backoff; None once the file is in place."""
    delay = BACKOFF
    for attempt in range(1, RETRIES + 1):
        try:
            _install(target, _transfer(url, target, progress, session))
            return None
        except _Failure as err:
            failure = err
        failure.url = url
        if failure.kind != "network":
            return failure
        if attempt < RETRIES:
            progress(_note(target, f"{failure.reason}; retrying in {delay:.0f} s"))
            time.sleep(delay)
            delay *= 2
    failure.reason += f" ({RETRIES} tries)"
    return failure


def _install(target: FileTarget, digest: str) -> None:
    part = _part(target.path)
    os.replace(part, target.path)
    _record_path(part).unlink(missing_ok=True)
    write_stamp(target.path, digest)


def _all_failed(target: FileTarget, failures: list[_Failure]) -> DownloadError:
    tried = "; ".join(f"{f.url}: {f.reason}" for f in failures) or "no URL is known for this file"
    kinds = {f.kind for f in failures}
    cls = ChecksumError if kinds == {"mismatch"} else DownloadError
    error = cls(f"Could not download {target.name}; tried: {tried}.", _hint(target, kinds))
    error.causes = frozenset(kinds)
    return error


def _hint(target: FileTarget, kinds: set[str]) -> str:
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


def _resumable(part: Path, url: str, target: FileTarget) -> tuple[int, dict]:
    """(bytes to resume from, the part's record): resume only this URL's own earlier bytes."""
    record = read_json(_record_path(part)) or {}
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


def _transfer(url: str, target: FileTarget, progress: ProgressFn, session) -> str:
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


def _stream(resp, part: Path, target: FileTarget, url: str, have: int, total: int | None, progress) -> str:
    """Append the body to `part` (or start it over when `have` is 0), hashing as it goes."""
    if hasattr(resp.raw, "enforce_content_length"):  # an overstated Content-Length must not cost the last bytes
        resp.raw.enforce_content_length = False
    chunks = resp.iter_content(NET_CHUNK)
    done = have
    try:
        first = next(chunks, b"")
        if not have and looks_like_web_page(first):
            raise _Failure(_web_page(resp, "(HTML)"), "web page")
        h = hasher(part) if have else hashlib.sha256()
        expected = total or target.size
        with open(part, "ab" if have else "wb") as f:  # truncated before the record names the new URL
            write_json(_record_path(part), {"url": url, "validator": _validator(resp), "total": total})
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


def _finish(part: Path, target: FileTarget, h=None) -> str:
    """The digest of a complete part file; a wrong size, sha256 or content deletes it (never moved into place)."""
    size = part.stat().st_size
    if target.size is not None and size != target.size:
        if size < target.size:
            raise _Failure(f"connection closed after {size} of {target.size} bytes", "network")
        _discard(part)
        raise _Failure(f"wrong size: {size} bytes, expected {target.size}; the file was discarded", "mismatch")
    digest = (h or hasher(part)).hexdigest()
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
