"""Step 1 of a generation: every check that needs no model, done once, before anything heavy, and the
`Request` it resolves. Every later step reads the request; nothing below parses the prompt again, reads the
user's TOML again, or opens an input image again.

Values that a config can check by itself (ranges, finite floats, choices) are checked when the
GenerationConfig is built; this module checks what needs the file system or the registry: prompt text,
input images, model names, and the places outputs go. Nothing here imports torch.
"""

import os
from dataclasses import dataclass, replace
from pathlib import Path

from vqclip.config import GenerationConfig, default
from vqclip.errors import UsageError
from vqclip.prompts import Prompt, parse_prompt, parse_story


@dataclass(frozen=True)
class InputImage:
    """An input image (init image or image prompt), read once: its resolved path, sha256 and pixels."""

    path: str  # absolute, so a replay works from any folder
    sha256: str
    image: object  # the decoded RGB PIL image
    weight: float = 1.0
    stop: float = float("-inf")


@dataclass(frozen=True)
class NoisePrompt:
    """A random CLIP embedding drawn from its own seed."""

    seed: int
    weight: float = 1.0
    stop: float = float("-inf")


@dataclass(frozen=True)
class Request:
    """A run as validation resolved it: the config with its seed fixed and input paths absolute, the parsed
    prompts, the input images read once, and where each model comes from. Outputs are the caller's (the CLI
    checks them with `check_outputs`)."""

    cfg: GenerationConfig
    story: tuple[tuple[Prompt, ...], ...]  # the text prompts of each story phase; () without text
    image_prompts: tuple[InputImage, ...]
    noise_prompts: tuple[NoisePrompt, ...]
    init_image: InputImage | None
    vqgan: object  # vqclip.weights.registry.ModelSource: the VQGAN, or the transformer's checkpoint
    clips: tuple  # a vqclip.weights.clip.ClipSource per --clip
    upscaler: object = None  # a ModelSource when the config upscales
    regions: tuple = ()  # the parsed --region prompts (vqclip.regions.Region)
    palette: tuple = ()  # the --palette colours as RGB tuples (0..255)

    @property
    def encodes_images(self) -> bool:
        """Whether the run needs the VQGAN's encoder: an init image, a noise init or animation frames."""
        return self.init_image is not None or self.cfg.init != "tokens" or self.cfg.animated

    @property
    def inputs(self) -> dict | None:
        """{resolved path: sha256} of the input images (region masks too), for the record (None without any)."""
        images = ([self.init_image] if self.init_image else []) + list(self.image_prompts)
        masks = {r.mask_path: r.sha256 for r in self.regions if r.mask_path is not None}
        return {i.path: i.sha256 for i in images} | masks or None

    @property
    def texts(self) -> list[str]:
        """Every text prompt of the story, once each, in order (what the CLIP text towers encode)."""
        return list(
            dict.fromkeys([p.text for phase in self.story for p in phase] + [r.prompt.text for r in self.regions])
        )

    @property
    def name_stem(self) -> str:
        """What a default file name is made of: the first text prompt, else the first image prompt's name."""
        if self.story:
            return self.story[0][0].text
        if self.regions:
            return self.regions[0].prompt.text
        return Path(self.image_prompts[0].path).stem if self.image_prompts else "noise"


