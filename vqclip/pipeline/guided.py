"""The CLIP-guided stage: build the initial latent and the guides (each CLIP with its cutouts and targets),
run the optimisation loop (vqclip.optimize) and report each step. A plain run is this stage alone; a large
canvas runs it at the base size and again to refine (vqclip.pipeline.canvas)."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vqclip.animation import latent_transform
from vqclip.device import autocast
from vqclip.errors import stop_if_signalled
from vqclip.events import Progress, ProgressFn, Step, ignore
from vqclip.guidance import Guide, RegionTargets, Target, embed_image_prompt
from vqclip.images import fit, to_pil, to_tensor
from vqclip.losses import PixelLosses
from vqclip.optimize import decode_image, optimize_batch
from vqclip.prompts import phase_at
from vqclip.schedules import Tracker
from vqclip.tiling import circular

StepFn = Callable[[Step], None]


@dataclass(frozen=True)
class StageResult:
    """What a stage ends with: the latent, the last loss, the steps done (of the whole run) and, for a
    canvas, what the transformer pass did."""

    z: torch.Tensor
    loss: float
    steps_done: int
    canvas: dict | None = None
    tracker: dict | None = None  # --keep best / --auto-stop: the step kept, where the run stopped, the guide losses


def decode(models, z: torch.Tensor, tile: bool = False):
    """A latent as a PIL image, decoded in fp32 whatever the run's precision (the pixels that are kept);
    `tile`: with the decoder padding circularly, as a tiled run decodes (vqclip.tiling)."""
    with circular(models.vqgan, tile):
        return to_pil(decode_image(models.vqgan, z))


def build_guides(
    models, texts, request, size: tuple[int, int], generator: torch.Generator, region_texts=()
) -> list[Guide]:
    """Each CLIP with its cutouts and its prompt targets per story phase: the job's text embeddings, plus the
    image and noise prompts in every phase (image prompts are embedded from cutouts at this `size`), and the
    region prompts with their boxes in pixels of this `size`."""
    from vqclip.cutouts import Cutouts

    cfg = request.cfg
    out = []
    for k, (clip, per_clip) in enumerate(zip(models.clips, texts, strict=True)):
        cut = Cutouts(
            clip.input_size, cfg.cutn, cfg.cut_pow, cfg.augmentations, cfg.noise_fac, cfg.resample, cfg.cut_method
        )
        extra = []
        for p in request.image_prompts:
            image = to_tensor(p.image).to(models.device)
            with autocast(models.device, models.dtype):
                extra.append(Target(embed_image_prompt(clip, cut, image, size, generator), p.weight, p.stop))
        for p in request.noise_prompts:
            gen = torch.Generator().manual_seed(p.seed)
            extra.append(Target(torch.randn(clip.embed_dim, generator=gen).to(models.device), p.weight, p.stop))
        phases = request.story or ((),)
        per_phase = [
            [Target(e, p.weight, p.stop) for e, p in zip(embeds, phase, strict=True)] + extra
            for embeds, phase in zip(per_clip, phases, strict=True)
        ]
        regions = [
            RegionTargets.of(r, size, [Target(e, r.prompt.weight, r.prompt.stop)], models.device)
            for r, e in zip(request.regions, region_texts[k] if region_texts else (), strict=True)
        ]
        out.append(Guide(clip, cut, per_phase, regions))
    return out


def initial_latent(models, request, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """The starting latent: an encoded init image, noise image or other pixel init (vqclip.inits), or random
    codebook tokens."""
    vqgan = models.vqgan
    f = vqgan.factor
    w, h = size
    with torch.no_grad():
        if request.init_image is not None:
            pixels = to_tensor(fit(request.init_image.image, w, h)).to(models.device)
        elif request.cfg.init == "noise":
            pixels = torch.rand(1, 3, h, w, generator=generator).to(models.device)
        elif request.cfg.init != "tokens":
            from vqclip.inits import init_pixels

            pixels = init_pixels(request.cfg.init, h, w, f, generator).to(models.device)
        else:
            idx = torch.randint(vqgan.config.n_embed, (1, h // f, w // f), generator=generator)
            return vqgan.embed(idx.to(models.device)).float()
        return vqgan.encode_codes(pixels * 2 - 1)


def optimise(
    job,
    models,
    cfg,
    plan,
    z: torch.Tensor | None = None,
    *,
    stage: str = "",
    first: int = 0,
    progress: ProgressFn = ignore,
    on_step: StepFn | None = None,
    stop_after: int | None = None,
    anchor: torch.Tensor | None = None,
) -> StageResult:
    """Optimise a latent under CLIP guidance for `cfg.steps` steps at `cfg.size`, with `plan`'s memory
    settings. Everything random is seeded from `cfg.seed` before anything random happens; `z` starts from a
    given latent instead of the request's init (a canvas's refinement, a restyled frame), and `anchor` is
    what --init-weight pulls towards instead of that start (a restyled frame's own codes). Steps are counted
    from `first` (the steps of earlier stages), and the loop ends after step `stop_after` of the whole run.
    One image: `optimise_many` with a batch of one."""
    zs = [z] if z is not None else None
    return optimise_many(
        [job],
        models,
        [cfg],
        plan,
        zs,
        stage=stage,
        first=first,
        progress=progress,
        on_step=on_step,
        stop_after=stop_after,
        anchors=[anchor] if anchor is not None else None,
    )[0]


def optimise_many(
    jobs: list,
    models,
    cfgs: list,
    plan,
    zs: list | None = None,
    *,
    stage: str = "",
    first: int = 0,
    progress: ProgressFn = ignore,
    on_step: StepFn | None = None,
    stop_after: int | None = None,
    anchors: list | None = None,
) -> list[StageResult]:
    """`optimise` for several images in one batched step (--n, batch --pack): image b is job b at config b,
    with its own generator seeded from its own seed, its own initial latent, guides and story phases, so it
    is that config's separate run up to float rounding. The configs differ in prompt and seed only; `plan`
    is made for all of them together. `on_step` gets each image's Step (its `index` in the batch)."""
    cfg = cfgs[0]
    generators = [torch.Generator().manual_seed(c.seed) for c in cfgs]
    if zs is None:
        zs = [initial_latent(models, j.request, c.size, g) for j, c, g in zip(jobs, cfgs, generators, strict=True)]
    else:
        zs = [z.clone().float() for z in zs]
    guides = [
        build_guides(models, j.texts, j.request, c.size, g, j.region_texts)
        for j, c, g in zip(jobs, cfgs, generators, strict=True)
    ]
    phase_of = [_phases(len(g[0].phases), c) for g, c in zip(guides, cfgs, strict=True)]
    pixel_loss = PixelLosses(
        cfg.tv, cfg.saturation, cfg.symmetry, jobs[0].request.palette, cfg.palette_weight, wrap=cfg.tile
    )
    tracker = Tracker(cfg.seed, cfg.keep == "best", cfg.auto_stop) if cfg.keep == "best" or cfg.auto_stop else None
    loop = optimize_batch(
        models.vqgan,
        guides,
        zs,
        cfg.steps,
        generators=generators,
        lr=cfg.lr,
        init_weight=cfg.init_weight,
        phase_of=phase_of,
        dtype=models.dtype,
        clip_chunk=plan.clip_chunk,
        checkpointing=plan.checkpointing,
        transform=latent_transform(models.vqgan, cfg.zoom, cfg.rotate, cfg.shift) if cfg.animated else None,
        transform_every=cfg.frames_every,
        optimizer=cfg.optimizer,
        lr_schedule=cfg.lr_schedule,
        pixel_loss=pixel_loss if pixel_loss else None,
        tile=cfg.tile,
        tracker=tracker,
        anchors=anchors,
    )
    with circular(models.vqgan, cfg.tile):
        return _follow(loop, jobs[0], models, cfg, zs, tracker, stage, first, progress, on_step, stop_after)


def _phases(n_phases: int, cfg):
    return lambda i: phase_at(i, n_phases, cfg.steps, cfg.change_prompt_every)


def _follow(loop, job, models, cfg, zs, tracker, stage, first, progress, on_step, stop_after) -> list[StageResult]:
    """Run the loop, reporting each step (one Step per image); each image's result."""
    losses, done = [float("nan")] * len(zs), first
    if stop_after is not None and stop_after <= first:
        return [StageResult(z.detach(), loss, done) for z, loss in zip(zs, losses, strict=True)]
    for states in loop:
        stop_if_signalled()  # a signal whose exception was lost on its way up still ends the run here
        losses, done = [s.loss for s in states], first + states[0].i
        for index, state in enumerate(states):
            if on_step is not None:  # first: a step that was reported is a step that is kept
                image = lambda latent=state.z: decode(models, latent, cfg.tile)  # noqa: E731
                on_step(
                    Step(
                        done, job.total_steps, state.loss, list(state.losses), state.phase, stage, state.z, image, index
                    )
                )
        loss = losses[0] if len(losses) == 1 else math.fsum(losses) / len(losses)
        progress(Progress("optimize", states[0].i, cfg.steps, stage=stage, loss=loss, phase=states[0].phase))
        if done == stop_after:
            break
    else:
        if tracker is not None:  # one image (optimize_batch follows no batch)
            z = tracker.best_z if tracker.keep_best and tracker.best_z is not None else zs[0]
            return [StageResult(z.detach(), losses[0], done, tracker=tracker.record())]
    return [StageResult(z.detach(), loss, done) for z, loss in zip(zs, losses, strict=True)]


def run_guided(
    job, models, *, progress: ProgressFn = ignore, on_step: StepFn | None = None, stop_after: int | None = None
) -> StageResult:
    """The plain run: one CLIP-guided optimisation of the job at its size."""
    return optimise(job, models, job.cfg, job.plan, progress=progress, on_step=on_step, stop_after=stop_after)


def run_guided_many(jobs: list, models, *, progress: ProgressFn = ignore, on_step: StepFn | None = None) -> list:
    """Plain runs of several jobs in one batched step (see optimise_many); their plan is the first job's, made
    for all of them (vqclip.pipeline.prepare.split and pack)."""
    cfgs = [j.cfg for j in jobs]
    return optimise_many(jobs, models, cfgs, jobs[0].plan, progress=progress, on_step=on_step)
