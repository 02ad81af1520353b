"""The generation pipeline: config -> models -> prompts -> optimisation -> image, for the API and CLI.

`generate(prompt, config)` is the public entry point; `load_models` lets a batch load the models once.
"""

import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from vqclip import __version__
from vqclip.animation import latent_transform
from vqclip.config import GenerationConfig, round_size
from vqclip.device import autocast, resolve_device, resolve_precision
from vqclip.errors import UsageError
from vqclip.images import load_image, to_pil
from vqclip.memory import make_plan
from vqclip.optimize import Guide, Target, optimize, synth
from vqclip.prompts import parse_prompt, parse_story, phase_at


@dataclass
class Models:
    """Everything loaded once and reused across prompts."""

    vqgan: torch.nn.Module
    vqgan_sha256: str | None
    clips: list  # list[ClipModel]
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    gpt: torch.nn.Module | None = None  # the taming GPT of --transformer
    conditioning: object = None  # how that GPT is conditioned (vqclip.models.gpt.Conditioning)
    upscaler: object = None  # Real-ESRGAN (spandrel), loaded on the first --upscale
    upscaler_record: dict | None = None  # its name and sha256


@dataclass
class Result:
    image: object  # PIL.Image
    config: GenerationConfig  # with the seed and size filled in
    loss: float
    seconds: float
    steps_done: int
    models: dict  # names and sha256 of the models used
    plan: object = None  # the memory plan the run used (vqclip.memory.Plan)
    latent: torch.Tensor | None = None  # the final latent z
    canvas: dict | None = None  # what the transformer pass did (--transformer)
    upscale: dict | None = None  # the upscaler, factor and tile size (--upscale)

    def record(self) -> dict:
        """The `vqclip` PNG metadata: every setting, the seed, the models and the version."""
        return {
            "version": __version__,
            "config": self.config.to_dict(),
            "seed": self.config.seed,
            "models": self.models,
            "loss": self.loss,
            "steps_done": self.steps_done,
            "canvas": self.canvas,
            "upscale": self.upscale,
            # what decides the pixels (not the memory figures, which vary from run to run)
            "plan": {"checkpointing": self.plan.checkpointing, "clip_chunk": self.plan.clip_chunk}
            if self.plan is not None
            else None,
        }

    def parameters(self) -> str:
        """The `parameters` text chunk, in the convention other text-to-image tools read."""
        c = self.config
        w, h = c.size
        return (
            f"{c.prompt}\nSteps: {self.steps_done}, Seed: {c.seed}, Size: {w}x{h}, "
            f"Model: {Path(c.vqgan).name}, CLIP: {', '.join(c.clip)}, Cutouts: {c.cutn}, "
            f"Learning rate: {c.lr}, Version: vqclip {__version__}"
        )


# ---- validation and loading --------------------------------------------------------------------


def check_inputs(cfg: GenerationConfig) -> None:
    """Everything about a config that can be checked without loading a model."""
    from vqclip.clip_loading import parse_clip_name
    from vqclip.registry import get_spec, looks_like_path

    parse_story(cfg.prompt)
    for item in cfg.image_prompts:
        prompt = parse_prompt(item)
        if not Path(prompt.text).expanduser().is_file():
            raise UsageError(f"Image prompt {prompt.text} does not exist.")
    for item in cfg.noise_prompts:
        prompt = parse_prompt(item)
        if not prompt.text.isdigit():
            raise UsageError(f"Noise prompt {item!r} should be SEED[:weight], e.g. 42:0.5.")
    if cfg.init_image is not None and not Path(cfg.init_image).expanduser().is_file():
        raise UsageError(f"Init image {cfg.init_image} does not exist.")
    if looks_like_path(cfg.vqgan):
        if not Path(cfg.vqgan).expanduser().is_file():
            raise UsageError(f"VQGAN checkpoint {cfg.vqgan} does not exist.")
    else:
        spec = get_spec(cfg.vqgan)
        if spec.kind not in ("vqgan", "transformer"):
            raise UsageError(f"{cfg.vqgan} is a {spec.kind} model, not a VQGAN.")
    if cfg.transformer is not None:
        if looks_like_path(cfg.transformer):
            if not Path(cfg.transformer).expanduser().is_file():
                raise UsageError(f"Transformer checkpoint {cfg.transformer} does not exist.")
        elif get_spec(cfg.transformer).kind != "transformer":
            raise UsageError(f"{cfg.transformer} is not a transformer model (see `vqclip models list`).")
    for name in cfg.clip:
        parse_clip_name(name)


