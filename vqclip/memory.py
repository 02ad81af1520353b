"""The memory plan: estimate a step's peak memory before the first step and choose decoder activation
checkpointing and CLIP chunking so that it fits; refuse (exit 4) only when even that does not fit.

A step's memory has two peaks, and the estimate is the higher one on top of what stays resident (the
libraries, the weights):
- while CLIP runs: what the decoder's forward keeps for its backward (per output pixel) plus one chunk of
  cutouts through the augmentations and CLIP, forward and backward (per cutout);
- during the decoder's backward: what it keeps plus what its backward allocates (per output pixel).
The constants are fitted to the peaks measured with `vqclip bench` on the full-size f16 VQGAN and ViT-B/32
(benchmarks/RESULTS.md, "Memory plan calibration"); other models scale them by their width and tokens.
"""

import ctypes
import ctypes.util
import functools
import os
import sys
from dataclasses import asdict, dataclass

import torch

from vqclip.errors import OutOfMemoryError


@dataclass(frozen=True)
class StepCosts:
    """Bytes of one step beyond the resident weights, for one precision (fitted, see the module note)."""

    decoder_kept: float  # per output pixel: what the decoder's forward keeps for its backward
    decoder_kept_ckpt: float  # the same with per-block checkpointing (block inputs only)
    decoder_backward: float  # per output pixel: the peak of the decoder's backward
    decoder_backward_ckpt: float  # the same with checkpointing (recomputing one block at a time)
    per_cutout: float  # one cutout of a chunk: augmentations and ViT-B/32, forward and backward
    resident: float  # CPU: libraries, allocator and caches, beyond the weights


COSTS = {
    "fp32": StepCosts(0, 0, 0, 0, 0, 0),
    "bf16": StepCosts(0, 0, 0, 0, 0, 0),
}
GPU_RESIDENT = 300 * 2**20  # kernels' workspaces; the CUDA context is outside what the allocator reports
REF_DECODER_CH = 128  # the calibrated decoder's base width
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
    """A CLIP's activations per cutout relative to ViT-B/32's: width x layers x tokens."""
    v = clip.model.visual
    width = getattr(v, "width", None) or getattr(getattr(v, "transformer", None), "width", 768)
    layers = getattr(getattr(v, "transformer", None), "layers", 12)
    patch = getattr(v, "patch_size", (32, 32))
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    tokens = (clip.input_size // max(1, patch)) ** 2 + 1
    return width * layers * tokens / REF_CLIP_COST


def weights_bytes(models, text_towers: bool = True) -> int:
    """Bytes of the weights a step holds: the VQGAN as loaded (its encoder dropped when unused) and the
    CLIPs, without their text towers when `text_towers` is False (dropped once the prompts are encoded)."""
    mods = [models.vqgan] + [c.model for c in models.clips]
    total = sum(p.numel() * p.element_size() for m in mods for p in m.parameters())
    if not text_towers:
        total -= sum(c.text_tower_bytes() for c in models.clips)
    return total


def estimate(
    models, size: tuple[int, int], cutn: int, checkpointing: bool, clip_chunk: int, text_towers: bool = True
) -> int:
    """Estimated peak bytes of one optimisation step: the resident weights and libraries plus the higher of
    the CLIP peak and the decoder-backward peak (see the module note)."""
    costs = COSTS["fp32" if models.dtype is None else "bf16"]  # fp16 keeps what bf16 keeps
    pixels = size[0] * size[1] * models.vqgan.config.ch / REF_DECODER_CH
    kept = (costs.decoder_kept_ckpt if checkpointing else costs.decoder_kept) * pixels
    backward = (costs.decoder_backward_ckpt if checkpointing else costs.decoder_backward) * pixels
    chunk = max(costs.per_cutout * min(clip_chunk, cutn) * _clip_cost(c) for c in models.clips)
    resident = costs.resident if models.device.type == "cpu" else GPU_RESIDENT
    return int(resident + weights_bytes(models, text_towers) + max(kept + chunk, backward))


def _options(cutn: int, checkpointing: str):
    chunks = [cutn] + [c for c in (16, 8, 4, 2, 1) if c < cutn]
    ckpts = {"auto": (False, True), "on": (True,), "off": (False,)}[checkpointing]
    for ckpt in ckpts:
        for chunk in chunks:
            yield ckpt, chunk


def make_plan(
    models,
    size,
    cutn: int,
    max_memory: int | None = None,
    checkpointing: str = "auto",
    text_towers: bool = True,
) -> Plan:
    """The fastest settings whose estimate fits the budget; OutOfMemoryError naming the largest size that fits.

    `text_towers=False` when the run drops the CLIP text towers once its prompts are encoded (a single image;
    a batch keeps them to encode the next prompts)."""
    budget = free_memory(models.device)
    if max_memory is not None:
        budget = min(budget, max_memory)
    for ckpt, chunk in _options(cutn, checkpointing):
        need = estimate(models, size, cutn, ckpt, chunk, text_towers)
        if need <= budget:
            return Plan(ckpt, chunk, need, budget)
    side = largest_square(models, cutn, budget, text_towers=text_towers)
    least = estimate(models, size, cutn, checkpointing != "off", 1, text_towers)
    gib = 2**30
    raise OutOfMemoryError(
        f"A {size[0]}x{size[1]} image needs about {least / gib:.1f} GiB even with "
        f"{'checkpointing' if checkpointing != 'off' else 'CLIP chunks of 1'}, but only {budget / gib:.1f} GiB "
        "is available.",
        f"The largest square that fits is about {side}x{side}." if side else "Not even the smallest size fits.",
    )


def largest_square(models, cutn: int, budget: int, checkpointing: bool = True, text_towers: bool = True) -> int:
    """The largest square side (a multiple of the VQGAN factor) whose lightest plan fits the budget."""
    f = models.vqgan.factor
    best = 0
    side = f
    while side <= 16384 and estimate(models, (side, side), cutn, checkpointing, 1, text_towers) <= budget:
        best = side
        side += f
    return best


# ---- the C allocator (glibc) ----------------------------------------------------------------------
#
# glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh mappings and unmaps them when
# freed, so every step's large activations are mapped, zero-filled page by page and unmapped again: about
# 370,000 page faults per 256x256 fp32 step. Kept on the heap they are reused from step to step. The other
# side: freed heap memory stays in the process (RSS, which the plan budgets) until it is trimmed.

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


@functools.cache
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def keep_freed_memory(mmap_threshold: int = 32 * 2**20) -> bool:
    """Keep freed CPU memory for the next step instead of returning it to the system and faulting it in
    again (glibc only; returns whether it applied). Blocks above `mmap_threshold` are still mapped per
    tensor: on the heap they fragment it (512x512 fp32: 34% more peak memory)."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def release_freed_memory() -> None:
    """Return freed heap memory to the system, e.g. after dropping a tower, so RSS reflects what is live."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def drop_text_towers(models) -> None:
    """Free every CLIP's text tower and give its memory back: for a run whose prompts are all encoded
    (a single image; a batch encodes new prompts per image and keeps them). The plan's `text_towers=False`."""
    for clip in models.clips:
        clip.drop_text_tower()
    release_freed_memory()
