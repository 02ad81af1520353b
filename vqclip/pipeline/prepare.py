"""Step 3 of a generation, once the models are loaded: fit the request to them (the size rounded to the
VQGAN's factor, the base size of a canvas), encode the text prompts, plan the memory, and say what will
run. `prepare` returns a `Job`: everything the run needs, computed once, plus notes for the user."""

from dataclasses import dataclass, replace

from vqclip.config import GenerationConfig, round_size
from vqclip.errors import UsageError
from vqclip.memory import Plan, make_plan
from vqclip.pipeline.validate import Request


@dataclass(frozen=True)
class Job:
    """A run fitted to its models. With --transformer, `base` is the config of the base optimisation and
    `base_plan` its plan; `plan` is the plan at the full size (for the refinement steps)."""

    request: Request
    cfg: GenerationConfig  # the request's config with its size rounded
    plan: Plan
    texts: tuple  # per CLIP, per story phase: the (D,) embeddings of the phase's text prompts
    notes: tuple[str, ...] = ()
    base: GenerationConfig | None = None
    base_plan: Plan | None = None
    canvas_class: tuple[int, str] | None = None  # a class-conditional GPT's class, chosen by CLIP
    stop_after: int | None = None  # end after this many steps (replaying an interrupted run)
    region_texts: tuple = ()  # per CLIP: the (D,) embedding of each --region's prompt

    @property
    def total_steps(self) -> int:
        """The CLIP-guided steps of the whole run (a canvas: the base steps, then the refinement's)."""
        return self.cfg.steps + (self.cfg.refine_steps if self.cfg.transformer else 0)


def default_size(device_type: str) -> tuple[int, int]:
    return (512, 512) if device_type == "cuda" else (256, 256)


def base_size(size: tuple[int, int], longer_side: int, f: int) -> tuple[int, int]:
    """The base image of a canvas: its aspect ratio with the longer side at `longer_side` (multiples of f)."""
    scale = min(1.0, longer_side / max(size))
    return round_size((size[0] * scale, size[1] * scale), f)


def check_models(request: Request, models) -> None:
    """The models hold what the job needs (they were loaded for another request, or without parts)."""
    cfg = request.cfg
    if request.encodes_images and not models.vqgan.has_encoder:
        raise UsageError(
            "These models were loaded without the VQGAN's encoder, which init images, pixel inits (noise, gradient, pixels, perlin) and animation need.",
            "Load them with vqclip.load_models(cfg) (encoder=True, the default).",
        )
    if bool(cfg.transformer) != (models.gpt is not None):
        raise UsageError(
            "These models were loaded for a run " + ("without" if cfg.transformer else "with") + " --transformer."
        )
    if len(models.clips) != len(request.clips):
        raise UsageError(f"The run names {len(request.clips)} CLIPs, the models hold {len(models.clips)}.")
    if cfg.upscale > 1 and models.upscaler is None:
        raise UsageError(
            "These models were loaded without the upscaler, which --upscale needs.",
            "Load them with vqclip.load_models(cfg) for a config that upscales.",
        )


def choose_class(models, request: Request) -> tuple[int, str]:
    """CLIP zero-shot: the ImageNet class whose name is most similar to the prompt's first phase."""
    import torch.nn.functional as F
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    clip = models.clips[0]
    if not clip.has_text_tower:
        raise UsageError("A class-conditional --transformer needs the CLIP text tower to choose its class.")
    names = list(IMAGENET_CLASSNAMES[: models.conditioning.n_classes])
    text = " ".join(p.text for p in request.story[0]) if request.story else "a photo"
    classes = F.normalize(clip.encode_text([f"a photo of a {n}." for n in names]), dim=-1)
    prompt = F.normalize(clip.encode_text([text]), dim=-1)
    k = int((classes @ prompt.t()).argmax())
    return k, names[k]


def encode_story(models, request: Request) -> tuple:
    """Per CLIP, per story phase, the (D,) embeddings of the phase's text prompts (one empty phase without text)."""
    return tuple(
        tuple(tuple(models.encode_texts(i, [p.text for p in phase])) for phase in request.story or ((),))
        for i in range(len(models.clips))
    )


