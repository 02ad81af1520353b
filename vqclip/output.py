"""Output files: names from the prompt and seed, PNG metadata, atomic writes that never clobber, frames."""

import errno
import json
import os
import re
import stat
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from vqclip import __version__
from vqclip.errors import OutputError, UsageError

try:
    import fcntl
except ImportError:  # Windows: a file another process has open cannot be removed there anyway
    fcntl = None


def slug(text: str, max_len: int = 60) -> str:
    """'City during a rainy night' -> 'city-during-a-rainy-night' (a prompt's text, its weights parsed off)."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (words[:max_len].rstrip("-")) or "image"


def default_name(stem: str, seed: int, suffix: str = ".png") -> str:
    """PROMPT-SLUG_sSEED.png from a request's `name_stem` (vqclip.pipeline.validate.Request)."""
    return f"{slug(stem)}_s{seed}{suffix}"


@dataclass(frozen=True)
class OutputOptions:
    """Where a run's files go: the PNG, its progress preview and partial result, and the frames."""

    path: Path  # the final PNG
    overwrite: bool = False  # replace an existing file instead of adding -1, -2, ...
    save_every: int = 0  # keep `progress_path` updated every N steps (0: off)
    frames: object = None  # a folder (str or Path) for numbered PNGs, or a binary stream (the CLI's stdout)
    video: str | None = None  # an ffmpeg output file for the frames

    @property
    def progress_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".progress.png")

    @property
    def partial_path(self) -> Path:
        """Where the latest image of an interrupted run goes: never under the final name, so a resumed
        batch can tell it from a finished image."""
        return self.path.with_name(self.path.stem + ".partial.png")


def output_path(output: str | None, name: str) -> Path:
    """-o as given (a file, or a folder for the default `name`), or `name` in the current folder."""
    if output is None:
        return Path(name)
    path = Path(output).expanduser()
    if path.is_dir() or output.endswith(("/", os.sep)):
        return path / name
    return path


STDOUT_NAMES = ("-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")  # -o values that mean standard output


def to_stdout(output: str | None) -> bool:
    """Whether -o asks for the PNG itself on standard output (`-o -`, `-o /dev/stdout`)."""
    return output in STDOUT_NAMES


def check_output_file(path: Path, stdout_is_terminal: bool = False, piped: bool = False) -> None:
    """-o names a place for a new file: not a device, FIFO or socket, and nowhere in /dev (where `-1`, `-2`, ...
    would create files); for standard output (`piped`), not a terminal."""
    hint = "Use -o - to get the PNG on standard output (e.g. `vqclip ... -o - | convert - small.jpg`)."
    if piped:
        if stdout_is_terminal:
            raise UsageError(
                "-o - writes the PNG to standard output, which is a terminal here.",
                "Pipe it (`| convert - small.jpg`) or redirect it (`> out.png`), or give a file name.",
            )
        return
    if path.exists() and not path.is_file() and not path.is_dir():
        raise UsageError(f"-o {path} is a device or special file, not a file vqclip can write.", hint)
    parent = path.parent.resolve()
    if parent == Path("/dev") or Path("/dev") in parent.parents:
        raise UsageError(f"-o {path} is in /dev, where vqclip creates no files.", hint)


def stdout_folder() -> Path:
    """Where the PNG of `-o -` is written before it is sent to standard output (and where an interrupted
    run's latest image is kept, named in the message)."""
    user = f"-{os.getuid()}" if hasattr(os, "getuid") else ""
    return Path(tempfile.gettempdir()) / f"vqclip-stdout{user}"


def send_to_stdout(path: Path) -> None:
    """The PNG's bytes on standard output, then its file removed (kept if the reader went away first)."""
    import sys

    data = Path(path).read_bytes()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    Path(path).unlink()