def load_models(cfg: GenerationConfig, offline: bool | None = None, quiet: bool = False) -> Models:
    """Load (downloading on first use) the VQGAN and CLIP models a config names, frozen, on its device."""
    from vqclip.clip_loading import load_clip
    from vqclip.loading import load_vqgan

    device = resolve_device(cfg.device)
    gpt = conditioning = None
    if cfg.transformer:  # the GPT's codes belong to its own first stage: that is the VQGAN
        from vqclip.loading import load_transformer

        gpt, vqgan, conditioning = load_transformer(cfg.transformer, device=device, offline=offline, quiet=quiet)
        vqgan_name = cfg.transformer
    else:
        vqgan = load_vqgan(cfg.vqgan, cfg.vqgan_config, device=device, offline=offline, quiet=quiet)
        vqgan_name = cfg.vqgan
    clips = [load_clip(name, device=device, offline=offline) for name in cfg.clip]
    dtype = resolve_precision(cfg.precision, device)
    models = Models(vqgan, _vqgan_sha256(vqgan_name), clips, device, dtype, gpt, conditioning)
    prepare_for_speed(models, cfg)
    return models


def autocast_for(models: Models):
    return autocast(models.device, models.dtype)


def needs_encoder(cfg: GenerationConfig) -> bool:
    return cfg.init_image is not None or cfg.init == "noise" or cfg.animated


def prepare_for_speed(models: Models, cfg: GenerationConfig) -> None:
    """Channels-last decoder (not on MPS), CLIP kept in the autocast dtype, no encoder unless needed."""
    if models.device.type != "mps":
        models.vqgan.use_channels_last()
    if models.dtype is not None:
        for clip in models.clips:
            clip.cast(models.dtype)
    if not needs_encoder(cfg):
        models.vqgan.drop_encoder()
    if cfg.compile:
        models.vqgan.decoder.compile()
        for clip in models.clips:
            clip.compile()


def _vqgan_sha256(name: str) -> str | None:
    from vqclip.download import read_stamp, sha256_file
    from vqclip.registry import fetch_model, looks_like_path

    if looks_like_path(name):
        return sha256_file(Path(name).expanduser())
    local = fetch_model(name, kind="vqgan", offline=True)  # already fetched by load_vqgan
    return (read_stamp(local.checkpoint) or {}).get("sha256")


# ---- the job -----------------------------------------------------------------------------------


def _targets(models: Models, cfg: GenerationConfig) -> list[Guide]:
    from vqclip.cutouts import Cutouts

    phases = parse_story(cfg.prompt) or [[]]
    guides = []
    for clip in models.clips:
        extra = []
        for item in cfg.image_prompts:
            p = parse_prompt(item)
            pixels = load_image(p.text, clip.input_size, clip.input_size).to(models.device)
            with torch.no_grad(), autocast_for(models):
                extra.append(Target(clip.encode_image(pixels).float()[0], p.weight, p.stop))
        for item in cfg.noise_prompts:
            p = parse_prompt(item)
            gen = torch.Generator().manual_seed(int(p.text))
            dim = clip.encode_text(["x"]).shape[-1]
            extra.append(Target(torch.randn(dim, generator=gen).to(models.device), p.weight, p.stop))
        per_phase = []
        for phase in phases:
            texts = clip.encode_text([p.text for p in phase]) if phase else []
            per_phase.append([Target(e, p.weight, p.stop) for e, p in zip(texts, phase, strict=True)] + extra)
        cut = Cutouts(clip.input_size, cfg.cutn, cfg.cut_pow, cfg.augment, cfg.noise_fac)
        guides.append(Guide(clip, cut, per_phase))
    return guides


