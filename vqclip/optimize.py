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


def clip_losses(
    guide: Guide, targets: list, pixels, generator, chunk=None, amp=None, timer=None, scaler=None, progress=0.0
) -> list:
    """Back-propagate one CLIP's losses (times the scaler's scale) into `pixels.grad`, `chunk` cutouts at a
    time; return each target's loss, unscaled. All cutouts are drawn before the first chunk, so neither the
    losses nor the gradient depend on the chunk size; `progress` (step / steps) is the cut method's. One image:
    `batch_clip_losses` with a batch of one."""
    return batch_clip_losses([guide], [targets], [pixels], [generator], chunk, amp, timer, [scaler], progress)[0]


def _passes(sizes: dict, cutn: int, chunk: int) -> list:
    """The CLIP passes of a batched step: lists of (image, first cutout, cutouts), at most `chunk` cutouts a
    pass; an image's cutouts stay in one pass when `chunk` holds them all, else they go in pieces of `chunk`."""
    piece = min(chunk, cutn)
    passes, current, filled = [], [], 0
    for b in sizes:
        for start in range(0, cutn, piece):
            n = min(piece, cutn - start)
            if current and filled + n > chunk:
                passes.append(current)
                current, filled = [], 0
            current.append((b, start, n))
            filled += n
    return passes + ([current] if current else [])


def batched_kernels(device: torch.device) -> bool:
    """Whether a batched step (--n, batch --pack) runs the decoder and CLIP once for all its images (GPUs), or
    image by image (the CPU). A batched convolution or matmul sums in another order than one image's, and the
    optimisation amplifies that to other pixels (12-37 levels of 255 after 8 steps at 64 px; tests/test_pack.py),
    while on the CPU batching gains only 7-11 % (benchmarks/RESULTS.md, "--n"). So on the CPU each image is bit
    for bit its separate run, and `vqclip replay` of it gives its pixels; a GPU gets the batch's throughput."""
    return device.type != "cpu"


def batch_clip_losses(
    guides: list[Guide],
    targets: list,
    pixels: list,
    generators: list,
    chunk=None,
    amp=None,
    timer=None,
    scalers=None,
    progress=0.0,
) -> list:
    """`clip_losses` for a batch of images that share one CLIP: image b has its guide (its cutout maker),
    its targets, its pixels (1, 3, H, W) (a leaf; the gradient goes into its `.grad`), its generator and its
    loss scaler. Each image draws its cutouts from its own generator, as it would alone; the cutouts of all
    images go through CLIP together, `chunk` cutouts a pass (default: all of them), in one call or image by
    image (`batched_kernels`). Returns each image's target losses, unscaled."""
    amp, timer = amp or contextlib.nullcontext(), timer or untimed
    scalers = [s or loss_scaler(p.device, None) for s, p in zip(scalers or [None] * len(pixels), pixels, strict=True)]
    out = [[] for _ in pixels]
    active = [b for b, t in enumerate(targets) if t]
    if not active:
        return out
    cutn = guides[active[0]].cutouts.cutn
    draws = {b: guides[b].cutouts.draw(*pixels[b].shape[2:], generators[b], progress) for b in active}
    out = [[torch.zeros((), device=p.device) for _ in t] for p, t in zip(pixels, targets, strict=True)]
    for group in _passes(draws, cutn, chunk or cutn * len(active)):
        with timer("cutouts"), amp:
            cuts = [guides[b].cutouts(pixels[b], draws[b][start : start + n]) for b, start, n in group]
            cuts = cuts[0] if len(cuts) == 1 else torch.cat(cuts)  # (cutouts of the pass, 3, s, s)
        with timer("clip"), amp:
            clip = guides[active[0]].clip
            if len(group) > 1 and not batched_kernels(cuts.device):  # image by image: see batched_kernels
                embeds = torch.cat([clip.encode_image(c) for c in cuts.split([n for _, _, n in group])]).float()
            else:
                embeds = clip.encode_image(cuts).float()
            parts, offset = [], 0
            for b, _, n in group:
                mine = embeds if len(group) == 1 else embeds[offset : offset + n]
                parts.append([t.loss(mine) * (n / cutn) for t in targets[b]])
                offset += n
        with timer("backward"):
            scaled = [scalers[b].scale(torch.stack(p).sum()) for (b, _, _), p in zip(group, parts, strict=True)]
            (scaled[0] if len(scaled) == 1 else torch.stack(scaled).sum()).backward()
        for (b, _, _), p in zip(group, parts, strict=True):
            out[b] = [total + x.detach() for total, x in zip(out[b], p, strict=True)]
    return out


def region_losses(guide: Guide, pixels, generator, chunk=None, amp=None, timer=None, scaler=None, progress=0.0) -> list:
    """Each region's losses, its cutouts drawn inside its box; the gradient is added into `pixels.grad`."""
    return batch_region_losses([guide], [pixels], [generator], chunk, amp, timer, [scaler], progress)[0]


