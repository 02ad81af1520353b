"""The VQGAN+CLIP latent optimisation loop (Crowson et al. 2022, "VQGAN-CLIP: Open Domain Image
Generation and Editing with Natural Language Guidance"; Esser et al. 2021 for the VQGAN).

Per step: quantise z with a straight-through gradient, decode, clamp with a gradient that still pushes
back into range, cut out and augment, encode with each CLIP, sum the weighted squared spherical
distances to the prompts, take an Adam step, clamp z to the codebook's per-channel range. Under fp16
autocast the loss is scaled dynamically, and a step whose gradient overflows is skipped.
"""

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vqclip.device import autocast as autocast_context
from vqclip.guidance import Guide
from vqclip.schedules import Tracker, lr_factor, make_optimizer


class _ClampWithGrad(torch.autograd.Function):
    """Clamp forward; backward lets the gradient through where it points back into [lo, hi]."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (grad * (x - x.clamp(ctx.lo, ctx.hi)) >= 0), None, None


def clamp_with_grad(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return _ClampWithGrad.apply(x, lo, hi)


def quantize_st(vqgan, z: torch.Tensor) -> torch.Tensor:
    """Nearest codebook vectors with a straight-through gradient (forward: z_q, backward: identity)."""
    z_q = vqgan.embed(vqgan.nearest(z)).to(z.dtype)
    return z + (z_q - z).detach()


def synth(vqgan, z: torch.Tensor, checkpointing: bool = False) -> torch.Tensor:
    """Latent (1, C, h, w) -> image (1, 3, H, W) in [0, 1], differentiable in z, in the caller's precision;
    `checkpointing` recomputes the decoder's blocks in the backward pass."""
    return clamp_with_grad(vqgan.decode(quantize_st(vqgan, z), checkpointing).float().add(1).div(2), 0, 1)


@torch.no_grad()
def decode_image(vqgan, z: torch.Tensor) -> torch.Tensor:
    """The pixels that are kept (the PNG, frames, previews): z decoded in fp32 with autocast off, whatever
    the run's precision (bf16 moves about 65% of 8-bit pixels, by up to 14 levels)."""
    with torch.autocast(z.device.type, enabled=False):
        return synth(vqgan, z.detach().float())


@dataclass(frozen=True)
class OptimStep:
    """The state after one step of `optimize`."""

    i: int  # steps done
    loss: float  # the total loss of this step (nan if an fp16 forward overflowed)
    losses: tuple[float, ...]  # each target's loss, CLIP by CLIP (regions after), the init pull, the pixel losses
    phase: int  # the story phase of this step
    z: torch.Tensor  # the latent after the step (a detached copy)
    skipped: bool = False  # the gradient was not finite: z was left as it was (fp16: and the scale lowered)
    scale: float = 1.0  # fp16: the loss scale the next step uses


def codebook_range(vqgan) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel min and max of the codebook, shaped (1, C, 1, 1)."""
    cb = vqgan.codebook.float()
    return cb.min(0).values.view(1, -1, 1, 1), cb.max(0).values.view(1, -1, 1, 1)


def untimed(stage: str) -> contextlib.AbstractContextManager:
    """The default `timer`: time nothing."""
    return contextlib.nullcontext()


def loss_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Dynamic loss scaling for fp16 autocast (a no-op otherwise): small gradients in the fp16 backward
    would flush to zero unscaled; an overflow skips the step and halves the scale. The scale may grow
    again after 100 clean steps (torch's 2000 suits training runs, not 300-step optimisations)."""
    return torch.amp.GradScaler(device.type, growth_interval=100, enabled=dtype == torch.float16)


def clip_losses(guide: Guide, targets: list, pixels, generator, chunk=None, amp=None, timer=None, scaler=None) -> list:
    """Back-propagate one CLIP's losses (times the scaler's scale) into `pixels.grad`, `chunk` cutouts at a
    time; return each target's loss, unscaled. All cutouts are drawn before the first chunk, so neither the
    losses nor the gradient depend on the chunk size."""
    if not targets:
        return []
    amp, timer = amp or contextlib.nullcontext(), timer or untimed
    scaler = scaler or loss_scaler(pixels.device, None)
    cutn = guide.cutouts.cutn
    chunk = chunk or cutn
    draw = guide.cutouts.draw(pixels.shape[2], pixels.shape[3], generator)
    totals = [torch.zeros((), device=pixels.device) for _ in targets]
    for start in range(0, cutn, chunk):
        part = draw[start : start + chunk]
        with timer("cutouts"), amp:
            cuts = guide.cutouts(pixels, part)
        with timer("clip"), amp:
            embeds = guide.clip.encode_image(cuts).float()
            parts = [t.loss(embeds) * (len(part) / cutn) for t in targets]
        with timer("backward"):
            scaler.scale(torch.stack(parts).sum()).backward()
        totals = [total + p.detach() for total, p in zip(totals, parts, strict=True)]
    return totals


def region_losses(guide: Guide, pixels, generator, chunk=None, amp=None, timer=None, scaler=None) -> list:
    """Each region's losses, its cutouts drawn inside its box; the gradient is added into `pixels.grad`."""
    out = []
    for region in guide.regions:
        x0, y0, x1, y1 = region.box
        part = pixels.detach()[:, :, y0:y1, x0:x1].clone().requires_grad_(True)
        out += clip_losses(guide, region.targets, region.masked(part), generator, chunk, amp, timer, scaler)
        if part.grad is not None:
            pixels.grad[:, :, y0:y1, x0:x1] += part.grad
    return out


