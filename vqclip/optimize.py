"""The VQGAN+CLIP latent optimisation loop (Crowson et al. 2022, "VQGAN-CLIP: Open Domain Image
Generation and Editing with Natural Language Guidance"; Esser et al. 2021 for the VQGAN).

Per step: quantise z with a straight-through gradient, decode, clamp with a gradient that still pushes
back into range, cut out and augment, encode with each CLIP, sum the weighted squared spherical
distances to the prompts, take an Adam step, clamp z to the codebook's per-channel range.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def synth(vqgan, z: torch.Tensor) -> torch.Tensor:
    """Latent (1, C, h, w) -> image (1, 3, H, W) in [0, 1], differentiable in z."""
    return clamp_with_grad(vqgan.decode(quantize_st(vqgan, z)).float().add(1).div(2), 0, 1)


def spherical_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between the directions of x and y (broadcast over leading dims)."""
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


@dataclass
class Target:
    """One prompt as CLIP sees it: an embedding (D,), a weight (negative pushes away) and a stop floor."""

    embed: torch.Tensor
    weight: float = 1.0
    stop: float = float("-inf")

    def loss(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """|w| * mean(sign(w) * d) over the cutouts, where d stops counting below the floor."""
        d = spherical_dist(image_embeds, self.embed) * (1.0 if self.weight >= 0 else -1.0)
        floor = torch.full_like(d, self.stop)
        d = d + (torch.maximum(d, floor) - d).detach()  # forward: the floor; backward: d's gradient
        return abs(self.weight) * d.mean()


@dataclass
class Guide:
    """A CLIP model, its cutout maker, and its targets per story phase."""

    clip: object  # vqclip.models.clip.ClipModel
    cutouts: torch.nn.Module
    phases: list  # list[list[Target]]: targets of each phase (image/noise prompts in every phase)


def codebook_range(vqgan) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel min and max of the codebook, shaped (1, C, 1, 1)."""
    cb = vqgan.codebook.float()
    return cb.min(0).values.view(1, -1, 1, 1), cb.max(0).values.view(1, -1, 1, 1)


def optimize(
    vqgan,
    guides: list[Guide],
    z: torch.Tensor,
    steps: int,
    lr: float = 0.1,
    init_weight: float = 0.0,
    phase_of=lambda i: 0,
    autocast: contextlib.AbstractContextManager | None = None,
    clip_chunk: int | None = None,
    timer=None,
    transform=None,
    transform_every: int = 0,
) -> Iterator[dict]:
    """Optimise z in place; yield {'i', 'loss', 'losses', 'phase', 'z'} after each step.

    Args:
        vqgan: a frozen VQGAN (vqclip.models.vqgan.VQGAN).
        guides: the CLIP models with their cutouts and prompt targets.
        z: the initial latent (1, C, h, w), float32; optimised in place.
        steps: number of Adam steps.
        lr: Adam step size.
        init_weight: weight of the MSE pull towards the initial latent.
        phase_of: maps a step to its story phase.
        autocast: a context manager for the decoder and CLIP passes (e.g. bf16 autocast).
        clip_chunk: encode at most this many cutouts at once (bounds CLIP's activation memory).
        timer: optional `timer(stage)` context manager factory, for per-stage timings (benchmarks).
        transform: optional z -> z applied every `transform_every` steps (animation); Adam restarts.
    """
    z_init = z.detach().clone()
    z_min, z_max = codebook_range(vqgan)
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    autocast = autocast or contextlib.nullcontext()
    timer = timer or (lambda stage: contextlib.nullcontext())
    for i in range(steps):
        phase = phase_of(i)
        opt.zero_grad(set_to_none=True)
        # 1. Decode the quantised latent.
        with timer("decoder"), autocast:
            image = synth(vqgan, z)
        # 2. CLIP losses on the cutouts; chunks are back-propagated to the image one at a time.
        pixels = image.detach().requires_grad_(True)
        losses = []
        for guide in guides:
            cutn = guide.cutouts.cutn
            chunk = clip_chunk or cutn
            boxes = guide.cutouts.boxes(pixels.shape[2], pixels.shape[3], pixels.device)
            for start in range(0, cutn, chunk):
                with timer("cutouts"), autocast:
                    cuts = guide.cutouts(pixels, boxes[start : start + chunk])
                with timer("clip"), autocast:
                    embeds = guide.clip.encode_image(cuts).float()
                    parts = [t.loss(embeds) * (embeds.shape[0] / cutn) for t in guide.phases[phase]]
                    loss = torch.stack(parts).sum()
                with timer("backward"):
                    loss.backward()
                losses.append(loss.detach())
        # 3. Back through the decoder once, plus the pull towards the initial latent.
        with timer("backward"):
            image.backward(pixels.grad)
            if init_weight:
                pull = F.mse_loss(z, z_init) * (init_weight / 2)
                pull.backward()
                losses.append(pull.detach())
        # 4. Adam step, then keep z inside the codebook's range.
        with timer("optimiser"):
            opt.step()
            with torch.no_grad():
                z.copy_(torch.maximum(torch.minimum(z, z_max), z_min))
        if transform is not None and transform_every and (i + 1) % transform_every == 0 and i + 1 < steps:
            with torch.no_grad():
                z.copy_(transform(z.detach()))
            opt.state.clear()  # the moment estimates belonged to the old image
        total = float(torch.stack(losses).sum())
        yield {"i": i + 1, "loss": total, "losses": [float(x) for x in losses], "phase": phase, "z": z.detach()}
