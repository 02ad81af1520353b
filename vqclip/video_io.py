"""The frames of `vqclip restyle`'s input and the video it writes. The input is a video file (read through
imageio-ffmpeg, whose wheel ships a static ffmpeg), a folder of images or a glob; the video is encoded by
the same ffmpeg (vqclip.ffmpeg: the system's, else imageio-ffmpeg's) at the input's frame rate, yuv420p,
with the input's audio copied, not re-encoded. Nothing here imports torch."""

import glob
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vqclip.errors import OutputError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_FPS = 30.0  # folders and globs carry no frame rate (--fps sets one); zoom videos use 30 too


@dataclass(frozen=True)
class Source:
    """A restyle's input, probed once before any model loads: its frames, count, size, rate and audio."""

    spec: str  # INPUT as given
    kind: str  # "video", "folder" or "glob"
    count: int  # frames
    size: tuple[int, int]  # the first frame's (width, height)
    fps: float | None  # a video's frame rate (None for images)
    audio: str | None = None  # a video's audio codec (None: no audio)
    path: Path | None = None  # the video file, resolved
    files: tuple[Path, ...] = ()  # a folder's or glob's images, resolved, in natural order
    sha256: str | None = None  # a video file's

    def frames(self, start: int = 0) -> Iterator[tuple[Image.Image, str]]:
        """(RGB image, what it is: an image's path, or `VIDEO#N`) for each frame from index `start` on."""
        if self.kind != "video":
            from vqclip.images import read_image

            for path in self.files[start:]:
                yield read_image(path, "Frame")[0], str(path)
            return
        reader = _reader(self.path)
        try:
            meta = next(reader)
            for k, raw in enumerate(reader):
                if k >= start:
                    yield Image.frombytes("RGB", meta["size"], raw), f"{self.path}#{k + 1}"
        finally:
            reader.close()

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else self.spec


def natural_key(path: Path) -> list:
    """frame-2.png before frame-10.png: digits compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def open_source(spec: str) -> Source:
    """Probe INPUT: a video file, a folder of images, or a glob. Missing, unreadable or without frames: one
    UsageError naming it (the CLI's exit 2), before any model loads."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise UsageError(
                f"The folder {spec} has no frames (no {', '.join(IMAGE_SUFFIXES)} files in it).",
                "Give a folder of images, a glob such as 'frames/*.png', or a video file.",
            )
        return _images(spec, "folder", files)
    if path.is_file():
        return _video(spec, path)
    if glob.has_magic(spec):
        files = [Path(p) for p in glob.glob(os.path.expanduser(spec)) if Path(p).is_file()]
        if not files:
            raise UsageError(f"The glob {spec!r} matches no files, so there are no frames to restyle.")
        return _images(spec, "glob", files)
    raise UsageError(f"The input {spec} does not exist (give a video file, a folder of images or a glob).")


def _images(spec: str, kind: str, files: list[Path]) -> Source:
    """Every image is checked from its header (cheap); the first is read whole for the size."""
    files = sorted((p.resolve() for p in files), key=natural_key)
    for p in files:
        try:
            with Image.open(p) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise UsageError(f"The frame {p} is not an image that can be read ({err}).") from None
    from vqclip.images import read_image

    first = read_image(files[0], "Frame")[0]
    return Source(spec, kind, len(files), first.size, None, files=tuple(files))


def _reader(path: Path):
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UsageError(
            "Reading a video needs imageio-ffmpeg (a dependency of vqclip): pip install imageio-ffmpeg.",
            "Or give a folder of frames (ffmpeg -i in.mp4 frames/%05d.png).",
        ) from None
    return imageio_ffmpeg.read_frames(str(path))


def _video(spec: str, path: Path) -> Source:
    """A video file: its header (size, rate, audio), its first frame and its frame count, read by ffmpeg."""
    path = path.resolve()
    reader = _reader(path)
    try:
        meta = next(reader)
        next(reader)  # a first frame, or StopIteration
    except StopIteration:
        raise UsageError(f"The video {spec} has no frames.") from None
    except (OSError, RuntimeError, ValueError, KeyError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"The input {spec} is not a video ffmpeg can read ({first[:120]}).") from None
    finally:
        reader.close()
    count = _count_frames(path)
    if not count:
        raise UsageError(f"The video {spec} has no frames.")
    fps = float(meta.get("fps") or 0) or None
    return Source(
        spec, "video", count, tuple(meta["size"]), fps, meta.get("audio_codec"), path=path, sha256=_sha256(path)
    )


def _count_frames(path: Path) -> int:
    import imageio_ffmpeg

    try:
        return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0] or 0)
    except RuntimeError as err:
        raise UsageError(f"The video {path} cannot be read to its end by ffmpeg ({str(err)[:120]}).") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_video(
    frames: list[Path],
    video: Path,
    fps: float,
    *,
    audio_from: Path | None = None,
    audio_codec: str = "copy",
    comment: str = "",
    overwrite: bool = False,
) -> Path:
    """Encode PNG frames into `video` (H.264, yuv420p) at `fps`, with the audio of `audio_from` (copied
    unless `audio_codec` names an encoder) and `comment` in the container's metadata. ffmpeg writes a locked temporary file beside the video, which
    takes the video's name (or the first free `-1`, `-2`, ... unless `overwrite`) only once it is complete.
    Returns where it went."""
    from vqclip.ffmpeg import ffmpeg_exe
    from vqclip.output import new_temp, place, release, remove_stale_temps

    exe = ffmpeg_exe()
    if exe is None:
        raise OutputError("--video needs ffmpeg, which is not installed (neither on the PATH nor imageio-ffmpeg's).")
    with Image.open(frames[0]) as first:
        width, height = first.size
    rate = Fraction(fps).limit_denominator(1001)
    video = Path(video).expanduser()
    video.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(video.parent)
    fd, tmp = new_temp(video.parent, f"-{video.name}")
    try:
        cmd = [exe, "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}"]
        cmd += ["-r", str(rate), "-i", "-"]
        if audio_from is not None:  # copied as it is: not re-encoded
            cmd += ["-i", str(audio_from), "-map", "0:v:0", "-map", "1:a:0", "-c:a", audio_codec]
        cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-metadata", f"comment={comment}", str(tmp)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for path in frames:
                with Image.open(path) as im:
                    proc.stdin.write(im.convert("RGB").tobytes())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg stopped: its exit code and message say why
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        errors = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            why = errors.splitlines()[-1] if errors else f"exit {proc.returncode}"
            raise OutputError(f"ffmpeg could not write the video {video} ({why[:200]}).")
        return place(tmp, video, overwrite)
    finally:
        release(fd, tmp)


def video_comment(path: Path) -> str:
    """The `comment` metadata of a video (what `vqclip restyle` writes there: its command), "" if none."""
    from vqclip.ffmpeg import ffmpeg_exe

    out = subprocess.run(
        [ffmpeg_exe() or "ffmpeg", "-i", str(path), "-f", "ffmetadata", "-"], capture_output=True, check=False
    ).stdout.decode(errors="replace")
    for line in out.splitlines():
        if line.lower().startswith("comment="):
            return re.sub(r"\\(.)", r"\1", line.split("=", 1)[1])  # ffmetadata escapes = ; # and \\ with a backslash
    return ""
