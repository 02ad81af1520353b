"""Steps 2 and 4 of a generation, once the models are loaded: resolve the config (seed, size) and plan the
memory. `prepare` returns a `Job`: everything the run needs, computed once, plus notes for the user."""

from dataclasses import dataclass, replace
from pathlib import Path

from vqclip.config import GenerationConfig, round_size
from vqclip.errors import UsageError
from vqclip.memory import Plan, make_plan


@dataclass(frozen=True)
class Job:
    """A resolved run: the config with its seed and size filled in, and the memory plan(s) it runs with.

    With --transformer, `base` is the config of the base optimisation and `base_plan` its plan; `plan` is
    the plan at the full size (for the refinement steps)."""

    cfg: GenerationConfig
    plan: Plan
    notes: tuple[str, ...] = ()
    base: GenerationConfig | None = None
    base_plan: Plan | None = None
    inputs: dict | None = None  # {resolved path: sha256} of the init image and image prompts
    stop_after: int | None = None  # end after this many steps (replaying an interrupted run)
    drop_text_towers: bool = False  # free the CLIP text towers once the prompts are encoded (last_job)


def default_size(device_type: str) -> tuple[int, int]:
    return (512, 512) if device_type == "cuda" else (256, 256)


def base_size(size: tuple[int, int], longer_side: int, f: int) -> tuple[int, int]:
    """The base image of a canvas: its aspect ratio with the longer side at `longer_side` (multiples of f)."""
    scale = min(1.0, longer_side / max(size))
    return tuple(max(f, round(s * scale / f) * f) for s in size)


def resolve_inputs(cfg: GenerationConfig) -> tuple[GenerationConfig, dict]:
    """Input image paths made absolute (so a replay works from any folder), with each file's sha256."""
    from vqclip.cache import sha256_file
    from vqclip.prompts import parse_prompt

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    def with_path(item: str) -> str:
        text = parse_prompt(item).text
        return absolute(text) + item[len(text) :] if item.startswith(text) else item

    init = absolute(cfg.init_image) if cfg.init_image else None
    prompts = tuple(with_path(item) for item in cfg.image_prompts)
    cfg = replace(cfg, init_image=init, image_prompts=prompts)
    files = ([init] if init else []) + [parse_prompt(item).text for item in prompts]
    return cfg, {f: sha256_file(Path(f)) for f in files}


def prepare(
    cfg: GenerationConfig,
    models,
    plan: Plan | None = None,
    stop_after: int | None = None,
    last_job: bool = False,
) -> Job:
    """Resolve the seed, size and input paths and make the memory plan, once. `plan` overrides the plan and
    `stop_after` ends the run early (a replay of an interrupted run). `last_job`: the models serve no other
    job, so a plain run frees the CLIP text towers once its prompts are encoded, and the plan counts on it
    (a canvas encodes its prompts again at the full size and keeps them)."""
    if cfg.encodes_images and models.vqgan.encoder is None:
        raise UsageError(
            "These models were loaded for a config that encodes no image, so their VQGAN has no encoder, "
            "which init_image, init='noise' and animation need.",
            "Load the models with vqclip.load_models(cfg) for a config that sets one of those.",
        )
    cfg, inputs = resolve_inputs(cfg.with_seed())
    drop = last_job and not cfg.transformer
    f = models.vqgan.factor
    size = cfg.size or default_size(models.device.type)
    rounded = round_size(size, f)
    notes = []
    if rounded != tuple(size):
        notes.append(f"Size {size[0]}x{size[1]} rounded to {rounded[0]}x{rounded[1]} (a multiple of {f}).")
    cfg = replace(cfg, size=rounded)
    base = base_plan = None
    if cfg.transformer:
        base = replace(cfg, transformer=None, size=base_size(rounded, cfg.base_size, f))
        base_plan = make_plan(models, base.size, cfg.cutn, max_memory=cfg.max_memory)
    if plan is None:
        if base is not None and not cfg.refine_steps:
            plan = base_plan  # no CLIP step runs at the full size
        else:
            plan = make_plan(models, rounded, cfg.cutn, max_memory=cfg.max_memory, text_towers=not drop)
    steps = f"{cfg.steps} step{'s' if cfg.steps != 1 else ''}" + (
        f" at {base.size[0]}x{base.size[1]}, then the transformer" if base else ""
    )
    notes.append(f"{rounded[0]}x{rounded[1]}, seed {cfg.seed}, {steps} on {models.device.type} ({models.precision}).")
    for p in (base_plan, plan) if base else (plan,):
        if p.checkpointing or p.clip_chunk < cfg.cutn:
            notes.append(
                f"Memory plan: about {p.estimate / 2**30:.1f} of {p.budget / 2**30:.1f} GiB, with decoder "
                f"checkpointing {'on' if p.checkpointing else 'off'} and CLIP chunks of {p.clip_chunk}."
            )
    return Job(cfg, plan, tuple(notes), base, base_plan, inputs or None, stop_after, drop)
