"""`--deterministic`: the same pixels from the same seed on the same GPU, run after run.

Without it a CUDA run is repeatable only up to float rounding: cuDNN picks convolution algorithms by timing
and some of them accumulate in a varying order, cuBLAS splits work by its workspace, and the backward of
`grid_sample` (kornia's affine and perspective warps of the cutouts) adds into its input gradient with
atomics. With it:

- `torch.use_deterministic_algorithms(True)`: every op runs its deterministic implementation, or raises
  instead of running a nondeterministic one (so nothing silent remains);
- cuDNN in deterministic mode with its autotuner off;
- `CUBLAS_WORKSPACE_CONFIG=:4096:8` (NVIDIA's setting for reproducible cuBLAS since CUDA 10.2), set before
  the first cuBLAS call unless the user set it;
- the warps run their forward and backward on the CPU (`vqclip.cutouts`), whose grid_sample is
  deterministic; the rest of the step stays on the GPU.

What it does not do: make a GPU's pixels equal another model of GPU's, another torch or CUDA version's, or
the CPU's; those differ in float rounding (see the README, "GPUs").
"""

import os

import torch

CUBLAS_WORKSPACE = ":4096:8"


def make_deterministic() -> None:
    """Switch this process to deterministic kernels (idempotent; there is no switching back within a process,
    as cuBLAS keeps its workspace setting)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def warps_on_cpu(device: torch.device) -> bool:
    """Whether the cutouts' warps (grid_sample) run on the CPU: deterministic mode on a device other than the
    CPU, where grid_sample's backward accumulates with atomics (CUDA) or has no deterministic promise (MPS)."""
    return device.type != "cpu" and torch.are_deterministic_algorithms_enabled()
