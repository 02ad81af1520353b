"""Frozen dataclasses holding every setting of a run: one source of truth that the CLI maps onto.

Validation that needs no model lives in `__post_init__`, so bad input fails before anything loads.
"""

import math
import random
from dataclasses import MISSING, asdict, dataclass, fields, replace

from vqclip.errors import UsageError
from vqclip.weights.pretrained import DEFAULT_CLIP, DEFAULT_VQGAN

RESAMPLES = ("area", "lanczos")
AUGMENTS = ("affine", "perspective", "jitter", "erasing", "flip", "sharpness")
DEFAULT_AUGMENTS = ("affine", "perspective", "jitter", "erasing")
# How the views CLIP sees are made (vqclip.cutouts): crops of the canvas, the whole canvas pooled, or a mix.
CUT_METHODS = ("original", "latest", "updated", "nrupdated", "pixray", "overview")
# Each cut method's augmentations when --augment is not given, in the reference's order (the names' settings
# differ by method: vqclip.cutouts.AUGMENT_SETTINGS). nerdyrodent's `latest` and `nrupdated` take its -aug
# default (Af Pe Ji Er); `updated` has a fixed list of its own; pixray's views are perspective and jitter.
METHOD_AUGMENTS = {
    "original": DEFAULT_AUGMENTS,
    "latest": DEFAULT_AUGMENTS,
    "updated": ("flip", "jitter", "sharpness", "affine", "perspective"),
    "nrupdated": DEFAULT_AUGMENTS,
    "pixray": ("perspective", "jitter"),
    "overview": DEFAULT_AUGMENTS,
}
DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
INITS = ("tokens", "noise", "gradient", "pixels", "perlin")  # vqclip.inits draws the last three
OPTIMIZERS = ("adam", "adamw", "radam", "nadam", "adamax", "adagrad", "rmsprop")  # vqclip.schedules
LR_SCHEDULES = ("constant", "drop", "cosine")
KEEPS = ("last", "best")
MAX_SIDE = 8192  # pixels; far beyond any GPU today, catches typos like --size 51200


