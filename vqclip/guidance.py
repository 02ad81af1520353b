"""Step 5 of a generation, the CLIP-guided part: encode the prompts, build the initial latent, run the
optimisation loop (vqclip.optimize) and report each step. Used by the plain run and by every CLIP stage
of a large canvas."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vqclip import memory
from vqclip.animation import latent_transform
from vqclip.device import autocast
from vqclip.errors import stop_if_signalled
from vqclip.events import Progress, ProgressFn, ignore
from vqclip.images import load_image, open_image, to_pil, to_tensor
from vqclip.optimize import Guide, Target, decode_image, embed_image_prompt, optimize
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
    return to_pil(decode_image(models.vqgan, z))


def guides(models, cfg, generator: torch.Generator) -> list[Guide]:
    """Each CLIP with its cutouts and its prompt targets per story phase (image and noise prompts in all)."""
    from vqclip.cutouts import Cutouts

    phases = parse_story(cfg.prompt) or [[]]
    out = []
    for clip in models.clips:
        cut = Cutouts(clip.input_size, cfg.cutn, cfg.cut_pow, cfg.augment, cfg.noise_fac, resample=cfg.resample)
        extra = []
        for item in cfg.image_prompts:
            p = parse_prompt(item)
            image = to_tensor(open_image(p.text)).to(models.device)
            with autocast(models.device, models.dtype):
                extra.append(Target(embed_image_prompt(clip, cut, image, cfg.size, generator), p.weight, p.stop))
        for item in cfg.noise_prompts:
            p = parse_prompt(item)
            gen = torch.Generator().manual_seed(int(p.text))
            dim = clip.embed_dim
            extra.append(Target(torch.randn(dim, generator=gen).to(models.device), p.weight, p.stop))
        per_phase = []
        for phase in phases:
            texts = clip.encode_text([p.text for p in phase]) if phase else []
            per_phase.append([Target(e, p.weight, p.stop) for e, p in zip(texts, phase, strict=True)] + extra)
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
        return vqgan.encode_codes(pixels * 2 - 1)


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
    drop_text_towers: bool = False,
) -> tuple[torch.Tensor, float, int]:
    """Optimise a latent under CLIP guidance for `cfg.steps` steps; returns (latent, final loss, steps done).

    Everything random is seeded from `cfg.seed` before anything random happens; `z` starts from a given
    latent instead of the config's init (a canvas's refinement); `stop_after` ends the loop early;
    `drop_text_towers` frees the CLIP text towers once the prompts are encoded (no later run needs them).
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    z = z.clone().float() if z is not None else initial_latent(models, cfg, generator)
    targets = guides(models, cfg, generator)
    if drop_text_towers:
        memory.drop_text_towers(models)
    n_phases = len(targets[0].phases)
    models.vqgan.set_checkpointing(plan.checkpointing)
    loop = optimize(
        models.vqgan,
        targets,
        z,
        cfg.steps,
        generator=generator,
        lr=cfg.lr,
        init_weight=cfg.init_weight,
        phase_of=lambda i: phase_at(i, n_phases, cfg.steps, cfg.change_prompt_every),
        dtype=models.dtype,
        clip_chunk=plan.clip_chunk,
        transform=latent_transform(models.vqgan, cfg.zoom, cfg.rotate, cfg.shift) if cfg.animated else None,
        transform_every=cfg.frames_every,
    )
    loss, done = float("nan"), 0
    for state in loop:
        stop_if_signalled()  # a signal whose exception was lost on its way up still ends the run here
        loss, done = state.loss, state.i
        if on_step is not None:  # first: a step that was reported is a step that is kept
            image = lambda latent=state.z: decode(models, latent)  # noqa: E731
            on_step(Step(done, cfg.steps, loss, list(state.losses), state.phase, stage, state.z, image))
        progress(Progress("optimize", done, cfg.steps, stage=stage, loss=loss, phase=state.phase))
        if done == stop_after:
            break
    return z.detach(), loss, done
