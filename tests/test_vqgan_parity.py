"""The VQGAN loads the public taming checkpoint layout strictly and computes what taming computes."""

import torch
from torch.testing import assert_close

from vqclip import load_vqgan

# Float outputs agree with the reference to float32 rounding through a deep network: about 1e-5.
TOL = {"atol": 1e-5, "rtol": 1e-5}


def test_f16_encode_quantize_decode(fixtures, reference):
    model = load_vqgan(fixtures / "vqgan_tiny_f16.ckpt")
    assert model.factor == 16
    assert tuple(model.codebook.shape) == (64, 16)
    with torch.no_grad():
        z = model.encode(reference["x"])
        assert_close(z, reference["f16_encoded"], **TOL)
        z_q, idx = model.quantize(z)
        assert torch.equal(idx, reference["f16_indices"])
        assert_close(z_q, reference["f16_quant"], **TOL)
        # taming's quantiser returns z + (z_q - z), one float rounding away from the code itself, and
        # the reference decoded that tensor: decode the same input.
        assert_close(model.decode(reference["f16_quant"]), reference["f16_decoded"], **TOL)


def test_non_square_latent_decodes_like_reference(fixtures, reference):
    model = load_vqgan(fixtures / "vqgan_tiny_f16.ckpt")
    with torch.no_grad():
        out = model.decode(reference["f16_z_random"])
    assert out.shape == (1, 3, 80, 112)
    assert_close(out, reference["f16_decoded_random"], **TOL)


def test_gumbel_f8(fixtures, reference):
    model = load_vqgan(fixtures / "vqgan_tiny_gumbel_f8.ckpt")
    assert model.factor == 8
    with torch.no_grad():
        z_q, idx = model.quantize(model.encode(reference["x"]))
        assert torch.equal(idx, reference["gumbel_indices"])
        assert_close(z_q, reference["gumbel_quant"], **TOL)
        assert_close(model.decode(z_q), reference["gumbel_decoded"], **TOL)


def test_first_stage_from_transformer_checkpoint(fixtures, reference):
    model = load_vqgan(fixtures / "transformer_tiny_cin.ckpt")  # finds transformer_tiny_cin.yaml beside it
    with torch.no_grad():
        z_q, idx = model.quantize(model.encode(reference["x"]))
        assert torch.equal(idx, reference["f16_indices"])
        assert_close(z_q, reference["f16_quant"], **TOL)
        assert_close(model.decode(reference["f16_quant"]), reference["f16_decoded"], **TOL)


def test_frozen_and_in_eval_mode(fixtures):
    model = load_vqgan(fixtures / "vqgan_tiny_f16.ckpt")
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_decoder_checkpointing_gives_the_same_gradient(fixtures, reference):
    model = load_vqgan(fixtures / "vqgan_tiny_f16.ckpt")
    grads = []
    for enabled in (False, True):
        z = reference["f16_quant"][:1].clone().requires_grad_(True)
        model.decode(z, checkpointing=enabled).square().mean().backward()
        grads.append(z.grad)
    assert_close(grads[0], grads[1])


# ---- the latent the optimisation starts from, and the codes it reads -----------------------------------


def test_an_init_image_starts_from_the_models_own_codes(fixtures, reference):
    """Before the first step the loop's quantisation (nearest code in the codebook space) must read the
    codes the model itself gives the image: for GumbelVQ the argmax of its logits, for VQModel the nearest."""
    for name, own in (("vqgan_tiny_gumbel_f8.ckpt", "gumbel_indices"), ("vqgan_tiny_f16.ckpt", "f16_indices")):
        model = load_vqgan(fixtures / name)
        with torch.no_grad():
            z = model.encode_codes(reference["x"])
        assert torch.equal(model.nearest(z), reference[own]), name
        assert torch.equal(z, model.embed(reference[own]))


def test_one_zoom_step_of_a_gumbel_animation_keeps_the_frames_codes(fixtures):
    """The re-encoded frame is the model's own codes of the moved image. Random-weight frames are noise
    (no two neighbouring pixels alike), so the step is small: the edges move by a sixth of a pixel."""
    from vqclip.animation import latent_transform
    from vqclip.optimize import decode_image

    model = load_vqgan(fixtures / "vqgan_tiny_gumbel_f8.ckpt")
    gen = torch.Generator().manual_seed(0)
    z = model.embed(torch.randint(model.config.n_embed, (1, 8, 8), generator=gen))
    with torch.no_grad():
        _, unmoved = model.quantize(model.encode(decode_image(model, z) * 2 - 1))
        still = model.nearest(latent_transform(model, 1.0, 0.0, (0, 0))(z))
        zoomed = model.nearest(latent_transform(model, 1.005, 0.0, (0, 0))(z))
    assert torch.equal(still, unmoved)
    assert (zoomed == unmoved).float().mean() >= 0.9


def _near_ties(model, n=1024, seed=0):
    """Latents halfway between two random codes (plus a little noise): where rounding picks the code."""
    gen = torch.Generator().manual_seed(seed)
    pick = lambda: model.codebook[torch.randint(model.config.n_embed, (n,), generator=gen)]  # noqa: E731
    z = (pick() + pick()) / 2 + 0.01 * torch.randn(n, model.codebook.shape[1], generator=gen)
    return z.t().reshape(1, -1, 32, n // 32)


def test_codes_are_chosen_in_fp32_under_bf16_autocast(fixtures):
    for name in ("vqgan_tiny_f16.ckpt", "vqgan_tiny_gumbel_f8.ckpt"):
        model = load_vqgan(fixtures / name)
        z = _near_ties(model)
        with torch.no_grad():
            nearest, own = model.nearest(z), model.quantize.indices(z)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert torch.equal(model.nearest(z), nearest), name
                assert torch.equal(model.quantize.indices(z), own), name
