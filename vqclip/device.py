"""Where a run happens and in which precision: the device, and the one rule that picks the precision.

`choose_precision` is that rule, a pure function of what it looks at (the device kind, a CUDA device's
compute capability, the CPU's bf16 flags, the work of one step), so that it can be tested as a table on any
machine; `resolve_precision` feeds it the live hardware. `upscaler_precision` is the same rule for
Real-ESRGAN, and `check_cuda_build` refuses a GPU the installed torch has no kernels for, before any
weights load. vqclip.bench reports the machine through `fast_precisions`.
"""

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from vqclip.errors import UsageError

FAST_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names: bf16 dot products, bf16 tiles
FAST_FP16_FLAGS = ("avx512_fp16", "amx_fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# The CPU side of the rule (benchmarks/RESULTS.md, "auto precision on the CPU"): bf16 pays only when a step
# is big enough for its matmuls and convolutions to outweigh the casts and the fp32 work around them
# (GroupNorm, the colour jitter, the cutouts, the optimiser). Measured by the weights on the image path
# (decoder + CLIP image towers), which every real model exceeds many times over: the shapes world's 5.9 M
# ran 2 % slower in bf16 at 128x128 and 27 % slower at 256x256 even with AMX (Intel Xeon, one thread), 15 %
# slower at 128x128 on an AMD Zen 5 (AVX512-BF16 alone); the default models' 130 M run 2.5x (Zen 5) to 2.6x
# (AMX) faster in bf16 at 256x256.
CPU_BF16_MIN_PARAMS = 20_000_000


@dataclass(frozen=True)
class Hardware:
    """What the precision rule looks at."""

    kind: str  # "cpu", "cuda" or "mps"
    capability: tuple[int, int] | None = None  # a CUDA device's compute capability
    cpu_flags: frozenset[str] = frozenset()  # the CPU's /proc/cpuinfo flags (only those named above matter)


def fast_precisions(hardware: Hardware) -> frozenset[str]:
    """The reduced precisions the hardware runs fast. CUDA: bf16 from compute capability 8.0 (Ampere; below
    it cuDNN has no bf16 convolutions and torch emulates bf16); fp16 on 6.0 (P100) and from 7.0 (tensor
    cores), not on 6.1 (GTX 10x0, P40: fp16 at 1/64 of the fp32 rate). CPUs: bf16 with AVX512-BF16 or AMX,
    fp16 with AVX512-FP16 or AMX-FP16. MPS: none that vqclip relies on."""
    fast = set()
    if hardware.kind == "cuda" and hardware.capability is not None:
        if hardware.capability >= (8, 0):
            fast.add("bf16")
        if hardware.capability == (6, 0) or hardware.capability >= (7, 0):
            fast.add("fp16")
    elif hardware.kind == "cpu":
        if hardware.cpu_flags & set(FAST_BF16_FLAGS):
            fast.add("bf16")
        if hardware.cpu_flags & set(FAST_FP16_FLAGS):
            fast.add("fp16")
    return frozenset(fast)


def choose_precision(requested: str, hardware: Hardware, work_params: int | None = None) -> str:
    """The precision a generation runs in: "fp32", "bf16" or "fp16". An explicit request is kept; `auto`:

    - CUDA: bf16 from 8.0; fp16 with loss scaling on 6.0 and 7.x (P100, V100, T4); fp32 elsewhere (6.1,
      older cards);
    - CPU: bf16 with AVX512-BF16 or AMX when the image path's weights (`work_params`: decoder plus CLIP
      image towers; None = not known, counted as large) reach CPU_BF16_MIN_PARAMS; fp32 otherwise;
    - MPS: fp32.
    """
    if requested != "auto":
        return requested
    fast = fast_precisions(hardware)
    if hardware.kind == "cuda":
        return "bf16" if "bf16" in fast else "fp16" if "fp16" in fast else "fp32"
    if hardware.kind == "cpu" and "bf16" in fast:
        if work_params is None or work_params >= CPU_BF16_MIN_PARAMS:
            return "bf16"
    return "fp32"


def upscaler_precision(requested: str, hardware: Hardware) -> str:
    """The precision Real-ESRGAN runs in. `--precision` governs it too: an explicit request is kept (where
    the model supports it). auto: on CUDA bf16 from 8.0, fp16 below it (Real-ESRGAN's own default; the T4,
    V100 and P100 only emulate bf16, though torch.cuda.is_bf16_supported() says True); fp32 on CPUs and
    MPS (the upscaler is a small share of a run there, and fp32 is what its tiles were checked in)."""
    if requested != "auto":
        return requested
    if hardware.kind == "cuda":
        return "bf16" if hardware.capability is not None and hardware.capability >= (8, 0) else "fp16"
    return "fp32"


def cuda_build_runs_on(capability: tuple[int, int], arch_list: list[str] | tuple[str, ...]) -> bool:
    """Whether a torch build with these CUDA architectures (torch.cuda.get_arch_list(): "sm_80",
    "sm_90a", "compute_120") has kernels for a device of this compute capability: a cubin of the same
    major version and a lower or equal minor one (an "a"/"f" variant: only its own capability), or PTX of
    a capability at or below it (compiled at load). An empty list (not known) counts as yes."""
    if not arch_list:
        return True
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        digits = number.rstrip("abcdefghijklmnopqrstuvwxyz")
        if not digits.isdigit() or len(digits) < 2:
            continue
        built = (int(digits[:-1]), int(digits[-1]))
        if kind == "sm" and (
            built == capability or (digits == number and built[0] == capability[0] and built < capability)
        ):
            return True
        if kind == "compute" and built <= capability:
            return True
    return False


def check_cuda_build(capability: tuple[int, int], arch_list, name: str = "this GPU") -> None:
    """UsageError, in one sentence, when the installed torch has no kernels for the GPU (the PyPI CUDA 12.8+
    wheels have none for Pascal and Volta, 6.x and 7.0, though torch.cuda.is_available() says True)."""
    if cuda_build_runs_on(capability, arch_list):
        return
    sm = f"sm_{capability[0]}{capability[1]}"
    raise UsageError(
        f"This torch build ({torch.__version__}) has no CUDA kernels for {name} (compute capability "
        f"{capability[0]}.{capability[1]}; it has {', '.join(arch_list)}): install a torch build whose "
        f"torch.cuda.get_arch_list() includes {sm} (for Pascal and Volta the CUDA 12.6 wheels, "
        "pip install torch --index-url https://download.pytorch.org/whl/cu126), or run with --device cpu."
    )


def resolve_device(name: str) -> torch.device:
    """auto: CUDA, then MPS, then the CPU. A CUDA device the installed torch cannot run is refused here,
    before any weights load (check_cuda_build)."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for, but no CUDA device is available.")
        device = torch.device("cuda", torch.cuda.current_device())
        check_cuda_build(
            torch.cuda.get_device_capability(device), torch.cuda.get_arch_list(), torch.cuda.get_device_name(device)
        )
        return torch.device("cuda")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for, but MPS is not available.")
    return torch.device(name)


def cpu_flags() -> frozenset[str]:
    """The CPU's flags from /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def hardware(device: torch.device) -> Hardware:
    """The live hardware behind a device, as the precision rule sees it."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return Hardware(device.type, capability, cpu_flags() if device.type == "cpu" else frozenset())


def resolve_precision(precision: str, device: torch.device, work_params: int | None = None) -> torch.dtype | None:
    """The autocast dtype (None = fp32) of `choose_precision` on this machine."""
    return DTYPES[choose_precision(precision, hardware(device), work_params)]


def image_path_params(vqgan, clips) -> int:
    """The weights one step runs through, forward and back: the VQGAN's decoder (with its post-quant
    convolution) and every CLIP's image tower. The measure of work `choose_precision` takes."""
    modules = [vqgan.decoder, vqgan.post_quant_conv, *(clip.model.visual for clip in clips)]
    return sum(p.numel() for m in modules for p in m.parameters())


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context for a run (a no-op in fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
