"""The cache folder and the files in it: where they go, the sha256 stamp beside a verified file, checking a
file in place, the lock that makes a second process wait, and one message for a folder that cannot be written.

After a verified download `<file>.sha256` records the digest (with the size and mtime it was made for), so
later runs trust the file without re-hashing it and `vqclip models verify` can re-check it.
"""

import errno
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from vqclip.errors import CacheError
from vqclip.weights.filetypes import content_problem

try:
    import fcntl
except ImportError:  # Windows: filelock's lock, which removes its file on release there
    fcntl = None

CHUNK = 1 << 20  # bytes per read when hashing files on disk


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


class Escape(Exception):
    """A cache path that would lead out of its model's cache folder; `why` says how (for the caller's message)."""

    def __init__(self, path: Path, why: str):
        super().__init__(why)
        self.path, self.why = path, why


def plain_name(name: str) -> str | None:
    """Why `name` is not a plain file or folder name inside a cache folder (absolute, `..`, a separator), or None."""
    if not name or name in (".", ".."):
        return "it is not a file name"
    if os.path.isabs(name) or name.startswith("~"):
        return "it is an absolute path"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "it climbs out with `..`"
    if len(parts) > 1:
        return "it names a subfolder"
    return None


def confine(path: Path) -> Path:
    """`path` (computed as a file in a model's cache folder) if it and the files vqclip keeps beside it (stamp,
    `.part`, lock) stay inside that folder, links included; else Escape. The cache folder itself may be a link
    (to another disk); a link below it that leads elsewhere is refused, so that nothing outside is read,
    written or removed."""
    root = cache_dir()
    try:
        relative = Path(os.path.normpath(path)).relative_to(os.path.normpath(root))
    except ValueError:
        raise Escape(path, f"it is outside the cache folder {root}") from None
    if ".." in Path(path).parts or not relative.parts or ".." in relative.parts:
        raise Escape(path, f"it is outside the cache folder {root}")
    real_root = root.resolve()
    folder = real_root / relative.parent
    beside = (stamp_path(path), *(path.with_name(path.name + end) for end in (".part", ".part.json", ".lock")))
    for file in (path, *beside):
        real = (real_root / file.relative_to(root)).resolve()
        if not real.is_relative_to(folder):
            raise Escape(path, f"{file} is a link that leads out of the cache folder (to {real})")
    return path


def hasher(path: Path):
    """A sha256 object fed with the file's bytes, read in chunks (never the whole file at once)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h


def sha256_file(path: Path) -> str:
    return hasher(path).hexdigest()


# ---- the stamp beside a verified file ----------------------------------------------------------


def stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_json(path: Path, record: dict) -> None:
    """Atomically: a unique temporary file beside `path`, then a rename (no reader sees half a record)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_stamp(path: Path, digest: str) -> None:
    st = path.stat()
    write_json(stamp_path(path), {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns})


def read_stamp(path: Path) -> dict | None:
    return read_json(stamp_path(path))


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
class FileTarget:
    """What to download and how to check it."""

    path: Path
    urls: tuple[str, ...]
    size: int | None = None
    sha256: str | None = None
    label: str = ""  # for messages: "vqgan_imagenet_f16_16384 (model.ckpt)"
    fetch_command: str = ""  # for messages: the command that downloads it
    content: str | None = (
        None  # without a sha256: "checkpoint", "weights" or "taming-config" (vqclip.weights.filetypes)
    )

    @property
    def name(self) -> str:
        return self.label or self.path.name


def check_file(target: FileTarget) -> str | None:
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


def remove_cached(target: FileTarget) -> None:
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
    except OSError as err:
        raise _cache_error(folder, err) from err


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def _cache_error(folder: Path, err: OSError) -> CacheError:
    hint = "Set VQCLIP_CACHE to a folder you can write to."
    why = (err.strerror or str(err)).lower()
    if err.errno in _DISK_FULL:
        return CacheError(
            f"The disk holding the cache folder {folder} is full.",
            "Free some space (the download resumes where it stopped), or set VQCLIP_CACHE to another disk.",
        )
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), err.filename)
        return CacheError(f"The cache folder {folder} cannot be made: {blocker} is a file, not a folder.", hint)
    if err.errno in _NOT_WRITABLE:
        return CacheError(f"The cache folder {folder} is not writable ({why}).", hint)
    return CacheError(f"Cannot write to the cache folder {folder} ({why}).", hint)


@contextmanager
def download_lock(path: Path, on_wait) -> Iterator[None]:
    """Hold `<file>.lock` (waiting for another process's transfer, after calling `on_wait`); removed on release.

    The file is unlinked while still locked, so a waiter that then gets the lock holds an unlinked file;
    it notices and locks the path afresh. Two processes therefore never hold the same path at once.
    """
    lock_path = path.with_name(path.name + ".lock")
    if fcntl is None:
        yield from _filelock(lock_path, on_wait)
        return
    fd = _lock(lock_path, on_wait)
    try:
        yield
    finally:
        with suppress(FileNotFoundError):
            lock_path.unlink()
        os.close(fd)


def _filelock(lock_path: Path, on_wait) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        on_wait()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


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