def png_info(parameters: str, record: dict) -> PngImagePlugin.PngInfo:
    """`parameters` (the common text-to-image convention) and `vqclip` (every setting, as JSON)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    info.add_text("vqclip", json.dumps(record, sort_keys=True))
    info.add_text("Software", f"vqclip {__version__}")
    return info


TEMP_PREFIX = ".vqclip-"
# A temporary file that cannot be locked (a file system without locks) is judged by its age instead: far
# beyond any write of a PNG, and beyond any but the longest video.
STALE_AGE = 24 * 3600
_HELD: set[str] = set()  # this process's own temporary files, which it never judges


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _lock(fd: int) -> bool | None:
    """Try to lock an open file for this writer: True (locked), False (another writer holds it), or None
    when the file system has no locks. flock is on the open file, so it holds across PID namespaces and
    containers, and over NFS (Linux emulates it with the server's byte-range locks) across machines."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF):
            return None
        raise


def _still_named(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False


def new_temp(folder: Path, suffix: str) -> tuple[int, Path]:
    """A temporary file in `folder` (`.vqclip-PID-RANDOM...`), open and locked for as long as this process
    writes it: other writers (another container, another machine on the same file system) see it is alive
    whatever its PID means to them. It has the permissions of the user's umask, like any file the user
    creates (mkstemp's are 0600), and keeps them when it takes its final name. Close it with `release`."""
    while True:
        fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=suffix, dir=folder)
        path = Path(name)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # ffmpeg, which writes a video over it, keeps the mode too
            locked = _lock(fd)
            # a writer's cleanup may have taken the fresh, not yet locked file for a dead one's: take another
            if locked is not False and _still_named(fd, path):
                _HELD.add(str(path))
                return fd, path
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def release(fd: int, path: Path) -> None:
    """Remove a temporary file (if it is still there) and drop its lock."""
    try:
        path.unlink(missing_ok=True)
    finally:
        _HELD.discard(str(path))
        os.close(fd)


def remove_stale_temps(folder: Path) -> None:
    """Remove the temporary files of writers that died (SIGKILL mid-write, a node lost): those that nobody
    holds locked, or, on a file system without locks, those older than STALE_AGE. A live writer's file is
    never touched, whichever PID namespace or machine it runs in."""
    for tmp in Path(folder).glob(f"{TEMP_PREFIX}*"):  # PNGs, and videos that ffmpeg was writing
        if str(tmp) not in _HELD:
            with suppress(OSError):  # gone already, another user's, not ours to judge: left alone
                _remove_if_stale(tmp)


def _remove_if_stale(tmp: Path) -> None:
    st = os.lstat(tmp)
    if not stat.S_ISREG(st.st_mode):
        return
    fd = os.open(tmp, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))  # a write lock needs a file open for writing
    try:
        locked = _lock(fd)
        if locked is None and time.time() - st.st_mtime < STALE_AGE:
            return
        if locked is not False and _still_named(fd, tmp):
            tmp.unlink()
    finally:
        os.close(fd)


def probe_writable(folder: Path) -> str | None:
    """Create and remove a temporary file in an existing folder: None when that works, else why not. Asking
    the file system beats `os.access`, which says yes for root in /proc, a read-only mount's permission bits
    and the like, where the first real write fails."""
    try:
        fd, path = new_temp(folder, ".probe")
    except OSError as err:
        return err.strerror or str(err)
    release(fd, path)
    return None


