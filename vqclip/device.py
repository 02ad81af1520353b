"""Where a run happens and in which precision: the device, and the autocast dtype the hardware runs fast."""

import contextlib
from pathlib import Path

import torch

from vqclip.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """auto: CUDA, then MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA device is available.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for, but MPS is not available.")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls and convolutions run about twice as fast as fp32 there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_cuda_dtype(capability: tuple[int, int]) -> torch.dtype | None:
    """bf16 on Ampere and newer (8.x+); fp16 with loss scaling on Pascal, Volta and Turing (6.x, 7.x: the T4,
    P100 and V100 of free notebooks, whose tensor cores have no bf16); fp32 on anything older."""
    major = capability[0]
    if major >= 8:
        return torch.bfloat16
    if major >= 6:
        return torch.float16
    return None


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32). auto: bf16 on Ampere+ GPUs and CPUs with fast bf16, fp16 on 6.x/7.x
    GPUs (vqclip.optimize scales the loss), fp32 elsewhere."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return auto_cuda_dtype(torch.cuda.get_device_capability(device))
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context for a run (a no-op in fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
