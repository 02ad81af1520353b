"""vqclip's colour jitter against kornia's ColorJitter for the same drawn parameters: the same values and the
same gradient, on random images and on the edge cases of the HSV round trip (black, white, grey, saturated,
ties between channels, values outside [0, 1])."""

import math
from dataclasses import replace

import kornia.augmentation as K
import pytest
import torch
from kornia.enhance import adjust_hue
from torch.testing import assert_close

from vqclip.colour_jitter import adjust_hue_turns, colour_jitter
from vqclip.cutouts import Cutouts


def _edge_cases(n: int) -> torch.Tensor:
    """Every RGB triple over {0, 0.25, 0.5, 0.75, 1}: black, white, greys, pure and saturated colours, ties."""
    levels = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    triples = torch.cartesian_prod(levels, levels, levels).t().reshape(1, 3, 5, 25)
    return triples.expand(n, 3, 5, 25).contiguous()


def _images(kind: str, n: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "random":
        return torch.rand(n, 3, 24, 24, generator=generator)
    if kind == "edges":
        return _edge_cases(n)
    if kind == "binary":  # black, white and the six pure colours
        return torch.rand(n, 3, 16, 16, generator=generator).round()
    if kind == "near black":
        return torch.rand(n, 3, 16, 16, generator=generator) * 1e-6
    if kind == "near grey":
        return 0.5 + torch.rand(n, 3, 16, 16, generator=generator) * 1e-4
    if kind == "out of range":  # kornia clamps the input first, with an identity gradient inside [0, 1]
        return torch.rand(n, 3, 16, 16, generator=generator) * 1.4 - 0.2
    raise ValueError(kind)


KINDS = ("random", "edges", "binary", "near black", "near grey", "out of range")


def _value_and_grad(fn, x: torch.Tensor, grad_out: torch.Tensor):
    x = x.clone().requires_grad_()
    y = fn(x)
    y.backward(grad_out)
    return y.detach(), x.grad


@pytest.mark.parametrize("kind", KINDS)
def test_hue_turn_is_kornias_adjust_hue(kind):
    gen = torch.Generator().manual_seed(0)
    x = _images(kind, 8, gen).clamp(0, 1)
    turns = torch.rand(8, generator=gen) * 0.2 - 0.1
    turns[0] = 0.5  # half a turn: the complementary colour
    grad_out = torch.randn(x.shape, generator=gen)
    ours, our_grad = _value_and_grad(lambda t: adjust_hue_turns(t, turns), x, grad_out)
    theirs, their_grad = _value_and_grad(lambda t: adjust_hue(t, turns * 2 * math.pi), x, grad_out)
    assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert our_grad.isfinite().all()
    # "near grey" differentiates through 1 / (max - min) with max - min about 1e-4
    assert_close(our_grad, their_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", KINDS)
def test_jitter_is_kornias_color_jitter(kind, seed):
    """The cutouts' jitter (p = 0.7, so some cutouts are left alone) with random orders of the four steps."""
    aug = K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7)
    gen = torch.Generator().manual_seed(seed)
    x = _images(kind, 12, gen)
    grad_out = torch.randn(x.shape, generator=gen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        params = aug.forward_parameters(x.shape)
    ours, our_grad = _value_and_grad(lambda t: colour_jitter(t, params), x, grad_out)
    theirs, their_grad = _value_and_grad(lambda t: aug(t, params=params), x, grad_out)
    assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert our_grad.isfinite().all()
    assert_close(our_grad, their_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("chosen", [[True] * 4, [False] * 4, [True, False, False, True]])
def test_jitter_leaves_the_unchosen_cutouts_alone(chosen):
    aug = K.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.3, p=0.7)
    params = aug.forward_parameters((4, 3, 8, 8))
    params["batch_prob"] = torch.tensor(chosen, dtype=torch.float32)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = colour_jitter(x, params)
    assert_close(out, aug(x, params=params), atol=1e-6, rtol=0)
    for k, picked in enumerate(chosen):
        assert torch.equal(out[k], x[k]) != picked


def test_a_neutral_step_is_skipped_as_kornia_skips_it():
    """With every hue factor 0 kornia skips the hue step, and out-of-range values are only clamped."""
    aug = K.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0, p=1.0)
    params = aug.forward_parameters((3, 3, 8, 8))
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 1.2 - 0.1
    assert_close(colour_jitter(x, params), aug(x, params=params), atol=1e-6, rtol=0)


def test_the_cutouts_jitter_is_kornias():
    """Cutouts applies vqclip's jitter in place of kornia's module, with the parameters kornia drew."""
    cutouts = Cutouts(16, 8, augment=("jitter",), noise_fac=0)
    plain = Cutouts(16, 8, noise_fac=0)
    image = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(4))
    draw = cutouts.draw(40, 48, torch.Generator().manual_seed(5))
    (rows, shared), aug = draw.augment[0], cutouts.augs[0]
    expected = aug(plain(image, replace(draw, augment=())), params={**rows, **shared})
    assert_close(cutouts(image, draw), expected, atol=1e-6, rtol=0)