def encode_regions(models, request: Request) -> tuple:
    """Per CLIP, the (D,) embedding of each region's prompt."""
    texts = [r.prompt.text for r in request.regions]
    return tuple(tuple(models.encode_texts(i, texts)) for i in range(len(models.clips))) if texts else ()


def prepare(request: Request, models, plan: Plan | None = None, stop_after: int | None = None) -> Job:
    """Fit a validated request to loaded models, once: size, prompt embeddings, memory plan, notes. `plan`
    overrides the plan and `stop_after` ends the run early (a replay of an interrupted run)."""
    check_models(request, models)
    cfg = request.cfg
    f = models.vqgan.factor
    size = cfg.size or default_size(models.device.type)
    rounded = round_size(size, f)
    notes = []
    if rounded != tuple(size):
        notes.append(f"Size {size[0]}x{size[1]} rounded to {rounded[0]}x{rounded[1]} (a multiple of {f}).")
    cfg = replace(cfg, size=rounded)
    texts = encode_story(models, request)
    base = base_plan = chosen = None
    if cfg.transformer:
        base = replace(cfg, transformer=None, size=base_size(rounded, cfg.base_size, f))
        base_plan = make_plan(models, base.size, cfg.cutn, max_memory=cfg.max_memory)
        if models.conditioning.kind == "class":
            chosen = choose_class(models, request)
    if plan is None:
        if base is not None and not cfg.refine_steps:
            plan = base_plan  # no CLIP step runs at the full size
        else:
            plan = make_plan(models, rounded, cfg.cutn, max_memory=cfg.max_memory, images=cfg.n)
    steps = f"{cfg.steps} step{'s' if cfg.steps != 1 else ''}" + (
        f" at {base.size[0]}x{base.size[1]}, then the transformer" if base else ""
    )
    seeds = (
        f"seed {cfg.seed}" if cfg.n == 1 else f"{cfg.n} images in one step, seeds {cfg.seed} to {cfg.seed + cfg.n - 1}"
    )
    notes.append(f"{rounded[0]}x{rounded[1]}, {seeds}, {steps} on {models.device.type} ({models.precision}).")
    for p in (base_plan, plan) if base else (plan,):
        if p.checkpointing or p.clip_chunk < cfg.cutn * cfg.n:
            notes.append(
                f"Memory plan: about {p.estimate / 2**30:.1f} of {p.budget / 2**30:.1f} GiB, with decoder "
                f"checkpointing {'on' if p.checkpointing else 'off'} and CLIP chunks of {p.clip_chunk}."
            )
    regions = encode_regions(models, request)
    return Job(request, cfg, plan, texts, tuple(notes), base, base_plan, chosen, stop_after, regions)


def split(job: Job) -> list[Job]:
    """--n N: the job's N images as jobs of one image each (GenerationConfig.images: seeds seed ... seed+N-1,
    each with n = 1, which its record holds and `vqclip replay` reruns alone), sharing the prompts' embeddings
    and the plan made for all N."""
    if job.cfg.n == 1:
        return [job]
    return [replace(job, cfg=cfg, request=replace(job.request, cfg=cfg)) for cfg in job.cfg.images()]


def pack(jobs: list[Job], models) -> list[Job]:
    """Jobs that run in one batched step (`vqclip batch --pack`): one plan made for all of them. They must differ
    only in what a batched step keeps per image (prompt and seed; a batch's lines do), not in size, cutouts or
    what follows one image through its run."""
    if len(jobs) == 1:
        return jobs
    first = jobs[0].cfg
    for job in jobs[1:]:
        if replace(job.cfg, prompt=first.prompt, seed=first.seed) != first:
            raise UsageError("Jobs packed into one step must share every setting but the prompt and the seed.")
    plan = make_plan(models, first.size, first.cutn, max_memory=first.max_memory, images=len(jobs))
    return [replace(job, plan=plan) for job in jobs]