def optimize(
    vqgan,
    guides: list[Guide],
    z: torch.Tensor,
    steps: int,
    *,
    generator: torch.Generator,
    lr: float = 0.1,
    init_weight: float = 0.0,
    phase_of: Callable[[int], int] = lambda i: 0,
    dtype: torch.dtype | None = None,
    clip_chunk: int | None = None,
    checkpointing: bool = False,
    timer=None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    transform_every: int = 0,
    optimizer: str = "adam",
    lr_schedule: str = "constant",
    pixel_loss: Callable[[torch.Tensor], list] | None = None,
    tile: bool = False,
    tracker: Tracker | None = None,
) -> Iterator[OptimStep]:
    """Optimise z in place; yield an OptimStep after each step.

    Args:
        vqgan: a frozen VQGAN (vqclip.models.vqgan.VQGAN).
        guides: the CLIP models with their cutouts and prompt targets.
        z: the initial latent (1, C, h, w), float32; optimised in place.
        steps: number of Adam steps.
        generator: the source of every random draw in the loop (cutouts, augmentations, noise).
        lr: Adam step size.
        init_weight: weight of the MSE pull towards the initial latent (Crowson's notebook).
        phase_of: maps a step to its story phase.
        dtype: the autocast dtype of the decoder and CLIP passes (None: fp32); fp16 adds loss scaling.
            The latent, the losses and Adam stay fp32, and so does the nearest-code search.
        clip_chunk: encode at most this many cutouts at once (bounds CLIP's activation memory).
        checkpointing: recompute the decoder's blocks in the backward pass (bounds its activation memory).
        timer: optional `timer(stage)` context manager factory, for per-stage timings (benchmarks).
        transform: optional z -> z applied every `transform_every` steps (animation); Adam restarts.
        optimizer: the optimiser's name (vqclip.schedules.OPTIMIZERS); lr_schedule: how lr changes over the steps.
        pixel_loss: optional image -> [weighted losses] (vqclip.losses.PixelLosses), added to the step's loss.
        tile: roll the image by a random offset (drawn from `generator`) before the global prompts' cutouts.
        tracker: optional vqclip.schedules.Tracker: scores each step's image on fixed cutouts, keeps the best
            latent, and ends the loop (before the step) once it says so (--auto-stop).
    """
    z_init = z.detach().clone()
    z_min, z_max = codebook_range(vqgan)
    z.requires_grad_(True)
    opt = make_optimizer(optimizer, [z], lr)
    amp = autocast_context(z.device, dtype)
    scaler = loss_scaler(z.device, dtype)
    timer = timer or untimed
    for i in range(steps):
        phase = phase_of(i)
        opt.zero_grad(set_to_none=True)
        # 1. Decode the quantised latent.
        with timer("decoder"), amp:
            image = synth(vqgan, z, checkpointing)
        # 2. CLIP losses on the cutouts, back-propagated to the image (a leaf) chunk by chunk.
        if tracker is not None:
            with timer("tracker"), amp:
                tracker.observe(i, phase, z, tracker.guide_loss(guides, phase, image.detach(), clip_chunk))
            if tracker.should_stop(i):
                tracker.stopped_at = i
                return
        pixels = image.detach().requires_grad_(True)
        pixels.grad = torch.zeros_like(pixels)
        view, shift = pixels, (0, 0)
        if tile:  # a random torus roll: the seams fall inside the cutouts, where CLIP sees them
            shift = tuple(int(torch.randint(n, (), generator=generator)) for n in pixels.shape[2:])
            view = pixels.detach().roll(shift, (2, 3)).requires_grad_(True)
        losses = []
        for guide in guides:
            losses += clip_losses(guide, guide.phases[phase], view, generator, clip_chunk, amp, timer, scaler)
            losses += region_losses(guide, pixels, generator, clip_chunk, amp, timer, scaler)
        if tile and view.grad is not None:
            pixels.grad += view.grad.roll((-shift[0], -shift[1]), (2, 3))
        # 3. Back through the decoder once, plus the pull towards the initial latent and the pixel losses.
        with timer("backward"):
            if pixel_loss is not None:
                extra = pixel_loss(pixels)
                if extra:
                    scaler.scale(torch.stack(extra).sum()).backward()
            image.backward(pixels.grad)
            if init_weight:
                pull = F.mse_loss(z, z_init) * (init_weight / 2)
                scaler.scale(pull).backward()
                losses.append(pull.detach())
            if pixel_loss is not None:
                losses += [e.detach() for e in extra]
        # 4. Adam step, skipped when the gradient is not finite (fp16: the scaler also lowers its scale), so
        # z never takes a NaN; then keep z in the codebook's range.
        with timer("optimiser"):
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(lr_schedule, i, steps)
            if scaler.is_enabled():
                scale = scaler.get_scale()
                scaler.step(opt)
                scaler.update()
                skipped = scaler.get_scale() < scale
            else:
                skipped = not bool(torch.isfinite(z.grad).all())
                if not skipped:
                    opt.step()
            with torch.no_grad():
                z.copy_(torch.maximum(torch.minimum(z, z_max), z_min))
        if transform is not None and transform_every and (i + 1) % transform_every == 0 and i + 1 < steps:
            with torch.no_grad():
                z.copy_(transform(z.detach()))
            opt = make_optimizer(optimizer, [z], lr)  # the moment estimates belonged to the old image
        values = torch.stack(losses).tolist() if losses else []
        yield OptimStep(
            i + 1,
            math.fsum(values),
            tuple(values),
            phase,
            z.detach().clone(),
            skipped=skipped,
            scale=scaler.get_scale(),
        )
    if tracker is not None and steps:  # the last step's latent is scored too
        with torch.no_grad(), amp:
            image = synth(vqgan, z, checkpointing)
            tracker.observe(steps, phase_of(steps - 1), z, tracker.guide_loss(guides, phase_of(steps - 1), image))
