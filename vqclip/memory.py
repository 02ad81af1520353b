"""The memory plan: estimate a step's peak memory before the first step and choose decoder activation
checkpointing and CLIP chunking so that it fits; refuse (exit 4) only when even that does not fit.

The estimate is weights + decoder activations (per output pixel, measured per dtype with and without
checkpointing) + CLIP activations (per cutout in a chunk) + a fixed overhead. The per-pixel and
per-cutout constants are calibrated on the full-size f16 VQGAN and ViT-B/32 (benchmarks/RESULTS.md) and
scaled by each model's width, so other models get a proportional estimate.
"""

import os
from dataclasses import asdict, dataclass

import torch

from vqclip.errors import OutOfMemoryError

# Calibration (bytes): peak RSS of one step on the CPU (benchmarks/RESULTS.md, "memory calibration"),
# f16 imagenet VQGAN (ch 128) and ViT-B/32, 256-768 px, with and without checkpointing and chunks.
DECODER_BYTES_PER_PIXEL = {"fp32": 21_500, "bf16": 10_500}  # no checkpointing
DECODER_CKPT_BYTES_PER_PIXEL = {"fp32": 13_500, "bf16": 6_500}  # per-block checkpointing
CLIP_BYTES_PER_CUTOUT = {"fp32": 46_000_000, "bf16": 25_000_000}  # ViT-B/32 at 224 px, forward + backward
OVERHEAD = {"cpu": 1_300_000_000, "gpu": 300_000_000}  # CPU: the imported libraries count in RSS
REF_DECODER_CH = 128
REF_CLIP_COST = 768 * 12 * 50  # width x layers x tokens of ViT-B/32


@dataclass(frozen=True)
class Plan:
    checkpointing: bool  # recompute decoder blocks in backward
    clip_chunk: int  # cutouts per CLIP pass
    estimate: int  # bytes
    budget: int  # bytes available (free memory or --max-memory)

    def to_dict(self) -> dict:
        return asdict(self)


def free_memory(device: torch.device) -> int:
    """Bytes the job may use: free GPU memory, or MemAvailable on the CPU (plus what this process holds)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_allocated(device)
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return torch.mps.recommended_max_memory()
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 16 * 2**30
    with open(f"/proc/{os.getpid()}/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return available + rss


def _clip_cost(clip) -> float:
    v = clip.model.visual
    width = getattr(v, "width", None) or getattr(getattr(v, "transformer", None), "width", 768)
    layers = getattr(getattr(v, "transformer", None), "layers", 12)
    patch = getattr(v, "patch_size", (32, 32))
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    tokens = (clip.input_size // max(1, patch)) ** 2 + 1
    return width * layers * tokens / REF_CLIP_COST


def weights_bytes(models) -> int:
    mods = [models.vqgan] + [c.model for c in models.clips]
    return sum(p.numel() * p.element_size() for m in mods for p in m.parameters())


def estimate(models, size: tuple[int, int], cutn: int, checkpointing: bool, clip_chunk: int) -> int:
    """Estimated peak bytes of one optimisation step."""
    key = "fp32" if models.dtype is None else "bf16"
    pixels = size[0] * size[1]
    per_pixel = (DECODER_CKPT_BYTES_PER_PIXEL if checkpointing else DECODER_BYTES_PER_PIXEL)[key]
    decoder = per_pixel * pixels * models.vqgan.config.ch / REF_DECODER_CH
    clip = max(CLIP_BYTES_PER_CUTOUT[key] * min(clip_chunk, cutn) * _clip_cost(c) for c in models.clips)
    overhead = OVERHEAD["cpu" if models.device.type == "cpu" else "gpu"]
    return int(weights_bytes(models) + decoder + clip + overhead)


def _options(cutn: int, checkpointing: str):
    chunks = [cutn] + [c for c in (16, 8, 4, 2, 1) if c < cutn]
    ckpts = {"auto": (False, True), "on": (True,), "off": (False,)}[checkpointing]
    for ckpt in ckpts:
        for chunk in chunks:
            yield ckpt, chunk


def make_plan(models, size, cutn: int, max_memory: int | None = None, checkpointing: str = "auto") -> Plan:
    """The fastest settings whose estimate fits the budget; OutOfMemoryError naming the largest size that fits."""
    budget = free_memory(models.device)
    if max_memory is not None:
        budget = min(budget, max_memory)
    for ckpt, chunk in _options(cutn, checkpointing):
        need = estimate(models, size, cutn, ckpt, chunk)
        if need <= budget:
            return Plan(ckpt, chunk, need, budget)
    side = largest_square(models, cutn, budget)
    gib = 2**30
    raise OutOfMemoryError(
        f"A {size[0]}x{size[1]} image needs about {estimate(models, size, cutn, True, 1) / gib:.1f} GiB even with "
        f"checkpointing, but only {budget / gib:.1f} GiB is available.",
        f"The largest square that fits is about {side}x{side}." if side else "Not even the smallest size fits.",
    )


def largest_square(models, cutn: int, budget: int, checkpointing: bool = True) -> int:
    """The largest square side (a multiple of the VQGAN factor) whose lightest plan fits the budget."""
    f = models.vqgan.factor
    best = 0
    side = f
    while side <= 16384 and estimate(models, (side, side), cutn, checkpointing, 1) <= budget:
        best = side
        side += f
    return best
