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
        model.set_checkpointing(enabled)
        z = reference["f16_quant"][:1].clone().requires_grad_(True)
        model.decode(z).square().mean().backward()
        grads.append(z.grad)
    assert_close(grads[0], grads[1])
