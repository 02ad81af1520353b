"""The large-canvas stage (`--transformer`): optimise at a base size, upsample the token grid, resample it
with the taming GPT in sliding 16x16 windows under an anchor prior towards the upsampled base, then refine
with CLIP at the full size.

The GPT continues the VQGAN's token statistics at sizes CLIP optimisation alone handles poorly; the
anchor keeps the composition CLIP found (anchor 0 is pure GPT sampling, a large anchor keeps the base).
"""

from dataclasses import replace

import torch
import torch.nn.functional as F

from vqclip.events import Progress, ProgressFn, ignore
from vqclip.pipeline.guided import StageResult, StepFn, optimise
from vqclip.sliding import sample_tokens


def upsample_tokens(vqgan, z: torch.Tensor, height: int, width: int):
    """Base latent (1, C, h, w) -> (embedding-space upsampled latent, its nearest codes) at height x width."""
    z_up = F.interpolate(z.float(), size=(height, width), mode="bilinear", align_corners=False)
    return z_up, vqgan.nearest(z_up)


def anchor_bias(vqgan, z_up: torch.Tensor, strength: float):
    """Logit bias -strength * |e_k - z_up(i, j)|^2 / mean distance: a prior towards the upsampled base."""
    codebook = vqgan.codebook.float()  # (n, C)
    sq = codebook.pow(2).sum(1)

    def bias(batch, rows, cols):
        target = z_up[batch, :, rows, cols].float()  # (N, C)
        d = sq[None] + target.pow(2).sum(1, keepdim=True) - 2 * target @ codebook.t()  # (N, n)
        return -strength * d / d.mean(1, keepdim=True).clamp(min=1e-8)

    return bias


def run_canvas(
    job, models, *, progress: ProgressFn = ignore, on_step: StepFn | None = None, stop_after: int | None = None
) -> StageResult:
    """The four parts of a prepared --transformer job. `stop_after` counts the CLIP-guided steps of the
    whole run: within the base steps the run ends with the base latent (what an interrupted run showed),
    after them the transformer pass runs and the refinement stops there."""
    cfg, base_cfg = job.cfg, job.base
    vqgan, f = models.vqgan, models.vqgan.factor
    width, height = cfg.size
    # 1. Optimise at the base size.
    base = optimise(
        job, models, base_cfg, job.base_plan, stage="base", progress=progress, on_step=on_step, stop_after=stop_after
    )
    if stop_after is not None and stop_after <= cfg.steps:
        return base
    # 2. Upsample the token grid in embedding space and re-quantise.
    z_up, idx_up = upsample_tokens(vqgan, base.z, height // f, width // f)
    # 3. The sliding-window pass with the anchor prior, conditioned on the class prepare chose (or none).
    cond = models.conditioning
    token = job.canvas_class[0] if cond.kind == "class" else cond.sos_token
    calls = {"n": 0}

    def sliding_progress(event: Progress):
        calls["n"] = event.total
        progress(event)

    idx = sample_tokens(
        models.gpt,
        idx_up,
        torch.tensor([[token]], device=idx_up.device),
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        bias=anchor_bias(vqgan, z_up, cfg.anchor) if cfg.anchor else None,
        generator=torch.Generator().manual_seed(cfg.seed),
        progress=sliding_progress,
    )
    kept = float((idx == idx_up).float().mean())
    z, loss, done, tracked = vqgan.embed(idx).float(), base.loss, base.steps_done, base.tracker
    # 4. Optionally refine with CLIP at the full size (the plan turns checkpointing on as needed).
    if cfg.refine_steps:
        refine_cfg = replace(cfg, transformer=None, steps=cfg.refine_steps)
        refined = optimise(
            job,
            models,
            refine_cfg,
            job.plan,
            z,
            stage="refine",
            first=cfg.steps,
            progress=progress,
            on_step=on_step,
            stop_after=stop_after,
        )
        z, loss, done, tracked = refined.z, refined.loss, refined.steps_done, refined.tracker
    record = {
        "base_size": list(base_cfg.size),
        "class": job.canvas_class[0] if job.canvas_class else None,
        "class_name": job.canvas_class[1] if job.canvas_class else None,
        "kept_fraction": round(kept, 4),
        "gpt_calls": calls["n"],
    }
    return StageResult(z, loss, done, record, tracked)