def _initial_latent(models: Models, cfg: GenerationConfig) -> torch.Tensor:
    vqgan = models.vqgan
    f = vqgan.factor
    w, h = cfg.size
    with torch.no_grad():
        if cfg.init_image is not None:
            pixels = load_image(cfg.init_image, w, h).to(models.device)
            return vqgan.encode(pixels * 2 - 1).float()
        if cfg.init == "noise":
            pixels = torch.rand(1, 3, h, w).to(models.device)
            return vqgan.encode(pixels * 2 - 1).float()
        idx = torch.randint(vqgan.config.n_embed, (1, h // f, w // f)).to(models.device)
        return vqgan.embed(idx).float()


def resolve_config(cfg: GenerationConfig, models: Models) -> tuple[GenerationConfig, list[str]]:
    """Fill in the seed and the size; return notes for the user (e.g. a rounded size)."""
    notes = []
    seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**32)
    f = models.vqgan.factor
    size = cfg.size or ((512, 512) if models.device.type == "cuda" else (256, 256))
    rounded = round_size(size, f)
    if rounded != tuple(size):
        notes.append(f"Size {size[0]}x{size[1]} rounded to {rounded[0]}x{rounded[1]} (a multiple of {f}).")
    return replace(cfg, seed=seed, size=rounded), notes


def model_record(cfg: GenerationConfig, models: Models) -> dict:
    return {
        "vqgan": {"name": cfg.transformer or cfg.vqgan, "sha256": models.vqgan_sha256},
        "clip": [{"name": c.name, "sha256": c.sha256} for c in models.clips],
    }


def generate(
    prompt: str | GenerationConfig,
    config: GenerationConfig | None = None,
    *,
    models=None,
    callback=None,
    plan=None,
    init_latent: torch.Tensor | None = None,
    offline: bool | None = None,
    quiet: bool = True,
) -> Result:
    """Generate one image from a text prompt with VQGAN+CLIP.

    Args:
        prompt: the prompt text (see vqclip.prompts), or a full GenerationConfig.
        config: the other settings (default GenerationConfig()); its prompt is replaced by `prompt`.
        models: models from `load_models` (loaded from the config when None).
        callback: called after every step with a dict: i, steps, loss, losses, phase, z, and
            `image()` that decodes the current latent to a PIL image.
        plan: a vqclip.memory.Plan to use instead of planning (replay uses the recorded one).
        init_latent: start from this latent (1, C, h, w) instead of the config's init.
        offline: never download; quiet: no download progress.

    Returns a Result with the PIL image, the resolved config (seed and size filled in) and the loss.
    """
    if isinstance(prompt, GenerationConfig):
        cfg = prompt
    else:
        cfg = replace(config or GenerationConfig(prompt=prompt), prompt=prompt)
    start = time.perf_counter()
    # 1. Validate.
    check_inputs(cfg)
    # 2. Load the models.
    models = models or load_models(cfg, offline=offline, quiet=quiet)
    cfg, _ = resolve_config(cfg, models)
    if cfg.transformer:
        from vqclip.canvas import generate_canvas

        result = generate_canvas(cfg, models, callback=callback, plan=plan)
        result.seconds = time.perf_counter() - start
        return result
    plan = plan or make_plan(models, cfg.size, cfg.cutn, max_memory=cfg.max_memory)
    models.vqgan.set_checkpointing(plan.checkpointing)
    # 3. Seed everything before anything random happens.
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    # 4. Encode the prompts and build the initial latent.
    guides = _targets(models, cfg)
    z = init_latent.clone().float() if init_latent is not None else _initial_latent(models, cfg)
    n_phases = len(guides[0].phases)
    loss, done = float("nan"), 0
    # 5. Optimise.
    steps = optimize(
        models.vqgan,
        guides,
        z,
        cfg.steps,
        lr=cfg.lr,
        init_weight=cfg.init_weight,
        phase_of=lambda i: phase_at(i, n_phases, cfg.steps, cfg.change_prompt_every),
        autocast=autocast_for(models),
        clip_chunk=plan.clip_chunk,
        transform=latent_transform(models.vqgan, cfg.zoom, cfg.rotate, cfg.shift, autocast_for(models))
        if cfg.animated
        else None,
        transform_every=cfg.frames_every,
    )
    for state in steps:
        loss, done = state["loss"], state["i"]
        if callback is not None:
            latent = state["z"]
            state.update(steps=cfg.steps, image=lambda latent=latent: decode(models, latent))
            callback(state)
    # 6. Decode.
    image = decode(models, z)
    return Result(image, cfg, loss, time.perf_counter() - start, done, model_record(cfg, models), plan, z.detach())


def decode(models: Models, z: torch.Tensor):
    """A latent as a PIL image."""
    with torch.no_grad(), autocast_for(models):
        return to_pil(synth(models.vqgan, z.detach()))
