"""The options that fill GenerationConfig, shared by `generate` and `batch`."""

import click

from vqclip.config import (
    AUGMENTS,
    CUT_METHODS,
    DEVICES,
    INITS,
    KEEPS,
    LR_SCHEDULES,
    OPTIMIZERS,
    PRECISIONS,
    RESAMPLES,
    GenerationConfig,
    default,
    parse_size,
)
from vqclip.errors import UsageError


def _size(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_size(value)
    except UsageError as err:
        raise click.BadParameter(err.message) from None


def _augment(ctx, param, value):
    if value is None:
        return default("augment")
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if names == ("none",):
        return ()
    bad = [n for n in names if n not in AUGMENTS]
    if bad:
        raise click.BadParameter(f"{', '.join(bad)} not among {', '.join(AUGMENTS)} (or 'none').")
    return names


def _shift(ctx, param, value):
    try:
        x, y = (float(v) for v in str(value).split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} should be X,Y in pixels, e.g. 2,0.") from None
    return (x, y)


def _palette(ctx, param, value):
    if value is None:
        return default("palette")
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise click.BadParameter("names no colour (give names such as orange or hex such as #ff2200).")
    return names


def parse_bytes(ctx, param, value):
    """'6G', '6GB', '512M', '3.5GiB' or a plain number of bytes."""
    if value is None:
        return None
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(text[-1:], 1)
    try:
        number = float(text[:-1] if scale != 1 else text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size like 6G or 512M.") from None
    if number <= 0:
        raise click.BadParameter("must be positive.")
    return int(number * scale)


def generation_options(f, seed_help: str = "Random seed [default: random, recorded]."):
    """The options that fill GenerationConfig (shared by generate and batch); defaults come from it."""
    d = default
    options = [
        click.option("--size", "-s", callback=_size, help="512 or WIDTHxHEIGHT [default: 512 on CUDA, 256 else]"),
        click.option(
            "--steps",
            "-i",
            "--iterations",
            default=d("steps"),
            show_default=True,
            type=click.IntRange(1),
            help="Optimisation steps.",
        ),
        click.option("--seed", type=click.IntRange(0, 2**63 - 1), help=seed_help),
        click.option("--cutn", default=d("cutn"), show_default=True, type=click.IntRange(1), help="Cutouts per step."),
        click.option("--cut-pow", default=d("cut_pow"), show_default=True, type=float, help="Cutout size power."),
        click.option("--lr", default=d("lr"), show_default=True, type=float, help="Adam learning rate."),
        click.option(
            "--init",
            "-in",
            "--init-noise",
            "init",
            type=click.Choice(INITS),
            default=d("init"),
            show_default=True,
            help="Initial latent: random tokens, or an encoded noise, gradient, blocky pixels or Perlin image.",
        ),
        click.option("--init-image", type=click.Path(dir_okay=False), help="Start from this image."),
        click.option(
            "--init-weight", default=d("init_weight"), show_default=True, type=float, help="Pull towards the start."
        ),
        click.option("--image-prompt", "image_prompts", multiple=True, metavar="PATH[:W[:STOP]]", help="Image prompt."),
        click.option("--noise-prompt", "noise_prompts", multiple=True, metavar="SEED[:W]", help="Noise prompt."),
        click.option(
            "--change-prompt-every",
            default=d("change_prompt_every"),
            show_default=True,
            type=click.IntRange(0),
            help="Steps per story phase ('^'); 0 splits the steps evenly.",
        ),
        click.option("--vqgan", default=d("vqgan"), show_default=True, help="VQGAN registry name or .ckpt path."),
        click.option("--vqgan-config", type=click.Path(dir_okay=False), help="The yaml of a .ckpt path."),
        click.option(
            "--clip",
            multiple=True,
            default=d("clip"),
            show_default=True,
            help="CLIP model: ARCH/TAG, registry name or CONFIG.json:WEIGHTS; repeat to combine.",
        ),
        click.option(
            "--cut-method",
            "-cutm",
            "--cut_method",
            "cut_method",
            type=click.Choice(CUT_METHODS),
            default=d("cut_method"),
            show_default=True,
            help="The views CLIP sees: crops (original, updated, nrupdated), the whole canvas pooled (latest), "
            "pixray's mix, or overview (whole views giving way to crops over the run).",
        ),
        click.option(
            "--augment",
            callback=_augment,
            metavar="LIST",
            help=f"Comma list of {', '.join(AUGMENTS)}, or none [default: the cut method's].",
        ),
        click.option("--noise-fac", default=d("noise_fac"), show_default=True, type=float, help="Cutout noise."),
        click.option(
            "--resample",
            type=click.Choice(RESAMPLES),
            default=d("resample"),
            show_default=True,
            help="Cutout resize: exact area averaging, or the reference scripts' Lanczos then bicubic.",
        ),
        click.option(
            "--optimizer",
            "-opt",
            "--optimiser",
            "optimizer",
            type=click.Choice(OPTIMIZERS),
            default=d("optimizer"),
            show_default=True,
            help="torch's optimiser on the latent.",
        ),
        click.option(
            "--lr-schedule",
            type=click.Choice(LR_SCHEDULES),
            default=d("lr_schedule"),
            show_default=True,
            help="drop: the rate / 10 for the last quarter of the steps (pixray); cosine: down to 0.",
        ),
        click.option(
            "--auto-stop",
            default=d("auto_stop"),
            show_default=True,
            type=click.IntRange(0),
            metavar="N",
            help="Stop after N steps without a lower guide loss (0 = off); the PNG records where.",
        ),
        click.option(
            "--keep",
            type=click.Choice(KEEPS),
            default=d("keep"),
            show_default=True,
            help="Keep the last image, or the best by the guiding CLIPs' loss on fixed cutouts.",
        ),
        click.option(
            "--tv", "--smoothness", "tv", default=d("tv"), show_default=True, type=float, help="Smoothness weight."
        ),
        click.option(
            "--saturation",
            default=d("saturation"),
            show_default=True,
            type=float,
            help="Saturation weight (negative: towards grey).",
        ),
        click.option(
            "--symmetry", default=d("symmetry"), show_default=True, type=float, help="Left-right mirror weight."
        ),
        click.option(
            "--palette",
            callback=_palette,
            metavar="COLOURS",
            help='Pull pixels to these colours: names or hex, e.g. "black,white,#ff2200".',
        ),
        click.option(
            "--palette-weight", default=d("palette_weight"), show_default=True, type=float, help="Palette weight."
        ),
        click.option(
            "--region",
            "regions",
            multiple=True,
            metavar="X0,Y0,X1,Y1|MASK:PROMPT[:W[:STOP]]",
            help="A prompt whose cutouts lie in this box (fractions of the canvas) or a mask image's white area; repeatable.",
        ),
        click.option("--tile", is_flag=True, help="Seamless tiling: a random torus roll before each step's cutouts."),
        click.option(
            "--n",
            "n",
            default=d("n"),
            show_default=True,
            type=click.IntRange(1),
            help="N images of the prompt in one batched step; image i has seed SEED+i and replays alone.",
        ),
        click.option("--device", type=click.Choice(DEVICES), default=d("device"), show_default=True),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            default=d("precision"),
            show_default=True,
            help="auto: bf16 autocast where the hardware is fast at it.",
        ),
        click.option("--transformer", metavar="NAME|PATH", help="Large canvases: a taming GPT (e.g. cin_transformer)."),
        click.option(
            "--base-size", default=d("base_size"), show_default=True, type=int, help="--transformer: base size."
        ),
        click.option(
            "--anchor",
            default=d("anchor"),
            show_default=True,
            type=float,
            help="--transformer: pull towards the upsampled base (0 = pure GPT sampling).",
        ),
        click.option(
            "--temperature", default=d("temperature"), show_default=True, type=float, help="--transformer: temperature."
        ),
        click.option(
            "--top-k", default=d("top_k"), show_default=True, type=int, help="--transformer: top-k (0 = off)."
        ),
        click.option("--top-p", type=float, help="--transformer: nucleus threshold."),
        click.option(
            "--refine-steps",
            default=d("refine_steps"),
            show_default=True,
            type=click.IntRange(0),
            help="--transformer: CLIP steps at full size after the pass.",
        ),
        click.option(
            "--upscale",
            default=d("upscale"),
            show_default=True,
            type=click.Choice([1, 2, 4]),
            help="Real-ESRGAN upscaling of the result (2 = the x4 model, then a Lanczos downscale).",
        ),
        click.option(
            "--frames-every",
            default=d("frames_every"),
            show_default=True,
            type=click.IntRange(1),
            help="Steps per frame (--frames, --video); with --zoom/--rotate/--shift also per animation step.",
        ),
        click.option("--zoom", default=d("zoom"), show_default=True, type=float, help="Animation: zoom per frame."),
        click.option(
            "--rotate", default=d("rotate"), show_default=True, type=float, help="Animation: degrees per frame."
        ),
        click.option(
            "--shift",
            default=",".join(f"{v:g}" for v in d("shift")),
            show_default=True,
            callback=_shift,
            metavar="X,Y",
            help="Animation: pixels per frame.",
        ),
        click.option(
            "--max-memory",
            callback=parse_bytes,
            metavar="SIZE",
            help="Memory the plan may use, e.g. 6G [default: the free memory].",
        ),
        click.option("--compile", is_flag=True, help="torch.compile the decoder and CLIP (slow start, faster steps)."),
        click.option(
            "--deterministic",
            is_flag=True,
            help="Deterministic GPU kernels and warps: the same pixels on every replay on the same GPU (slower).",
        ),
        click.option("--offline", is_flag=True, help="Never use the network (also VQCLIP_OFFLINE=1)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress or messages on stderr."),
        click.option(
            "--progress",
            type=click.Choice(["bar", "json", "none"]),
            default="bar",
            show_default=True,
            help="Progress on stderr: a bar, or one JSON object per step.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


CONFIG_FIELDS = (
    "size steps seed cutn cut_pow lr init init_image init_weight image_prompts noise_prompts "
    "change_prompt_every vqgan vqgan_config clip cut_method augment noise_fac resample device precision max_memory frames_every "
    "zoom rotate shift transformer base_size anchor temperature top_k top_p refine_steps upscale compile deterministic "
    "optimizer lr_schedule auto_stop keep tv saturation symmetry palette palette_weight regions tile n"
).split()


def build_config(prompt: str, params: dict) -> GenerationConfig:
    from vqclip.weights.clip import canonical_clip_name

    values = {k: params[k] for k in CONFIG_FIELDS}
    values["clip"] = tuple(canonical_clip_name(name) for name in values["clip"])  # recorded as open_clip names
    if values["top_k"] == 0:
        values["top_k"] = None
    return GenerationConfig(prompt=prompt, **values)
