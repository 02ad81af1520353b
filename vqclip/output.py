"""Output files: names from the prompt and seed, PNG metadata, atomic writes that never clobber."""

import json
import os
import re
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin

from vqclip import __version__
from vqclip.errors import UsageError


def slug(text: str, max_len: int = 60) -> str:
    """'City during a rainy night:1.5' -> 'city-during-a-rainy-night'."""
    from vqclip.prompts import parse_prompt

    first = parse_prompt(re.split(r"[|^]", text)[0]).text
    words = re.sub(r"[^a-z0-9]+", "-", first.lower()).strip("-")
    return (words[:max_len].rstrip("-")) or "image"


def default_name(prompt: str, seed: int, suffix: str = ".png") -> str:
    return f"{slug(prompt)}_s{seed}{suffix}"


def check_writable(directory: Path) -> None:
    """Fail early (before any model loads) when the output folder cannot be created or written."""
    directory = directory.expanduser()
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"Cannot write to {directory}: {probe} is not a writable folder.")


def png_info(parameters: str, record: dict) -> PngImagePlugin.PngInfo:
    """`parameters` (the common text-to-image convention) and `vqclip` (every setting, as JSON)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    info.add_text("vqclip", json.dumps(record, sort_keys=True))
    info.add_text("Software", f"vqclip {__version__}")
    return info


def read_record(path: str | Path) -> dict:
    """The `vqclip` JSON chunk of a PNG written by vqclip."""
    from vqclip.images import open_image

    open_image(path)  # one clear error for a missing or unreadable file
    with Image.open(path) as im:
        text = im.text.get("vqclip") if hasattr(im, "text") else None
    if not text:
        raise UsageError(f"{path} has no vqclip metadata (it was not written by vqclip, or it was re-saved).")
    return json.loads(text)


def save_png(image: Image.Image, path: str | Path, info=None, overwrite: bool = False) -> Path:
    """Write a PNG atomically. Without `overwrite` an existing file is kept and '-1', '-2', ... is added.

    The image is written to a temporary file in the same folder and then linked into place, so a reader
    never sees a half-written file and two processes never take the same name.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".vqclip-", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        if overwrite:
            os.replace(tmp, path)
            return path
        for n in range(0, 10_000):
            candidate = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
            try:
                os.link(tmp, candidate)
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
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class FrameSink:
    """Frames as PNGs: a stream on stdout ('-', for `ffmpeg -f image2pipe -i -`), numbered files in a
    folder, or the stdin of an ffmpeg process (--video)."""

    def __init__(self, target: str, video: str | None = None, fps: int = 30):
        self.count = 0
        self.dir = None
        self.proc = None
        if video is not None:
            import shutil
            import subprocess

            ffmpeg = shutil.which("ffmpeg")
            if ffmpeg is None:
                raise UsageError(
                    "--video needs ffmpeg, which is not installed.",
                    "Install ffmpeg, or pipe the frames yourself: vqclip ... --frames - | ffmpeg -f image2pipe -i - out.mp4",
                )
            cmd = [
                ffmpeg,
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
                video,
            ]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
            self.stream = self.proc.stdin
        elif target == "-":
            import sys

            self.stream = sys.stdout.buffer
        else:
            self.dir = Path(target).expanduser()
            self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, image: Image.Image) -> None:
        self.count += 1
        if self.dir is not None:
            save_png(image, self.dir / f"frame-{self.count:05d}.png", overwrite=True)
            return
        image.save(self.stream, format="PNG")
        self.stream.flush()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            if self.proc.wait() != 0:
                raise UsageError(f"ffmpeg failed (exit {self.proc.returncode}) while writing the video.")