def save_png(image: Image.Image, path: str | Path, info=None, overwrite: bool = False) -> Path:
    """Write a PNG atomically. Without `overwrite` an existing file is kept and '-1', '-2', ... is added.

    The image is written to a temporary file in the same folder (locked while it is written, so that other
    writers on the folder leave it alone), flushed to disk, and then linked into place: the final name only
    ever holds a complete image, a reader never sees a half-written file and two processes never take the
    same name. The file gets the permissions of the user's umask, like any file the user creates.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = new_temp(path.parent, ".png")
    try:
        with open(fd, "wb", closefd=False) as f:  # the lock lives as long as `fd`
            image.save(f, format="PNG", pnginfo=info)
        os.fsync(fd)  # complete on disk (and on an NFS server) before it takes the name
        return place(tmp, path, overwrite)
    finally:
        release(fd, tmp)


_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def place(tmp: str | Path, path: Path, overwrite: bool) -> Path:
    """Move a finished temporary file to `path`, or without `overwrite` to the first free name of
    path, path-1, path-2, ...; returns where it went. Two processes never take the same name."""
    if overwrite:
        os.replace(tmp, path)
        return path
    for n in range(0, 10_000):
        candidate = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        try:
            os.link(tmp, candidate)
            os.unlink(tmp)
            return candidate
        except FileExistsError:
            continue
        except OSError as err:
            if err.errno not in _NO_LINKS:  # the temporary file is gone, the disk is full, ...: not a name
                raise
            # no hard links here (some network or FAT file systems): reserve the name, then replace it
            try:
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            try:
                os.replace(tmp, candidate)
            except BaseException:
                candidate.unlink(missing_ok=True)  # never leave the empty reservation under the final name
                raise
            return candidate
    raise UsageError(f"Too many files named like {path}.")


def existing_frames(folder: Path) -> list[Path]:
    return sorted(Path(folder).expanduser().glob("frame-[0-9]*.png"))


class VideoPipeBroken(BrokenPipeError):
    """ffmpeg (--video) stopped reading the frames."""


class FrameSink:
    """Frames as PNGs: a binary stream (stdout, for `ffmpeg -f image2pipe -i -`) or numbered files in a
    folder, and/or the stdin of an ffmpeg process (--video): with both, each frame goes to both. ffmpeg
    writes to a temporary file beside the video, which takes the video's name (or the first free one, as
    the PNG does) only once it is complete."""

    def __init__(self, target, video: str | None = None, fps: int = 30, overwrite: bool = False):
        self.count = 0
        self.dir = None
        self.stream = None
        self.proc = None
        self.video, self.overwrite = (Path(video).expanduser() if video is not None else None), overwrite
        if self.video is not None:
            import subprocess

            from vqclip.ffmpeg import ffmpeg_exe

            self.video.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.video.parent)
            # held (locked) by this process while ffmpeg writes it (ffmpeg -y truncates the same file)
            self.tmp_fd, self.tmp = new_temp(self.video.parent, f"-{self.video.name}")
            cmd = [
                ffmpeg_exe() or "ffmpeg",  # its presence is checked by vqclip.pipeline.validate.check_video
                "-loglevel",
                "error",
                "-y",
                "-f",
                "image2pipe",
                "-framerate",
                str(fps),
                "-i",
                "-",
                "-pix_fmt",
                "yuv420p",
                "-c:v",
                "libx264",
                str(self.tmp),
            ]
            try:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
            except BaseException:
                release(self.tmp_fd, self.tmp)
                raise
        if hasattr(target, "write"):
            self.stream = target
        elif target is not None:
            self.dir = Path(target).expanduser()
            self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, image: Image.Image) -> None:
        self.count += 1
        if self.dir is not None:
            save_png(image, self.dir / f"frame-{self.count:05d}.png", overwrite=True)
        if self.stream is not None:
            image.save(self.stream, format="PNG")
            self.stream.flush()
        if self.proc is not None:
            try:
                image.save(self.proc.stdin, format="PNG")
                self.proc.stdin.flush()
            except BrokenPipeError as err:
                raise VideoPipeBroken(*err.args) from err

    def close(self, abort: bool = False) -> Path | None:
        """Finish the video and return where it went; `abort` (an interrupted run) discards it."""
        if self.proc is None:
            return None
        try:
            if abort:  # nothing of it is kept: no need to let ffmpeg encode what it has buffered
                self.proc.kill()
            try:
                self.proc.stdin.close()
            except BrokenPipeError:  # ffmpeg already gone
                pass
            code = self.proc.wait()
            if abort:
                return None
            if code != 0:
                raise OutputError(f"ffmpeg failed (exit {code}) while writing the video {self.video}.")
            return place(self.tmp, self.video, self.overwrite)
        finally:
            release(self.tmp_fd, self.tmp)