def batch_region_losses(
    guides: list[Guide], pixels: list, generators: list, chunk=None, amp=None, timer=None, scalers=None, progress=0.0
):
    """`region_losses` for a batch of images sharing one CLIP (see batch_clip_losses)."""
    out = [[] for _ in pixels]
    for r, region in enumerate(guides[0].regions):
        x0, y0, x1, y1 = region.box
        parts = [p.detach()[:, :, y0:y1, x0:x1].clone().requires_grad_(True) for p in pixels]
        targets = [g.regions[r].targets for g in guides]
        views = [g.regions[r].masked(part) for g, part in zip(guides, parts, strict=True)]  # a mask's outside: grey
        losses = batch_clip_losses(guides, targets, views, generators, chunk, amp, timer, scalers, progress)
        for b, (p, part) in enumerate(zip(pixels, parts, strict=True)):
            out[b] += losses[b]
            if part.grad is not None:
                p.grad[:, :, y0:y1, x0:x1] += part.grad
    return out


def optimize(
    vqgan, guides: list[Guide], z: torch.Tensor, steps: int, *, generator: torch.Generator, phase_of=None, **kw
):
    """Optimise one latent z (1, C, h, w) in place; yield an OptimStep after each step: `optimize_batch`
    with a batch of one (its arguments, one image's)."""
    phases = [phase_of] if phase_of is not None else None
    for states in optimize_batch(vqgan, [guides], [z], steps, generators=[generator], phase_of=phases, **kw):
        yield states[0]


