"""Where a seeded generator meets a tensor (issue 29, defect 1). ATen draws only with a generator of the
kernel's own device: on CUDA, `torch.multinomial(cuda_probs, generator=cpu_generator)` raises "Expected a
'cuda' device type for generator but found 'cpu'". The CPU never raises it, so these tests run the code with
its model tensors on the `meta` device, standing for an accelerator, under a checking mode that raises the
same error whenever a generator meets a tensor or a device that is not its own."""

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

ACCELERATOR = torch.device("meta")


class GeneratorDevices(TorchFunctionMode):
    """ATen's rule on every call that takes a generator: its device is the kernel's (the tensors' and the
    `device` argument's), else the CUDA error. Copies from the stand-in accelerator to the CPU read as
    uniform values (the meta device holds none), and every draw is recorded."""

    def __init__(self):
        super().__init__()
        self.draws = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if generator is not None:
            devices = {t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            if kwargs.get("device") is not None:
                devices.add(torch.device(kwargs["device"]))
            for device in devices:
                if device.type != generator.device.type:
                    raise RuntimeError(
                        f"Expected a '{device.type}' device type for generator but found '{generator.device.type}'"
                    )
            self.draws.append((getattr(func, "__name__", str(func)), generator.device.type))
        name = getattr(func, "__name__", "")
        if name in ("to", "cpu") and isinstance(args[0], torch.Tensor) and args[0].device == ACCELERATOR:
            target = "cpu" if name == "cpu" else next((a for a in args[1:] if isinstance(a, (str, torch.device))), None)
            target = kwargs.get("device", target)
            if target is not None and torch.device(target).type == "cpu":
                source = args[0]
                if source.is_floating_point():
                    return torch.full(source.shape, 1.0 / source.shape[-1], dtype=source.dtype)
                return torch.zeros(source.shape, dtype=source.dtype)
        return func(*args, **kwargs)


class UniformGPT:
    """A GPT stand-in on the accelerator: equal logits for every token of a vocabulary."""

    vocab = 7

    def last_logits(self, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        assert seq.device == lengths.device == ACCELERATOR
        return torch.zeros(seq.shape[0], self.vocab, device=seq.device)


def test_sampling_draws_with_the_cpu_generator_from_accelerator_probabilities():
    from vqclip.sliding import sample_tokens

    idx = torch.zeros(1, 20, 18, dtype=torch.long, device=ACCELERATOR)
    cond = torch.zeros(1, 1, dtype=torch.long, device=ACCELERATOR)
    with GeneratorDevices() as check:
        out = sample_tokens(UniformGPT(), idx, cond, top_k=3, generator=torch.Generator().manual_seed(0))
    assert out.device == ACCELERATOR and out.shape == idx.shape
    assert check.draws and {d for d in check.draws} == {("multinomial", "cpu")}


def test_sampling_with_a_bias_keeps_the_bias_on_the_accelerator():
    from vqclip.sliding import sample_tokens

    seen = []

    def bias(batch, rows, cols):
        seen.append({batch.device, rows.device, cols.device})
        return torch.zeros(len(rows), UniformGPT.vocab, device=rows.device)

    idx = torch.zeros(1, 17, 16, dtype=torch.long, device=ACCELERATOR)
    cond = torch.zeros(1, 1, dtype=torch.long, device=ACCELERATOR)
    with GeneratorDevices():
        sample_tokens(UniformGPT(), idx, cond, bias=bias, generator=torch.Generator().manual_seed(0))
    assert seen and all(devices == {ACCELERATOR} for devices in seen)


def test_the_same_seed_draws_the_same_tokens_whatever_device_the_probabilities_are_on():
    """Drawn on the CPU generator, a seed's tokens do not depend on where the probabilities were computed."""
    from vqclip.sliding import sample

    probs = torch.softmax(torch.randn(64, 50, generator=torch.Generator().manual_seed(1)), -1)
    first = sample(probs, torch.Generator().manual_seed(5))
    with GeneratorDevices():
        on_cpu = sample(probs, torch.Generator().manual_seed(5))
    assert torch.equal(first, on_cpu)
    assert sample(probs.double(), torch.Generator().manual_seed(5)).equal(first)


def test_cutouts_draw_on_the_generator_and_apply_on_the_image_device(monkeypatch):
    """Boxes, kornia parameters and noise are drawn on the CPU generator and moved to the image's device."""
    import contextlib

    from vqclip.cutouts import Cutouts

    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())  # none on meta

    cut = Cutouts(16, 4, augment=(), noise_fac=0.1)
    with GeneratorDevices() as check:
        draw = cut.draw(40, 48, torch.Generator().manual_seed(0))
        out = cut(torch.zeros(1, 3, 40, 48, device=ACCELERATOR), draw)
    assert out.device == ACCELERATOR and out.shape == (4, 3, 16, 16)
    assert check.draws and all(device == "cpu" for _, device in check.draws)


@pytest.mark.parametrize("init", ["tokens", "noise"])
def test_the_initial_latent_and_noise_prompts_draw_on_the_cpu(init):
    """The init's random tokens or noise image and a noise prompt's embedding are drawn on the CPU generator
    and moved to the models' device."""
    from types import SimpleNamespace

    from vqclip.config import GenerationConfig
    from vqclip.pipeline.guided import initial_latent

    embedded = []

    class VQGAN:
        factor = 8
        config = SimpleNamespace(n_embed=16)

        def embed(self, idx):
            embedded.append(idx.device)
            return torch.zeros(1, 4, *idx.shape[1:], device=idx.device)

        def encode_codes(self, pixels):
            embedded.append(pixels.device)
            return torch.zeros(1, 4, pixels.shape[2] // 8, pixels.shape[3] // 8, device=pixels.device)

    models = SimpleNamespace(vqgan=VQGAN(), device=ACCELERATOR)
    request = SimpleNamespace(cfg=GenerationConfig(prompt="a cat", init=init, seed=1), init_image=None)
    with GeneratorDevices() as check:
        z = initial_latent(models, request, (32, 24), torch.Generator().manual_seed(1))
    assert z.device == ACCELERATOR and embedded == [ACCELERATOR]
    assert check.draws and all(device == "cpu" for _, device in check.draws)
