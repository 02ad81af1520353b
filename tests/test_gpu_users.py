"""Where GPU and laptop users run vqclip (issue 29, defect 8): MPS augmentations that fall back per op, and
`vqclip bench` without the Unix-only `resource` module."""

import importlib
import sys
import warnings

import pytest
import torch

from vqclip import cutouts as cutouts_module
from vqclip.cutouts import Cutouts

DEFAULT = ("affine", "perspective", "jitter", "erasing")
_real_grid_sampler = torch.grid_sampler


class _NoBackward(torch.autograd.Function):
    """grid_sample whose backward is missing, as on MPS before pytorch#179756, for float32 (the 'device')."""

    @staticmethod
    def forward(ctx, x, grid, *args):
        return _real_grid_sampler(x, grid, *args)

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError(
            "The operator 'aten::grid_sampler_2d_backward' is not currently implemented for the MPS device."
        )


def _grid_sampler_without_float32_backward(x, grid, *args):
    if x.dtype == torch.float32:
        return _NoBackward.apply(x, grid, *args)
    return _real_grid_sampler(x, grid, *args)


@pytest.fixture
def device_lacking_grid_sample_backward(monkeypatch):
    """The CPU's float32 plays a device without grid_sample's backward, float64 the CPU it falls back to."""
    monkeypatch.setattr(cutouts_module, "PROBED_DEVICES", ("cpu",))
    monkeypatch.setattr(cutouts_module, "_RUNS_ON", {})
    monkeypatch.setattr(cutouts_module, "to_fallback", lambda t: t.double() if t.is_floating_point() else t)
    monkeypatch.setattr(torch, "grid_sampler", _grid_sampler_without_float32_backward)


def _step(cut: Cutouts, seed: int = 0):
    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out = cut(image, cut.draw(48, 64, torch.Generator().manual_seed(seed)))
    out.square().sum().backward()
    return out.detach(), image.grad


def test_only_the_augmentations_that_lack_an_op_fall_back(device_lacking_grid_sample_backward):
    torch.manual_seed(0)
    cut = Cutouts(24, 6, augment=DEFAULT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, grad = _step(cut)
    told = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(told) == 2 and "RandomAffine" in told[0] and "RandomPerspective" in told[1]
    assert all("runs on the CPU, the rest of each step on CPU" in t and "grid_sampler_2d_backward" in t for t in told)
    runs = {key[0].__name__: ok for key, ok in cutouts_module._RUNS_ON.items()}
    assert runs == {"RandomAffine": False, "RandomPerspective": False, "RandomErasing": True}
    assert out.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        _step(cut, seed=1)
    assert not again  # told once; the probe is not repeated


def test_a_fallen_back_step_gives_the_device_s_result(device_lacking_grid_sample_backward, monkeypatch):
    """The same cutouts and gradient as where every op exists, to float rounding."""
    cut = Cutouts(24, 6, augment=DEFAULT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, grad = _step(cut)
    monkeypatch.setattr(torch, "grid_sampler", _real_grid_sampler)
    monkeypatch.setattr(cutouts_module, "PROBED_DEVICES", ())
    expected, expected_grad = _step(cut)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_the_probe_leaves_the_global_random_state_alone(device_lacking_grid_sample_backward):
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cutouts_module.runs_on(Cutouts(24, 2, augment=("affine",)).augs[0], torch.device("cpu"))
    assert torch.equal(torch.random.get_rng_state(), before)


def test_cuda_and_the_cpu_are_trusted_without_a_probe(monkeypatch):
    monkeypatch.setattr(cutouts_module, "_RUNS_ON", {})
    aug = Cutouts(24, 2, augment=("affine",)).augs[0]
    assert cutouts_module.runs_on(aug, torch.device("cpu")) and cutouts_module.runs_on(aug, torch.device("cuda"))
    assert cutouts_module._RUNS_ON == {}


def test_bench_imports_and_measures_without_the_resource_module(monkeypatch):
    """Windows has no `resource`: `vqclip bench` must import and report a peak without it."""
    monkeypatch.setitem(sys.modules, "resource", None)  # `import resource` raises ImportError
    for name in ("vqclip.bench", "vqclip.cli.bench"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    bench = importlib.import_module("vqclip.bench")
    real_read_text = bench.Path.read_text
    monkeypatch.setattr(
        bench.Path,
        "read_text",
        lambda self, *a, **k: (
            (_ for _ in ()).throw(OSError("no /proc"))
            if str(self).startswith("/proc/")
            else real_read_text(self, *a, **k)
        ),
    )
    assert bench.peak_memory(torch.device("cpu")) > 0
    monkeypatch.delattr(bench.os, "getloadavg")
    assert bench.load_average() is None
