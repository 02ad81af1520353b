"""Cutouts: the two resamplers against what they claim to compute, the reference's colour jitter, and
randomness that comes only from the generator passed in, drawn once for every chunk size."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vqclip.cutouts import CutoutDraw, Cutouts

ALL_AUGMENTATIONS = ("affine", "perspective", "jitter", "erasing", "flip", "sharpness")


def _image(height=48, width=64, seed=0):
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _one_box(x, y, size):
    """A draw of one chosen box, with no augmentation and no noise."""
    return CutoutDraw(torch.tensor([[float(x), float(y), float(size)]]), (), None)


def reference_resample(crop: torch.Tensor, out: int) -> torch.Tensor:
    """The reference implementation's `resample` (VQGAN-CLIP generate.py), applied to one crop."""

    def sinc(x):
        return torch.where(x != 0, torch.sin(math.pi * x) / (math.pi * x), x.new_ones([]))

    def lanczos(x, a):
        out = torch.where(torch.logical_and(-a < x, x < a), sinc(x) * sinc(x / a), x.new_zeros([]))
        return out / out.sum()

    def ramp(ratio, width):
        out, cur = torch.empty([math.ceil(width / ratio + 1)]), 0
        for i in range(out.shape[0]):
            out[i] = cur
            cur += ratio
        return torch.cat([-out[1:].flip([0]), out])[1:-1]

    n, c, h, w = crop.shape
    x = crop.reshape(n * c, 1, h, w)
    if out < h:
        k = lanczos(ramp(out / h, 2), 2)
        x = F.conv2d(F.pad(x, (0, 0, (k.numel() - 1) // 2, (k.numel() - 1) // 2), "reflect"), k[None, None, :, None])
    if out < w:
        k = lanczos(ramp(out / w, 2), 2)
        x = F.conv2d(F.pad(x, ((k.numel() - 1) // 2, (k.numel() - 1) // 2, 0, 0), "reflect"), k[None, None, None, :])
    return F.interpolate(x.reshape(n, c, h, w), (out, out), mode="bicubic", align_corners=True)


@pytest.mark.parametrize("x, y, size", [(5, 3, 40), (0, 0, 48), (20, 10, 17), (30, 30, 11)])
def test_lanczos_resample_is_the_references(x, y, size):
    image = _image()
    cutouts = Cutouts(16, 1, resample="lanczos", noise_fac=0)
    got = cutouts(image, _one_box(x, y, size))
    assert_close(got, reference_resample(image[:, :, y : y + size, x : x + size], 16), atol=1e-5, rtol=1e-5)


def exact_area_resize(crop: torch.Tensor, out: int) -> torch.Tensor:
    """Area averaging with fractional overlaps, computed by brute force: repeat each pixel `out` times,
    then the s x s crop becomes (s*out)^2 pixels and each output pixel averages a whole s x s block."""
    size = crop.shape[-1]
    return F.avg_pool2d(crop.double().repeat_interleave(out, 2).repeat_interleave(out, 3), size).float()


@pytest.mark.parametrize("x, y, size", [(5, 3, 40), (0, 0, 48), (20, 10, 17)])
def test_area_resample_is_exact_area_averaging(x, y, size):
    image = _image()
    cutouts = Cutouts(16, 1, noise_fac=0)
    got = cutouts(image, _one_box(x, y, size))
    assert_close(got, exact_area_resize(image[:, :, y : y + size, x : x + size], 16), atol=1e-5, rtol=1e-5)


def test_unknown_resampler_is_refused():
    with pytest.raises(ValueError, match="resample"):
        Cutouts(16, 1, resample="nearest")


def test_jitter_changes_brightness_and_contrast_as_the_reference():
    """Hue and saturation leave a grey image grey; the reference's jitter also moves its brightness."""
    grey = torch.full((1, 3, 32, 32), 0.5)
    cutouts = Cutouts(32, 32, augment=("jitter",), noise_fac=0)
    cuts = cutouts(grey, cutouts.draw(32, 32, torch.Generator().manual_seed(0)))
    means = cuts.mean((1, 2, 3))
    assert (means - 0.5).abs().max() > 0.02, means


def test_draws_come_only_from_the_generator():
    cutouts = Cutouts(16, 8, cut_pow=0.5, augment=ALL_AUGMENTATIONS)
    image = _image()
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        draw = cutouts.draw(48, 64, torch.Generator().manual_seed(7))
        assert torch.equal(torch.get_rng_state(), state)  # the global generator is neither used nor moved
        runs.append(cutouts(image, draw))
    assert torch.equal(runs[0], runs[1])
    other = cutouts(image, cutouts.draw(48, 64, torch.Generator().manual_seed(8)))
    assert not torch.equal(runs[0], other)


def test_a_slice_of_a_draw_gives_the_same_cutouts_as_the_whole():
    cutouts = Cutouts(16, 6, augment=ALL_AUGMENTATIONS)
    image = _image()
    draw = cutouts.draw(48, 64, torch.Generator().manual_seed(3))
    whole = cutouts(image, draw)
    for chunk in (1, 2, 4):
        parts = torch.cat([cutouts(image, draw[s : s + chunk]) for s in range(0, 6, chunk)])
        assert_close(parts, whole, atol=1e-6, rtol=1e-6)


def test_boxes_stay_inside_non_square_images():
    cutouts = Cutouts(16, 64, cut_pow=0.3)
    draw = cutouts.draw(20, 90, torch.Generator().manual_seed(0))
    x, y, size = draw.boxes.unbind(1)
    assert (size >= 16).all() and (size <= 20).all()
    assert (x >= 0).all() and (x + size <= 90).all() and (y >= 0).all() and (y + size <= 20).all()


def test_perspective_cutouts_stay_finite_under_bf16_autocast():
    """kornia's homographies run in fp32 whatever the autocast: in bf16, about 1 perspective warp in 500
    came out NaN (10 of these 4800 cutouts), which made the step's loss NaN."""
    cutouts = Cutouts(64, 32, augment=("perspective",), noise_fac=0)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    for _ in range(150):
        draw = cutouts.draw(128, 128, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isfinite(cutouts(image, draw)).all()
