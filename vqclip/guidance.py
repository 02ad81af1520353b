"""Step 5 of a generation, the CLIP-guided part: encode the prompts, build the initial latent, run the
optimisation loop (vqclip.optimize) and report each step. Used by the plain run and by every CLIP stage
of a large canvas."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vqclip.animation import latent_transform
from vqclip.device import autocast
from vqclip.events import Progress, ProgressFn, ignore
from vqclip.images import load_image, to_pil
from vqclip.optimize import Guide, Target, optimize, synth
from vqclip.prompts import parse_prompt, parse_story, phase_at


@dataclass
class Step:
    """The state after one optimisation step, for callers that watch the image (frames, previews)."""

    i: int  # steps done in this stage
    steps: int  # steps of this stage
    loss: float
    losses: list[float]
    phase: int  # story phase
    stage: str  # "" for a plain run; "base" or "refine" on a large canvas
    z: torch.Tensor  # the latent (detached)
    image: Callable  # () -> PIL.Image of the latent, decoded in fp32


StepFn = Callable[[Step], None]


def decode(models, z: torch.Tensor):
    """A latent as a PIL image, decoded in fp32 whatever the run's precision (the pixels that are kept)."""
    with torch.no_grad():
        return to_pil(synth(models.vqgan, z.detach().float()))


def guides(models, cfg) -> list[Guide]:
    """Each CLIP with its cutouts and its prompt targets per story phase (image and noise prompts in all)."""
    from vqclip.cutouts import Cutouts

    phases = parse_story(cfg.prompt) or [[]]
    out = []
    for clip in models.clips:
        extra = []
        for item in cfg.image_prompts:
            p = parse_prompt(item)
            pixels = load_image(p.text, clip.input_size, clip.input_size).to(models.device)
            with torch.no_grad(), autocast(models.device, models.dtype):
                extra.append(Target(clip.encode_image(pixels).float()[0], p.weight, p.stop))
        for item in cfg.noise_prompts:
            p = parse_prompt(item)
            gen = torch.Generator().manual_seed(int(p.text))
            dim = clip.embed_dim
            extra.append(Target(torch.randn(dim, generator=gen).to(models.device), p.weight, p.stop))
        per_phase = []
        for phase in phases:
            texts = clip.encode_text([p.text for p in phase]) if phase else []
            per_phase.append([Target(e, p.weight, p.stop) for e, p in zip(texts, phase, strict=True)] + extra)
        cut = Cutouts(clip.input_size, cfg.cutn, cfg.cut_pow, cfg.augment, cfg.noise_fac)
        out.append(Guide(clip, cut, per_phase))
    return out


def initial_latent(models, cfg, generator: torch.Generator) -> torch.Tensor:
    """The starting latent: an encoded init image or noise image, or random codebook tokens."""
    vqgan = models.vqgan
    f = vqgan.factor
    w, h = cfg.size
    with torch.no_grad():
        if cfg.init_image is not None:
            pixels = load_image(cfg.init_image, w, h).to(models.device)
        elif cfg.init == "noise":
            pixels = torch.rand(1, 3, h, w, generator=generator).to(models.device)
        else:
            idx = torch.randint(vqgan.config.n_embed, (1, h // f, w // f), generator=generator)
            return vqgan.embed(idx.to(models.device)).float()
        return vqgan.encode(pixels * 2 - 1).float()


def run_guided(
    models,
    cfg,
    plan,
    z: torch.Tensor | None = None,
    *,
    stage: str = "",
    progress: ProgressFn = ignore,
    on_step: StepFn | None = None,
    stop_after: int | None = None,
) -> tuple[torch.Tensor, float, int]:
    """Optimise a latent under CLIP guidance for `cfg.steps` steps; returns (latent, final loss, steps done).

    Everything random is seeded from `cfg.seed` before anything random happens; `z` starts from a given
    latent instead of the config's init (a canvas's refinement); `stop_after` ends the loop early.
    """
    torch.manual_seed(cfg.seed)  # the cutouts and augmentations draw from the global generator
    generator = torch.Generator().manual_seed(cfg.seed)
    targets = guides(models, cfg)
    z = z.clone().float() if z is not None else initial_latent(models, cfg, generator)
    n_phases = len(targets[0].phases)
    run_autocast = autocast(models.device, models.dtype)
    models.vqgan.set_checkpointing(plan.checkpointing)
    loop = optimize(
        models.vqgan,
        targets,
        z,
        cfg.steps,
        lr=cfg.lr,
        init_weight=cfg.init_weight,
        phase_of=lambda i: phase_at(i, n_phases, cfg.steps, cfg.change_prompt_every),
        autocast=run_autocast,
        clip_chunk=plan.clip_chunk,
        transform=latent_transform(models.vqgan, cfg.zoom, cfg.rotate, cfg.shift, run_autocast)
        if cfg.animated
        else None,
        transform_every=cfg.frames_every,
    )
    loss, done = float("nan"), 0
    for state in loop:
        loss, done = state["loss"], state["i"]
        if on_step is not None:  # first: a step that was reported is a step that is kept
            latent = state["z"]
            image = lambda latent=latent: decode(models, latent)  # noqa: E731
            on_step(Step(done, cfg.steps, loss, state["losses"], state["phase"], stage, latent, image))
        progress(Progress("optimize", done, cfg.steps, stage=stage, loss=loss, phase=state["phase"]))
        if done == stop_after:
            break
    return z.detach(), loss, done
