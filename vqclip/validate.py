"""Step 1 of a generation: every check that needs no model, done once, before anything heavy.

The CLI and the API both call `validate(cfg)`; nothing here imports torch. Values that a config can
check by itself (ranges, finite floats, choices) are checked when the GenerationConfig is built; this
module checks what needs the file system or the registry: prompt text, input images, model names, and
the places outputs go.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vqclip.config import GenerationConfig, default
from vqclip.errors import UsageError
from vqclip.prompts import parse_prompt, parse_story

MAX_IMAGE_PIXELS = 64_000_000  # an input image larger than this (e.g. 8000x8000) is refused before decoding


def check_text(text: str, what: str = "The prompt") -> None:
    """Text that can be stored in the PNG metadata: surrogates from undecodable shell bytes cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            f"{what} contains bytes that are not UTF-8 text ({text.encode('utf-8', 'backslashreplace').decode()[:80]}).",
            "Use UTF-8 text (check the terminal's or the file's encoding).",
        ) from None


def check_image(path: str, what: str = "Image") -> None:
    """An existing, decodable image within MAX_IMAGE_PIXELS (checked from the header before decoding)."""
    from PIL import Image, UnidentifiedImageError

    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"{what} {path} does not exist.")
    too_large = UsageError(
        f"{what} {path} has more than {MAX_IMAGE_PIXELS // 1_000_000} megapixels, the limit for input images.",
        "Scale it down first (vqclip resizes every input to the canvas anyway).",
    )
    try:
        with Image.open(file) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise too_large
            im.load()
    except Image.DecompressionBombError:
        raise too_large from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UsageError(f"{what} {path} is not an image that can be read ({err}).") from None


def check_prompts(cfg: GenerationConfig) -> None:
    """Text prompts with text in them, image prompts that are images, noise prompts that are seeds."""
    check_text(cfg.prompt)
    if cfg.prompt.strip() and not parse_story(cfg.prompt):
        raise UsageError(
            f"The prompt {cfg.prompt!r} has no text, only separators or weights.",
            'Write it as "text:weight:stop", with "|" between prompts and "^" between story phases.',
        )
    check_story(cfg)
    for item in cfg.image_prompts:
        check_image(parse_prompt(item).text, "Image prompt")
    for item in cfg.noise_prompts:
        seed = parse_prompt(item).text
        if not (seed.isascii() and seed.isdigit()) or int(seed) >= 2**63:
            raise UsageError(f"Noise prompt {item!r} should be SEED[:weight], a seed below 2**63, e.g. 42:0.5.")
    if cfg.init_image is not None:
        check_image(cfg.init_image, "Init image")


def check_story(cfg: GenerationConfig) -> None:
    """Every story phase gets at least one step: a story you typed is a story you get."""
    phases = parse_story(cfg.prompt)
    n, every = len(phases), cfg.change_prompt_every
    if not every and n > cfg.steps:
        raise UsageError(f"The story has {n} phases but only {cfg.steps} steps: give at least {n} --steps.")
    if n > 1 and every and (n - 1) * every >= cfg.steps:
        last = " | ".join(p.text for p in phases[-1])
        raise UsageError(
            f"With --change-prompt-every {every}, the last phase ({last!r}) would start at step "
            f"{(n - 1) * every + 1}, after the last of the {cfg.steps} steps.",
            f"Give more than {(n - 1) * every} --steps, or --change-prompt-every 0 to split the steps evenly.",
        )


@dataclass(frozen=True)
class Checked:
    """What validation resolved, so that loading uses it instead of resolving the names again."""

    clips: tuple  # a vqclip.clip_loading.ClipSource per --clip


def check_models(cfg: GenerationConfig) -> Checked:
    """Model names that resolve (registry entries of the right kind, or files that exist)."""
    from vqclip.clip_loading import parse_clip_name

    if cfg.transformer is not None:
        if cfg.vqgan != default("vqgan"):
            raise UsageError(
                "--transformer brings its own VQGAN (the first stage its tokens belong to); drop --vqgan.",
            )
        _check_model(cfg.transformer, ("transformer",), "Transformer checkpoint")
    else:
        _check_model(cfg.vqgan, ("vqgan", "transformer"), "VQGAN checkpoint")
    if cfg.vqgan_config is not None and not Path(cfg.vqgan_config).expanduser().is_file():
        raise UsageError(f"VQGAN config {cfg.vqgan_config} does not exist.")
    return Checked(tuple(parse_clip_name(name) for name in cfg.clip))


def _check_model(name: str, kinds: tuple[str, ...], what: str) -> None:
    from vqclip.registry import get_spec, looks_like_path

    if looks_like_path(name):
        if not Path(name).expanduser().is_file():
            raise UsageError(f"{what} {name} does not exist.")
        return
    spec = get_spec(name)
    if spec.kind not in kinds:
        raise UsageError(f"{name} is a {spec.kind} model, not a {' or '.join(kinds)} (see `vqclip models list`).")


def validate(cfg: GenerationConfig) -> Checked:
    """Everything about a run that can be checked without loading a model; returns what it resolved."""
    check_prompts(cfg)
    return check_models(cfg)


def check_writable(directory: Path) -> None:
    """Fail early (before any model loads) when the output folder cannot be created or written."""
    directory = Path(directory).expanduser()
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"Cannot write to {directory}: {probe} is not a writable folder.")
    from vqclip.output import probe_writable

    why = probe_writable(probe)  # a file made and removed: os.access says yes in /proc as root
    if why:
        raise UsageError(f"Cannot write to {directory}: a file cannot be created in {probe} ({why.lower()}).")


def check_video(video: str | None) -> None:
    """--video needs ffmpeg on the PATH and a folder it can write to."""
    if video is None:
        return
    if shutil.which("ffmpeg") is None:
        raise UsageError(
            "--video needs ffmpeg, which is not installed.",
            "Install ffmpeg, or pipe the frames yourself: vqclip ... --frames - | ffmpeg -f image2pipe -i - out.mp4",
        )
    path = Path(video).expanduser()
    if path.is_dir():
        raise UsageError(f"--video {video} is a folder; give a file name such as {path / 'out.mp4'}.")
    check_writable(path.parent)


def check_frames(frames: str | None, overwrite: bool = False) -> None:
    """--frames DIR: a folder that can be written and holds no earlier run's frames (unless --overwrite)."""
    from vqclip.output import existing_frames

    if frames is None or frames == "-":
        return
    folder = Path(frames).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--frames {frames} is a file, not a folder.")
    check_writable(folder)
    earlier = [] if overwrite else existing_frames(folder)
    if earlier:
        raise UsageError(
            f"{folder} already holds frames ({earlier[0].name}, ...) from another run.",
            "Choose an empty folder, or add --overwrite to replace them.",
        )
