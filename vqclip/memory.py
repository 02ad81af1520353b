"""The memory plan: estimate a step's peak memory before the first step and choose decoder activation
checkpointing and CLIP chunking so that it fits; refuse (exit 4) only when even that does not fit.

The estimate is what stays resident (the libraries, the weights) plus a step's own bytes, which grow
linearly with the output pixels (the decoder's forward keeps activations, its backward allocates more) and
with the cutouts in a CLIP chunk (augmentations and ViT, forward and backward). Measured, the CLIP peak
and the decoder's backward peak add up rather than overlap: the memory a chunk freed is kept for the next
step (`keep_freed_memory`) and the backward allocates beside it. The constants are fitted to the peak RSS
of steps of the full-size f16 VQGAN and ViT-B/32 at 256-512 px (`benchmarks/memory_calibration.py`;
benchmarks/RESULTS.md, "Memory plan calibration", where 768 px checks them); other models scale them by
their decoder width and their CLIP's width x layers x tokens.
"""

import ctypes
import ctypes.util
import functools
import os
import sys
import weakref
from dataclasses import asdict, dataclass

import torch

from vqclip.errors import OutOfMemoryError


@dataclass(frozen=True)
class StepCosts:
    """A step's bytes beyond the resident weights and libraries, for one precision and checkpointing."""

    per_pixel: float  # the decoder, forward and backward, per output pixel
    per_cutout: float  # one cutout of a CLIP chunk: augmentations and ViT-B/32, forward and backward
    base: float  # the rest: latent, optimiser, prompts, allocator slack


MIB = 2**20
COSTS = {  # (precision, checkpointing): fitted on this project's CPU, 2026-11-24 (see the module note)
    ("fp32", False): StepCosts(7415, 35.9 * MIB, 71 * MIB),
    ("fp32", True): StepCosts(5267, 34.2 * MIB, 145 * MIB),
    ("bf16", False): StepCosts(3405, 24.0 * MIB, 228 * MIB),
    ("bf16", True): StepCosts(2750, 25.1 * MIB, 160 * MIB),
}
CPU_RESIDENT = 801 * MIB  # the imported libraries and allocator arenas, beyond the weights (RSS)
GPU_RESIDENT = 300 * MIB  # kernels' workspaces; the CUDA context is outside what the allocator reports
MARGIN = 1.05  # a plan fits when the estimate plus 5% does: on the calibration runs it erred by -4.2% to +3.6%
REF_DECODER_CH = 128  # the calibrated decoder's base width
REF_CLIP_COST = 768 * 12 * 50  # width x layers x tokens of ViT-B/32
# the elements of every leaf module's output in ViT-B/32's image tower for one 224 px cutout (activation_elements):
# by the same count ViT-B/16 is 3.94x and ViT-L/14 13.5x, as width x layers x tokens has them; RN50 is 6.2x
REF_CLIP_ACTIVATIONS = 6_143_232


@dataclass(frozen=True)
class Plan:
    checkpointing: bool  # recompute decoder blocks in backward
    clip_chunk: int  # cutouts per CLIP pass
    estimate: int  # bytes
    budget: int  # bytes available (free memory or --max-memory)

    def to_dict(self) -> dict:
        return asdict(self)


def free_memory(device: torch.device) -> int:
    """Bytes the job may use: free GPU memory, or MemAvailable on the CPU (plus what this process holds).
    On CUDA that is the device's free memory plus all that torch's caching allocator has reserved: the tensors
    it holds (the weights, which the estimate counts) and the blocks it keeps free for reuse (after the first
    image of a batch, a whole step's worth), which the driver counts as used."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device)
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return torch.mps.recommended_max_memory()
    return available_ram() + process_rss()


def _psutil():
    """psutil where it is installed (it is not a dependency of vqclip), else None."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def _sysconf(name: str) -> int | None:
    try:
        value = os.sysconf(name)
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or not this name on this system
        return None
    return value if value > 0 else None