def parse_size(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '640x360' -> (640, 360) as (width, height)."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"Size {text!r} is not a number or WIDTHxHEIGHT (e.g. 512 or 640x360).") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise UsageError(f"Size {text!r} is not a number or WIDTHxHEIGHT (e.g. 512 or 640x360).")
    return values[0], values[1]


def round_size(size: tuple[int, int], factor: int) -> tuple[int, int]:
    """The nearest multiple of the VQGAN factor on each side (at least one token)."""
    return tuple(max(factor, int(round(s / factor)) * factor) for s in size)


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that decides the image. Stored in the PNG so `vqclip replay` can rerun it."""

    prompt: str = ""  # "text:weight:stop", "|" between prompts, "^" between story phases
    size: tuple[int, int] | None = None  # (width, height) in pixels; None: 512 on CUDA, 256 elsewhere
    steps: int = 300  # optimisation steps
    seed: int | None = None  # None: a random seed, recorded in the output
    cutn: int = 32  # cutouts per step fed to CLIP
    cut_pow: float = 1.0  # cutout size distribution: >1 favours small cutouts
    lr: float = 0.1  # Adam step size on the latent
    init: str = "tokens"  # random codebook tokens, or an encoded noise, gradient, pixels or perlin image
    init_image: str | None = None  # start from this image (encoded), overrides `init`
    init_weight: float = 0.0  # pull the latent towards its initial value (0 = free)
    image_prompts: tuple[str, ...] = ()  # "PATH[:weight[:stop]]"
    noise_prompts: tuple[str, ...] = ()  # "SEED[:weight]": a random CLIP embedding
    change_prompt_every: int = 0  # steps per story phase; 0 = the steps split evenly
    vqgan: str = DEFAULT_VQGAN  # registry name or checkpoint path
    vqgan_config: str | None = None  # the yaml for a checkpoint path (default: found beside it)
    clip: tuple[str, ...] = (DEFAULT_CLIP,)  # one or more CLIP models; their losses add
    cut_method: str = "original"  # the views CLIP sees: crops, the whole canvas pooled, or a mix (CUT_METHODS)
    augment: tuple[str, ...] | None = None  # kornia augmentations of the cutouts; None: the cut method's own
    noise_fac: float = 0.1  # maximum std of the noise added to each cutout
    resample: str = "area"  # how cutouts are resized to CLIP's input: exact area averaging or Lanczos+bicubic
    device: str = "auto"  # auto picks CUDA, then MPS, then the CPU
    precision: str = "auto"  # auto: bf16 autocast where the hardware runs it fast, else fp32
    max_memory: int | None = None  # bytes the memory plan may use (default: the free memory)
    compile: bool = False  # torch.compile the decoder and CLIP (pays on GPUs; ~4% on a 2-core CPU after ~1 min)
    deterministic: bool = False  # deterministic kernels and warps: same pixels on the same GPU (determinism.py)
    transformer: str | None = None  # a taming GPT for large canvases: optimise at base_size, then slide it
    base_size: int = 256  # with --transformer: longer side of the base image CLIP optimises first
    anchor: float = 4.0  # with --transformer: pull of each token towards the upsampled base (0 = pure GPT)
    temperature: float = 1.0  # with --transformer: sampling temperature
    top_k: int | None = 100  # with --transformer: sample among the k most likely tokens (None = all)
    top_p: float | None = None  # with --transformer: nucleus sampling threshold (None = off)
    refine_steps: int = 0  # with --transformer: CLIP-guided steps at the full size after the pass
    upscale: int = 1  # Real-ESRGAN after generation: 1 (off), 2 or 4
    frames_every: int = 1  # steps per animation frame (frames are written and transformed this often)
    zoom: float = 1.0  # animation: scale the image by this much after each frame (>1 zooms in)
    rotate: float = 0.0  # animation: degrees to rotate the image after each frame
    shift: tuple[float, float] = (0.0, 0.0)  # animation: pixels to shift (x, y) after each frame
    optimizer: str = "adam"  # torch's optimiser on the latent (vqclip.schedules)
    lr_schedule: str = "constant"  # constant, drop (pixray's: lr / 10 for the last quarter) or cosine
    auto_stop: int = 0  # stop after this many steps without a lower guide loss (0 = off)
    keep: str = "last"  # the latent kept: the last, or the best by the guide loss on fixed cutouts
    tv: float = 0.0  # weight of the total variation (smoothness) loss
    saturation: float = 0.0  # weight of the saturation loss (negative: towards grey)
    symmetry: float = 0.0  # weight of the left-right mirror loss
    palette: tuple[str, ...] = ()  # colour names or hex: pixels are pulled to the nearest one
    palette_weight: float = 1.0  # weight of the palette loss (with palette)
    regions: tuple[str, ...] = ()  # "X0,Y0,X1,Y1:PROMPT[:W[:STOP]]" or "MASK:PROMPT...": cutouts in a box or mask
    tile: bool = False  # seamless tiling: the image is rolled by a random offset before each step's cutouts
    n: int = 1  # images of this prompt in one batched step; image i has seed + i (each recorded with n = 1)

    def __post_init__(self):
        if not self.prompt.strip() and not self.image_prompts and not self.noise_prompts and not self.regions:
            raise UsageError(
                "The prompt is empty: give a text prompt, an --image-prompt, a --noise-prompt or a --region."
            )
        if self.size is not None:
            w, h = self.size
            if min(w, h) < 8:
                raise UsageError(f"Size {w}x{h} is too small: each side needs at least one VQGAN token.")
            if max(w, h) > MAX_SIDE:
                raise UsageError(f"Size {w}x{h} is too large: each side can be at most {MAX_SIDE} pixels.")
        for name in FLOAT_FIELDS:
            value = getattr(self, name)
            if value is not None and not all(
                math.isfinite(v) for v in (value if isinstance(value, tuple) else (value,))
            ):
                raise UsageError(f"--{name.replace('_', '-')} must be a finite number, not {value}.")
        _positive("steps", self.steps)
        _positive("cutn", self.cutn)
        if self.steps > 1_000_000:
            raise UsageError(f"--steps {self.steps} is absurdly large.")
        if self.cut_pow <= 0:
            raise UsageError(f"--cut-pow must be positive, not {self.cut_pow}.")
        if self.lr <= 0:
            raise UsageError(f"--lr must be positive, not {self.lr}.")
        if self.change_prompt_every < 0:
            raise UsageError("--change-prompt-every cannot be negative.")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise UsageError(f"--seed must be between 0 and 2**63-1, not {self.seed}.")
        _choice("init", self.init, INITS)
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("resample", self.resample, RESAMPLES)
        _choice("cut-method", self.cut_method, CUT_METHODS)
        if isinstance(self.augment, str):
            raise UsageError("augment is a tuple of names, e.g. augment=('affine', 'jitter'), or None.")
        for name in self.augment or ():
            _choice("augment", name, AUGMENTS)
        _positive("frames_every", self.frames_every)
        _choice("upscale", self.upscale, (1, 2, 4))
        if self.transformer is not None:
            if self.base_size < 16:
                raise UsageError(f"--base-size {self.base_size} is too small.")
            if self.anchor < 0 or self.temperature <= 0:
                raise UsageError("--anchor must be at least 0 and --temperature positive.")
            if self.top_k is not None and self.top_k < 1:
                raise UsageError("--top-k must be at least 1.")
            if self.top_p is not None and not 0 < self.top_p <= 1:
                raise UsageError("--top-p must be in (0, 1].")
            if self.refine_steps < 0:
                raise UsageError("--refine-steps cannot be negative.")
        if not 0.1 <= self.zoom <= 10:
            raise UsageError(f"--zoom {self.zoom} is out of range (0.1 to 10; 1 means no zoom).")
        if self.max_memory is not None and self.max_memory <= 0:
            raise UsageError("--max-memory must be positive.")
        if not self.clip:
            raise UsageError("At least one --clip model is needed.")
        self._check_controls()
        self._check_n()

    def _check_n(self) -> None:
        """--n N: N images of one prompt in one batched step, each what its own seed gives alone; what follows
        one image through its run does not batch."""
        _positive("n", self.n)
        if self.n == 1:
            return
        if self.seed is not None and self.seed + self.n - 1 >= 2**63:
            raise UsageError(f"--seed {self.seed} with --n {self.n}: the last image's seed would pass 2**63-1.")
        one_image = refused_with_n(self)
        if one_image:
            raise UsageError(
                f"--n {self.n} cannot be combined with {one_image}, which follows one image through its run; "
                "drop one of them (or run the seeds one by one)."
            )

    def _check_controls(self) -> None:
        """The optimiser, schedule, extra losses, palette and regions (issue 26)."""
        from vqclip.losses import parse_palette
        from vqclip.regions import parse_region

        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr-schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("keep", self.keep, KEEPS)
        if self.auto_stop < 0:
            raise UsageError(f"--auto-stop must be 0 (off) or a number of steps, not {self.auto_stop}.")
        for name in ("tv", "symmetry", "palette_weight"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 0, not {getattr(self, name)}.")
        if isinstance(self.palette, str) or isinstance(self.regions, str):
            raise UsageError("palette and regions are tuples of strings, e.g. palette=('black', 'white').")
        if self.palette and not parse_palette(self.palette):
            raise UsageError("--palette names no colour.")
        for region in self.regions:
            parse_region(region)

    @property
    def animated(self) -> bool:
        return self.zoom != 1.0 or self.rotate != 0.0 or tuple(self.shift) != (0.0, 0.0)

    @property
    def augmentations(self) -> tuple[str, ...]:
        """The augmentations that run: the ones named, else the cut method's own (METHOD_AUGMENTS)."""
        return METHOD_AUGMENTS[self.cut_method] if self.augment is None else tuple(self.augment)

    @property
    def encodes_images(self) -> bool:
        """Whether the run needs the VQGAN's encoder: an init image, a noise init or animation frames."""
        return self.init_image is not None or self.init != "tokens" or self.animated

    def with_seed(self) -> "GenerationConfig":
        """The config with its seed fixed (a random one when none was given), so that the file name, the
        metadata and the run all carry the same seed."""
        if self.seed is not None:
            return self
        return replace(self, seed=random.SystemRandom().randrange(2**32))

    def images(self) -> list["GenerationConfig"]:
        """--n N: the config of each image, seeds seed, seed + 1, ..., each with n = 1: what its PNG records and
        `vqclip replay` reruns alone (the seed fixed first)."""
        cfg = self.with_seed()
        return [replace(cfg, seed=cfg.seed + i, n=1) for i in range(cfg.n)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationConfig":
        known = {f.name for f in fields(cls)}
        clean = {k: v for k, v in data.items() if k in known}
        # a record made before --cut-method existed was made with the crops that are now `original`
        clean.setdefault("cut_method", "original")
        for key in ("image_prompts", "noise_prompts", "clip", "augment", "size", "shift", "palette", "regions"):
            if isinstance(clean.get(key), list):
                clean[key] = tuple(clean[key])
        return cls(**clean)


FLOAT_FIELDS = (
    "cut_pow",
    "lr",
    "init_weight",
    "noise_fac",
    "anchor",
    "temperature",
    "top_p",
    "zoom",
    "rotate",
    "shift",
    "tv",
    "saturation",
    "symmetry",
    "palette_weight",
)


def refused_with_n(cfg: GenerationConfig) -> str:
    """The options of `cfg` that follow one image through its run, and so are refused with --n > 1 and in a
    packed batch (the transformer pass, --keep best, --auto-stop, animation); "" when there are none."""
    names = [
        ("--transformer", cfg.transformer is not None),
        ("--keep best", cfg.keep == "best"),
        ("--auto-stop", bool(cfg.auto_stop)),
        ("--zoom/--rotate/--shift", cfg.animated),
    ]
    return ", ".join(name for name, on in names if on)


def default(name: str):
    """The default of a GenerationConfig field: the one place a default is written (the CLI reads it here)."""
    f = GenerationConfig.__dataclass_fields__[name]
    return f.default if f.default is not MISSING else f.default_factory()


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise UsageError(f"--{name.replace('_', '-')} must be at least 1, not {value}.")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"--{name} {value!r} is not one of {', '.join(map(str, choices))}.")
