"""Output files: names from the prompt and seed, PNG metadata, atomic writes that never clobber, frames."""

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from vqclip import __version__
from vqclip.errors import OutputError, UsageError


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


def png_info(parameters: str, record: dict) -> PngImagePlugin.PngInfo:
    """`parameters` (the common text-to-image convention) and `vqclip` (every setting, as JSON)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    info.add_text("vqclip", json.dumps(record, sort_keys=True))
    info.add_text("Software", f"vqclip {__version__}")
    return info


TEMP_PREFIX = ".vqclip-"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_stale_temps(folder: Path) -> None:
    """Temporary files of writers that died (SIGKILL mid-write): their names carry the writer's pid."""
    for tmp in folder.glob(f"{TEMP_PREFIX}*-*"):  # PNGs, and videos that ffmpeg was writing
        pid = tmp.name[len(TEMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_png(image: Image.Image, path: str | Path, info=None, overwrite: bool = False) -> Path:
    """Write a PNG atomically. Without `overwrite` an existing file is kept and '-1', '-2', ... is added.

    The image is written to a temporary file in the same folder and then linked into place, so a reader
    never sees a half-written file and two processes never take the same name. The file gets the
    permissions of the user's umask, like any file the user creates.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=".png", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        return place(tmp, path, overwrite)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
        except OSError:  # no hard links here (some network or FAT file systems): reserve, then replace
            try:
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            os.replace(tmp, candidate)
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

            self.tmp = self.video.with_name(f"{TEMP_PREFIX}{os.getpid()}-{self.video.name}")
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_temps(self.tmp.parent)
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
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
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
            self.tmp.unlink(missing_ok=True)