def _windows_available() -> int | None:
    """ullAvailPhys of GlobalMemoryStatusEx: the RAM Windows can give without paging out."""

    class MemoryStatus(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong)] + [
            (name, ctypes.c_ulonglong)
            for name in ("total", "avail", "total_page", "avail_page", "total_virtual", "avail_virtual", "ext")
        ]

    status = MemoryStatus()
    status.dwLength = ctypes.sizeof(MemoryStatus)
    try:
        ok = ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return None
    return int(status.avail) if ok else None


def available_ram() -> int:
    """RAM available to a new allocation without swapping: Linux's MemAvailable, psutil's figure where it is
    installed, Windows' GlobalMemoryStatusEx, sysconf's available pages; where only the total is known
    (macOS without psutil), half of it, so a plan never counts on memory no one measured."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    psutil = _psutil()
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    if sys.platform == "win32":
        available = _windows_available()
        if available:
            return available
    page = _sysconf("SC_PAGE_SIZE") or _sysconf("SC_PAGESIZE") or 4096
    pages = _sysconf("SC_AVPHYS_PAGES")
    if pages:
        return pages * page
    total = _sysconf("SC_PHYS_PAGES")
    if total:
        return total * page // 2
    raise OutOfMemoryError(
        "This system reports neither its free nor its total memory, so no memory plan can be made.",
        "Give the memory vqclip may use with --max-memory (e.g. 6G), or install psutil.",
    )


def process_rss() -> int:
    """Bytes this process holds in RAM (its libraries and weights, which the estimate counts), or 0 where
    the system does not say."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * (_sysconf("SC_PAGE_SIZE") or 4096)
    except (OSError, IndexError, ValueError):
        pass
    psutil = _psutil()
    return int(psutil.Process().memory_info().rss) if psutil is not None else 0


