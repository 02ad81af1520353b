"""The lean backward passes: the decoder and the ViT keep fewer tensors for the backward pass and give the
same gradient; the text tower can be dropped once the prompts are encoded."""

import functools

import pytest
import torch

from vqclip.weights.loading import load_vqgan


def saved_bytes(fn, x: torch.Tensor, model: torch.nn.Module) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of fn(x), the model's weights
    excluded: the activations."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x.detach().requires_grad_(True))
    return sum(kept.values())


def input_grad(fn, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    out = fn(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)))
    return x.grad


@pytest.fixture(scope="module")
def vqgan(fixtures):
    model = load_vqgan(fixtures / "vqgan_tiny_f16.ckpt").requires_grad_(False)
    model.use_channels_last()
    return model


@pytest.fixture
def latent(vqgan):
    idx = torch.randint(vqgan.config.n_embed, (1, 4, 5), generator=torch.Generator().manual_seed(0))
    return vqgan.embed(idx).float()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_frozen_decoder_keeps_less_and_gives_the_same_gradient(vqgan, latent, checkpointing):
    decode = functools.partial(vqgan.decode, checkpointing=checkpointing)
    try:
        lean = input_grad(decode, latent)
        lean_bytes = saved_bytes(decode, latent, vqgan)
        vqgan.requires_grad_(True)  # trainable weights: autograd's own backward, which keeps every input
        plain = input_grad(decode, latent)
        plain_bytes = saved_bytes(decode, latent, vqgan)
    finally:
        vqgan.requires_grad_(False)
    torch.testing.assert_close(lean, plain, rtol=1e-5, atol=1e-6)
    if not checkpointing:  # 0.46 here; 0.32 on the full-size f16 decoder, with three blocks per level
        assert lean_bytes < 0.5 * plain_bytes, (lean_bytes, plain_bytes)


def test_the_fast_vit_with_folded_quick_gelu_matches_open_clip_and_keeps_less(tiny_clip):
    import open_clip

    from vqclip.weights.clip import load_clip, parse_clip_name

    clip = load_clip(tiny_clip)  # its QuickGELU MLPs are folded into SiLU ones
    source = parse_clip_name(tiny_clip)
    original = open_clip.create_model(source.arch, pretrained=source.weights).eval().requires_grad_(False)
    assert sum(isinstance(m, torch.nn.SiLU) for m in clip.model.modules()) == 4  # two image, two text blocks
    x = torch.rand(3, 3, clip.input_size, clip.input_size, generator=torch.Generator().manual_seed(1))

    def reference(t):
        return original.encode_image((t - clip.mean) / clip.std)

    torch.testing.assert_close(clip.encode_image(x), reference(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(input_grad(clip.encode_image, x), input_grad(reference, x), rtol=1e-4, atol=1e-6)
    assert saved_bytes(clip.encode_image, x, clip.model) < 0.8 * saved_bytes(reference, x, original)
    tokens = clip.tokenizer(["a red apple"])
    torch.testing.assert_close(clip.encode_text(["a red apple"]), original.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_dropping_the_text_tower_frees_it_and_keeps_the_image_tower(tiny_clip):
    from vqclip.weights.clip import load_clip

    clip = load_clip(tiny_clip)
    x = torch.rand(2, 3, clip.input_size, clip.input_size)
    before = clip.encode_image(x)

    def held() -> int:
        return sum(t.numel() * t.element_size() for t in [*clip.model.parameters(), *clip.model.buffers()])

    total, text = held(), clip.text_tower_bytes()
    assert text > 0 and clip.encode_text(["a cat"]).shape == (1, clip.embed_dim)
    clip.drop_text_tower()
    assert clip.text_tower_bytes() == 0 and held() == total - text
    torch.testing.assert_close(clip.encode_image(x), before)
    with pytest.raises(RuntimeError, match="text tower was dropped"):
        clip.encode_text(["a cat"])