def check_text(text: str, what: str = "The prompt") -> None:
    """Text that can be stored in the PNG metadata: surrogates from undecodable shell bytes cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            f"{what} contains bytes that are not UTF-8 text ({text.encode('utf-8', 'backslashreplace').decode()[:80]}).",
            "Use UTF-8 text (check the terminal's or the file's encoding).",
        ) from None


def read_image(path: str, what: str = "Image"):
    """(resolved path, sha256, RGB PIL image) of an input image: the one read of it, refused in one sentence
    when it is missing, unreadable, over the pixel limit or a decompression bomb (vqclip.images.read_image)."""
    from vqclip.images import read_image as decode
    from vqclip.weights.cache import sha256_file

    image, _ = decode(path, what)
    file = Path(path).expanduser().resolve()
    return str(file), sha256_file(file), image


def check_image(path: str, what: str = "Image") -> None:
    """Fail with one sentence unless `path` is an image that can be read (see read_image)."""
    read_image(path, what)


def check_story(story, cfg: GenerationConfig) -> None:
    """Every story phase gets at least one step: a story you typed is a story you get."""
    n, every = len(story), cfg.change_prompt_every
    if not every and n > cfg.steps:
        raise UsageError(f"The story has {n} phases but only {cfg.steps} steps: give at least {n} --steps.")
    if n > 1 and every and (n - 1) * every >= cfg.steps:
        last = " | ".join(p.text for p in story[-1])
        raise UsageError(
            f"With --change-prompt-every {every}, the last phase ({last!r}) would start at step "
            f"{(n - 1) * every + 1}, after the last of the {cfg.steps} steps.",
            f"Give more than {(n - 1) * every} --steps, or --change-prompt-every 0 to split the steps evenly.",
        )


def _story(cfg: GenerationConfig) -> tuple[tuple[Prompt, ...], ...]:
    check_text(cfg.prompt)
    story = tuple(tuple(phase) for phase in parse_story(cfg.prompt))
    if cfg.prompt.strip() and not story:
        raise UsageError(
            f"The prompt {cfg.prompt!r} has no text, only separators or weights.",
            'Write it as "text:weight:stop", with "|" between prompts and "^" between story phases.',
        )
    check_story(story, cfg)
    return story


def _image_prompt(item: str) -> InputImage:
    p = parse_prompt(item)
    path, sha256, image = read_image(p.text, "Image prompt")
    return InputImage(path, sha256, image, p.weight, p.stop)


def _noise_prompt(item: str) -> NoisePrompt:
    p = parse_prompt(item)
    if not (p.text.isascii() and p.text.isdigit()) or int(p.text) >= 2**63:
        raise UsageError(f"Noise prompt {item!r} should be SEED[:weight], a seed below 2**63, e.g. 42:0.5.")
    return NoisePrompt(int(p.text), p.weight, p.stop)


def _with_path(item: str, path: str) -> str:
    """An image prompt "PATH[:W[:STOP]]" with its path replaced by the resolved one (the weights kept)."""
    text = parse_prompt(item).text
    return path + item[len(text) :] if item.startswith(text) else item


def _models(cfg: GenerationConfig):
    from vqclip.weights.clip import parse_clip_name
    from vqclip.weights.pretrained import DEFAULT_UPSCALER
    from vqclip.weights.registry import resolve_model

    if cfg.transformer is not None:
        if cfg.vqgan != default("vqgan"):
            raise UsageError(
                "--transformer brings its own VQGAN (the first stage its tokens belong to); drop --vqgan.",
            )
        vqgan = resolve_model(cfg.transformer, ("transformer",), "Transformer checkpoint")
    else:
        vqgan = resolve_model(cfg.vqgan, ("vqgan", "transformer"), "VQGAN checkpoint")
    if cfg.vqgan_config is not None and not Path(cfg.vqgan_config).expanduser().is_file():
        raise UsageError(f"VQGAN config {cfg.vqgan_config} does not exist.")
    clips = tuple(parse_clip_name(name) for name in cfg.clip)
    upscaler = resolve_model(DEFAULT_UPSCALER, ("upscaler",), "Upscaler") if cfg.upscale > 1 else None
    return vqgan, clips, upscaler


def check_device(device: str) -> None:
    """--device cuda or mps that this machine lacks: one sentence before any model loads (torch is imported
    only for those two; auto and cpu need nothing)."""
    if device in ("cuda", "mps"):
        from vqclip.device import resolve_device

        resolve_device(device)


def validate(cfg: GenerationConfig) -> Request:
    """Everything about a run that can be checked without loading a model, resolved once: the seed fixed
    (a random one when none was given), the prompts parsed, the input images read and hashed, the model
    names resolved."""
    cfg = cfg.with_seed()
    check_device(cfg.device)
    story = _story(cfg)
    image_prompts = tuple(_image_prompt(item) for item in cfg.image_prompts)
    noise_prompts = tuple(_noise_prompt(item) for item in cfg.noise_prompts)
    init = None
    if cfg.init_image is not None:
        init = InputImage(*read_image(cfg.init_image, "Init image"))
    vqgan, clips, upscaler = _models(cfg)
    cfg = replace(
        cfg,
        init_image=init.path if init else None,
        image_prompts=tuple(_with_path(item, i.path) for item, i in zip(cfg.image_prompts, image_prompts, strict=True)),
    )
    regions, palette = _controls(cfg)
    cfg = replace(cfg, regions=tuple(_region_text(item, r) for item, r in zip(cfg.regions, regions, strict=True)))
    return Request(cfg, story, image_prompts, noise_prompts, init, vqgan, clips, upscaler, regions, palette)


def _controls(cfg: GenerationConfig) -> tuple[tuple, tuple]:
    """The parsed --region prompts, their mask images read, and the --palette colours (the config checked
    their syntax when it was built)."""
    from vqclip.losses import parse_palette
    from vqclip.regions import parse_region, with_mask

    regions = []
    for item in cfg.regions:
        region = parse_region(item)
        check_text(region.prompt.text, "A region's prompt")
        if region.mask_path is not None:
            region = with_mask(region, *read_image(region.mask_path, "Region mask"))
        regions.append(region)
    return tuple(regions), parse_palette(cfg.palette)


def _region_text(item: str, region) -> str:
    """A --region as recorded: a mask's path resolved, so that a replay finds it from any folder."""
    from vqclip.regions import with_path

    return item if region.mask_path is None else with_path(item, region.mask_path)


# ---- outputs (the CLI's) ------------------------------------------------------------------------


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
    """--video needs an ffmpeg (the system's, or imageio-ffmpeg's: vqclip.ffmpeg) and a folder it can write to."""
    from vqclip.ffmpeg import ffmpeg_exe

    if video is None:
        return
    if ffmpeg_exe() is None:
        raise UsageError(
            "--video needs ffmpeg, which is not installed (neither on the PATH nor from imageio-ffmpeg).",
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


def check_outputs(out) -> None:
    """The CLI's outputs (a vqclip.output.OutputOptions): the PNG's folder, the video, the frames folder."""
    check_writable(out.path.parent)
    check_video(out.video)
    check_frames(out.frames if isinstance(out.frames, str | Path) else None, out.overwrite)  # with --video too