def optimize_batch(
    vqgan,
    guides: list[list[Guide]],
    zs: list[torch.Tensor],
    steps: int,
    *,
    generators: list[torch.Generator],
    lr: float = 0.1,
    init_weight: float = 0.0,
    phase_of: list[Callable[[int], int]] | None = None,
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
    anchors: list[torch.Tensor | None] | None = None,
) -> Iterator[list[OptimStep]]:
    """Optimise B latents in place, each as it would be optimised alone, with one decoder pass and one CLIP
    pass (per `clip_chunk` cutouts) per step for all of them; yield a list of B OptimSteps after each step.

    Each image keeps everything of its own: its generator (its cutouts, augmentations, noise, roll), its
    targets, its story phases, its optimiser and loss scale, and its skipped steps, so image b is image b's
    separate run: bit for bit where the kernels run image by image (the CPU), up to float rounding where
    they are batched (GPUs: the batched matmuls and convolutions sum in another order; see batched_kernels).

    Args:
        vqgan: a frozen VQGAN (vqclip.models.vqgan.VQGAN).
        guides: per image, the CLIP models with their cutouts and prompt targets (the same CLIPs in each).
        zs: the initial latents, each (1, C, h, w), float32, the same size; optimised in place.
        steps: number of Adam steps.
        generators: per image, the source of every random draw in the loop (cutouts, augmentations, noise).
        lr: Adam step size.
        init_weight: weight of the MSE pull towards the initial latent (Crowson's notebook).
        phase_of: per image, maps a step to its story phase (default: one phase).
        dtype: the autocast dtype of the decoder and CLIP passes (None: fp32); fp16 adds loss scaling.
            The latent, the losses and Adam stay fp32, and so does the nearest-code search.
        clip_chunk: encode at most this many cutouts at once, all images together (bounds CLIP's activation
            memory; default: every image's cutouts in one pass).
        checkpointing: recompute the decoder's blocks in the backward pass (bounds its activation memory).
        timer: optional `timer(stage)` context manager factory, for per-stage timings (benchmarks).
        transform: optional z -> z applied every `transform_every` steps (animation); Adam restarts.
        optimizer: the optimiser's name (vqclip.schedules.OPTIMIZERS); lr_schedule: how lr changes over the steps.
        pixel_loss: optional image -> [weighted losses] (vqclip.losses.PixelLosses), added to each image's loss.
        tile: roll each image by a random offset (drawn from its generator) before the global prompts' cutouts.
        tracker: optional vqclip.schedules.Tracker (one image only): scores each step's image on fixed cutouts,
            keeps the best latent, and ends the loop (before the step) once it says so (--auto-stop).
        anchors: per image, what `init_weight` pulls towards, if not its initial z (a restyled frame's codes).
    """
    batch = len(zs)
    if tracker is not None and batch != 1:
        raise ValueError("a Tracker follows one image; optimise a batch without one")
    phase_of = phase_of or [lambda i: 0] * batch
    anchors = anchors or [None] * batch
    z_inits = [(a if a is not None else z).detach().clone() for z, a in zip(zs, anchors, strict=True)]
    z_min, z_max = codebook_range(vqgan)
    for z in zs:
        z.requires_grad_(True)
    opts = [make_optimizer(optimizer, [z], lr) for z in zs]  # one each: an image's skipped step is its own
    amp = autocast_context(zs[0].device, dtype)
    scalers = [loss_scaler(z.device, dtype) for z in zs]
    timer = timer or untimed
    for i in range(steps):
        phases = [p(i) for p in phase_of]
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        # 1. Decode the quantised latents: all images in one pass, or image by image (batched_kernels).
        with timer("decoder"), amp:
            if batch == 1 or batched_kernels(zs[0].device):
                image = synth(vqgan, zs[0] if batch == 1 else torch.cat(zs), checkpointing)  # (B, 3, H, W)
            else:
                image = torch.cat([synth(vqgan, z, checkpointing) for z in zs])
        # 2. CLIP losses on the cutouts, back-propagated to each image (a leaf) chunk by chunk.
        if tracker is not None:
            with timer("tracker"), amp:
                tracker.observe(
                    i, phases[0], zs[0], tracker.guide_loss(guides[0], phases[0], image.detach(), clip_chunk)
                )
            if tracker.should_stop(i):
                tracker.stopped_at = i
                return
        pixels = [p.clone().requires_grad_(True) for p in image.detach().split(1)]
        for p in pixels:
            p.grad = torch.zeros_like(p)
        views, shifts = pixels, [(0, 0)] * batch
        if tile:  # a random torus roll: the seams fall inside the cutouts, where CLIP sees them
            shifts = [tuple(int(torch.randint(n, (), generator=g)) for n in pixels[0].shape[2:]) for g in generators]
            views = [p.detach().roll(s, (2, 3)).requires_grad_(True) for p, s in zip(pixels, shifts, strict=True)]
        losses = [[] for _ in zs]
        for k in range(len(guides[0])):
            mine = [g[k] for g in guides]
            targets = [g.phases[phase] for g, phase in zip(mine, phases, strict=True)]
            for b, part in enumerate(
                batch_clip_losses(mine, targets, views, generators, clip_chunk, amp, timer, scalers, i / steps)
            ):
                losses[b] += part
            regions = batch_region_losses(mine, pixels, generators, clip_chunk, amp, timer, scalers, i / steps)
            for b, part in enumerate(regions):
                losses[b] += part
        if tile:
            for p, v, s in zip(pixels, views, shifts, strict=True):
                if v.grad is not None:
                    p.grad += v.grad.roll((-s[0], -s[1]), (2, 3))
        # 3. Back through the decoder once, plus the pull towards the initial latent and the pixel losses.
        with timer("backward"):
            extras = [pixel_loss(p) if pixel_loss is not None else [] for p in pixels]
            scaled = [scalers[b].scale(torch.stack(e).sum()) for b, e in enumerate(extras) if e]
            if scaled:
                (scaled[0] if len(scaled) == 1 else torch.stack(scaled).sum()).backward()
            image.backward(pixels[0].grad if batch == 1 else torch.cat([p.grad for p in pixels]))
            if init_weight:
                pulls = [F.mse_loss(z, z0) * (init_weight / 2) for z, z0 in zip(zs, z_inits, strict=True)]
                scaled = [scaler.scale(pull) for scaler, pull in zip(scalers, pulls, strict=True)]
                (scaled[0] if batch == 1 else torch.stack(scaled).sum()).backward()
                for b, pull in enumerate(pulls):
                    losses[b].append(pull.detach())
            for b, extra in enumerate(extras):
                losses[b] += [e.detach() for e in extra]
        # 4. Adam steps, each image's skipped when its gradient is not finite (fp16: its scaler also lowers its
        # scale), so z never takes a NaN; then keep z in the codebook's range.
        skipped = []
        with timer("optimiser"):
            # each image's gradient checked, all in one device sync
            finite = torch.stack([torch.isfinite(z.grad).all() for z in zs]).tolist()
            for z, opt, scaler, ok in zip(zs, opts, scalers, finite, strict=True):
                for group in opt.param_groups:
                    group["lr"] = lr * lr_factor(lr_schedule, i, steps)
                if scaler.is_enabled():
                    scale = scaler.get_scale()
                    scaler.step(opt)
                    scaler.update()
                    skipped.append(scaler.get_scale() < scale)
                else:
                    skipped.append(not ok)
                    if ok:
                        opt.step()
                with torch.no_grad():
                    z.copy_(torch.maximum(torch.minimum(z, z_max), z_min))
        if transform is not None and transform_every and (i + 1) % transform_every == 0 and i + 1 < steps:
            with torch.no_grad():
                for z in zs:
                    z.copy_(transform(z.detach()))
            opts = [make_optimizer(optimizer, [z], lr) for z in zs]  # the moment estimates belonged to the old image
        flat = torch.cat([torch.stack(part) for part in losses if part]).tolist() if any(losses) else []
        states = []
        for b, z in enumerate(zs):
            start = sum(len(part) for part in losses[:b])
            values = flat[start : start + len(losses[b])]
            states.append(
                OptimStep(
                    i + 1,
                    math.fsum(values),
                    tuple(values),
                    phases[b],
                    z.detach().clone(),
                    skipped=skipped[b],
                    scale=scalers[b].get_scale(),
                )
            )
        yield states
    if tracker is not None and steps:  # the last step's latent is scored too
        with torch.no_grad(), amp:
            image = synth(vqgan, zs[0], checkpointing)
            tracker.observe(
                steps, phase_of[0](steps - 1), zs[0], tracker.guide_loss(guides[0], phase_of[0](steps - 1), image)
            )