def _clip_cost(clip) -> float:
    """A CLIP's activations per cutout relative to ViT-B/32's: width x layers x tokens for a vision
    transformer; any other image tower (the ResNets) by its own activations, counted on the meta device."""
    v = clip.model.visual
    if getattr(v, "transformer", None) is None:
        return activation_elements(v, clip.input_size) / REF_CLIP_ACTIVATIONS
    width = getattr(v, "width", None) or getattr(getattr(v, "transformer", None), "width", 768)
    layers = getattr(getattr(v, "transformer", None), "layers", 12)
    patch = getattr(v, "patch_size", (32, 32))
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    tokens = (clip.input_size // max(1, patch)) ** 2 + 1
    return width * layers * tokens / REF_CLIP_COST


def weights_bytes(models, text_towers: bool = True) -> int:
    """Bytes of the weights a step holds: the VQGAN as loaded (its encoder dropped when unused), the CLIPs,
    without their text towers when `text_towers` is False (dropped once the prompts are encoded), and the
    taming GPT of --transformer (loaded with the others and kept through every stage)."""
    mods = [models.vqgan] + [c.model for c in models.clips]
    if getattr(models, "gpt", None) is not None:
        mods.append(models.gpt)
    total = sum(t.numel() * t.element_size() for m in mods for t in [*m.parameters(), *m.buffers()])
    if not text_towers:
        total -= sum(c.text_tower_bytes() for c in models.clips)
    return total


_ACTIVATIONS = weakref.WeakKeyDictionary()  # image tower -> {input size: elements}


def activation_elements(tower: torch.nn.Module, size: int) -> int:
    """The elements of every leaf module's output in a forward of one size x size image: what a forward
    keeps for its backward, up to the allocator's rounding. Run on the meta device with meta stand-ins for
    the weights (no memory, no arithmetic), once per tower and size."""
    from torch.func import functional_call

    known = _ACTIVATIONS.setdefault(tower, {})
    if size not in known:
        total = 0

        def count(module, inputs, output):
            nonlocal total
            total += sum(
                t.numel() for t in (output if isinstance(output, (tuple, list)) else (output,)) if torch.is_tensor(t)
            )

        leaves = [m for m in tower.modules() if not next(m.children(), None)]
        hooks = [m.register_forward_hook(count) for m in leaves]
        try:
            meta = {
                k: torch.empty_like(t, device="meta") for k, t in [*tower.named_parameters(), *tower.named_buffers()]
            }
            with torch.no_grad():
                dtype = next((t.dtype for t in meta.values() if t.is_floating_point()), torch.float32)
                functional_call(tower, meta, (torch.empty(1, 3, size, size, device="meta", dtype=dtype),))
        finally:
            for hook in hooks:
                hook.remove()
        known[size] = total
    return known[size]


def estimate(
    models,
    size: tuple[int, int],
    cutn: int,
    checkpointing: bool,
    clip_chunk: int,
    text_towers: bool = True,
    images: int = 1,
) -> int:
    """Estimated peak bytes of one optimisation step (see the module note). fp16 keeps what bf16 keeps.
    `images` latents in one batched step (--n, batch --pack): the decoder's bytes grow with all their pixels
    and CLIP's with the cutouts of a chunk (`clip_chunk` counts every image's, at most images x cutn); the
    weights, libraries and the rest are held once."""
    costs = COSTS["fp32" if models.dtype is None else "bf16", checkpointing]
    pixels = images * size[0] * size[1] * models.vqgan.config.ch / REF_DECODER_CH
    chunk = max(costs.per_cutout * min(clip_chunk, cutn * images) * _clip_cost(c) for c in models.clips)
    resident = CPU_RESIDENT if models.device.type == "cpu" else GPU_RESIDENT
    return int(resident + weights_bytes(models, text_towers) + costs.per_pixel * pixels + chunk + costs.base)


def _options(cutn: int, checkpointing: str, images: int = 1):
    """(checkpointing, CLIP chunk) from the fastest: every cutout in one pass, then fewer images' cutouts a pass
    (halving), then one image's in pieces of 16, 8, ... cutouts."""
    per_pass, k = [], images
    while k > 1:
        per_pass.append(k * cutn)
        k = (k + 1) // 2 if k > 2 else 1
    chunks = per_pass + [cutn] + [c for c in (16, 8, 4, 2, 1) if c < cutn]
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
    images: int = 1,
) -> Plan:
    """The fastest settings whose estimate fits the budget; OutOfMemoryError naming the largest size that fits.

    `text_towers=False` when the run drops the CLIP text towers once its prompts are encoded (a single image;
    a batch keeps them to encode the next prompts). `images`: latents optimised together (--n, batch --pack);
    the chunk then counts the cutouts of all of them."""
    try:
        budget = free_memory(models.device)
    except OutOfMemoryError:
        if max_memory is None:
            raise
        budget = max_memory  # the system does not say how much it has: --max-memory alone decides
    if max_memory is not None:
        budget = min(budget, max_memory)
    for ckpt, chunk in _options(cutn, checkpointing, images):
        need = estimate(models, size, cutn, ckpt, chunk, text_towers, images)
        if need * MARGIN <= budget:
            return Plan(ckpt, chunk, need, budget)
    side = largest_square(models, cutn, budget, text_towers=text_towers, images=images)
    least = estimate(models, size, cutn, checkpointing != "off", 1, text_towers, images)
    gib = 2**30
    what = f"A {size[0]}x{size[1]} image" if images == 1 else f"{images} images of {size[0]}x{size[1]} in one step"
    hint = f"The largest square that fits is about {side}x{side}." if side else "Not even the smallest size fits."
    raise OutOfMemoryError(
        f"{what} need{'s' if images == 1 else ''} about {least / gib:.1f} GiB even with "
        f"{'checkpointing' if checkpointing != 'off' else 'CLIP chunks of 1'}, but only {budget / gib:.1f} GiB "
        "is available.",
        hint + (" Or run fewer images in one step." if images > 1 else ""),
    )


def largest_square(
    models, cutn: int, budget: int, checkpointing: bool = True, text_towers: bool = True, images: int = 1
) -> int:
    """The largest square side (a multiple of the VQGAN factor) whose lightest plan fits the budget."""
    f = models.vqgan.factor
    best = 0
    side = f
    while (
        side <= 16384 and estimate(models, (side, side), cutn, checkpointing, 1, text_towers, images) * MARGIN <= budget
    ):
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
    """Free every CLIP's text tower and give its memory back (the loader's `text_towers=False`, and the
    benchmarks' random-weight models); the plan's `text_towers=False` counts on it."""
    for clip in models.clips:
        clip.drop_text_tower()
    release_freed_memory()
