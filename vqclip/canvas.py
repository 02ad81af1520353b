"""Large canvases (design section 5): optimise at a base size, upsample the token grid, resample it with
the taming GPT in sliding 16x16 windows under an anchor prior towards the upsampled base, then refine.

The GPT continues the VQGAN's token statistics at sizes CLIP optimisation alone handles poorly; the
anchor keeps the composition CLIP found (anchor 0 is pure GPT sampling, a large anchor keeps the base).
"""

from dataclasses import replace

import torch
import torch.nn.functional as F

from vqclip.events import Progress, ProgressFn, ignore
from vqclip.guidance import run_guided
from vqclip.prompts import parse_story
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


@torch.no_grad()
def choose_class(clip, prompt_text: str, n_classes: int) -> tuple[int, str]:
    """CLIP zero-shot: the ImageNet class whose name is most similar to the prompt."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = list(IMAGENET_CLASSNAMES[:n_classes])
    classes = F.normalize(clip.encode_text([f"a photo of a {n}." for n in names]), dim=-1)
    prompt = F.normalize(clip.encode_text([prompt_text]), dim=-1)
    k = int((classes @ prompt.t()).argmax())
    return k, names[k]


def run_canvas(job, models, progress: ProgressFn = ignore, on_step=None):
    """The four stages of a prepared --transformer job; returns (latent, loss, steps done, canvas record)."""
    cfg, base_cfg = job.cfg, job.base
    vqgan, f = models.vqgan, models.vqgan.factor
    width, height = cfg.size
    # 1. Optimise at the base size.
    z_base, loss, _ = run_guided(models, base_cfg, job.base_plan, stage="base", progress=progress, on_step=on_step)
    # 2. Upsample the token grid in embedding space and re-quantise.
    z_up, idx_up = upsample_tokens(vqgan, z_base, height // f, width // f)
    # 3. The sliding-window pass with the anchor prior.
    cond = models.conditioning
    chosen = None
    if cond.kind == "class":
        text = " ".join(p.text for p in (parse_story(cfg.prompt) or [[]])[0]) or "a photo"
        chosen = choose_class(models.clips[0], text, cond.n_classes)
        token = chosen[0]
    else:
        token = cond.sos_token
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
    z = vqgan.embed(idx).float()
    # 4. Optionally refine with CLIP at the full size (the plan turns checkpointing on as needed).
    if cfg.refine_steps:
        refine_cfg = replace(cfg, transformer=None, steps=cfg.refine_steps)
        z, loss, _ = run_guided(models, refine_cfg, job.plan, z, stage="refine", progress=progress, on_step=on_step)
    record = {
        "base_size": list(base_cfg.size),
        "class": chosen[0] if chosen else None,
        "class_name": chosen[1] if chosen else None,
        "kept_fraction": round(kept, 4),
        "gpt_calls": calls["n"],
    }
    return z, loss, cfg.steps + cfg.refine_steps, record
