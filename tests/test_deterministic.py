"""`--deterministic` (issue 29, defect 4): recorded and replayed; deterministic kernels, cuBLAS workspace and
cuDNN settings; the cutouts' warps (grid_sample, whose CUDA backward adds with atomics) run on the CPU.
The bit-exact replay on a GPU is tests/test_cuda.py's."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_args
from vqclip import cutouts as cutouts_module
from vqclip.cutouts import Cutouts
from vqclip.determinism import make_deterministic, warps_on_cpu


@pytest.fixture
def restore_determinism(monkeypatch):
    """make_deterministic changes process-wide state: give it back after the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]


def test_make_deterministic_sets_every_switch(restore_determinism):
    import os

    make_deterministic()
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_a_users_cublas_setting_is_kept(restore_determinism, monkeypatch):
    import os

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    make_deterministic()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_warps_leave_the_gpu_only_in_deterministic_mode(restore_determinism):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not warps_on_cpu(cuda)
    make_deterministic()
    assert warps_on_cpu(cuda) and warps_on_cpu(torch.device("mps")) and not warps_on_cpu(cpu)


def test_in_deterministic_mode_only_the_warps_run_on_the_cpu(monkeypatch):
    """With the GPU played by float32 and the CPU by float64: grid_sample sees only the CPU's tensors, and
    the result is the GPU path's to float rounding."""
    seen = []
    real = torch.grid_sampler

    def grid_sampler(x, grid, *args):
        seen.append(x.dtype)
        return real(x, grid, *args)

    cut = Cutouts(24, 6, augment=("affine", "perspective", "jitter", "erasing"))
    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    draw = cut.draw(48, 64, torch.Generator().manual_seed(1))
    monkeypatch.setattr(torch, "grid_sampler", grid_sampler)
    expected = cut(image, draw)
    assert set(seen) == {torch.float32}
    seen.clear()
    monkeypatch.setattr(cutouts_module, "warps_on_cpu", lambda device: True)
    monkeypatch.setattr(cutouts_module, "to_fallback", lambda t: t.double() if t.is_floating_point() else t)
    out = cut(image, draw)
    assert seen and set(seen) == {torch.float64}  # both warps, and nothing else, went to "the CPU"
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_deterministic_is_recorded_and_replayed(fixtures, tiny_clip, tmp_path, vq, restore_determinism):
    args = tiny_args(fixtures / "vqgan_tiny_f16.ckpt", tiny_clip)
    r = vq("a red apple", *args, "--steps", "3", "--seed", "5", "--deterministic", "-q", "-o", tmp_path / "a.png")
    assert r.returncode == 0, r.stderr.decode()
    assert torch.are_deterministic_algorithms_enabled()  # every op of the step has a deterministic kernel
    record = json.loads(Image.open(tmp_path / "a.png").text["vqclip"])
    assert record["config"]["deterministic"] is True
    torch.use_deterministic_algorithms(False)
    again = vq("replay", tmp_path / "a.png", "-o", tmp_path / "b.png", "-q")
    assert again.returncode == 0, again.stderr.decode()
    assert torch.are_deterministic_algorithms_enabled()  # the replay switched it on from the record
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("a.png", "b.png"))
    assert np.array_equal(a, b)
