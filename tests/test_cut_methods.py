"""The cut methods (`--cut-method`, issue 25): what views each one makes of the canvas. Whole-canvas views
see every pixel, crops lie inside the canvas and see nothing outside their box, the same seed gives the
same views, the overview share shifts over the run, the reference's augmentation settings come with their
method, and the method is recorded in the PNG and replayed."""

import json

import pytest
import torch
from PIL import Image

from tests.conftest import tiny_args
from vqclip.config import CUT_METHODS, GenerationConfig
from vqclip.cutouts import Cutouts, overview_share, pool_canvas

H, W, S, N = 40, 56, 16, 12  # a non-square canvas, CLIP's input size, cutouts


def _canvas(seed=0):
    return torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(seed))


def _views(method, seed=0, progress=0.0, **kw):
    """The views (N, 3, S, S) of a random canvas with no augmentation or noise, their draw, and the canvas."""
    cut = Cutouts(S, N, augment=(), noise_fac=0, method=method, **kw)
    draw = cut.draw(H, W, torch.Generator().manual_seed(seed), progress)
    image = _canvas().requires_grad_(True)
    return cut(image, draw), draw, image


def _pixels_seen(views, image, k) -> torch.Tensor:
    """(H, W) bool: the canvas pixels that view k depends on (a nonzero gradient)."""
    (grad,) = torch.autograd.grad(views[k].sum(), image, retain_graph=True)
    return grad[0].abs().sum(0) > 0


def _whole(draw):
    pooled = draw.pooled if draw.pooled is not None else torch.zeros(len(draw), dtype=torch.bool)
    return pooled & (draw.boxes[:, 2] >= S)


@pytest.mark.parametrize("method", ["latest", "pixray", "overview"])
def test_whole_canvas_views_see_every_pixel_and_are_the_pooled_canvas(method):
    views, draw, image = _views(method)
    whole = _whole(draw).nonzero().flatten().tolist()
    assert whole, "no whole-canvas view"
    pooled = pool_canvas(image.detach(), S)[0]
    for k in whole:
        assert _pixels_seen(views, image, k).all(), f"view {k} misses part of the canvas"
        assert torch.allclose(views[k].detach(), pooled)


@pytest.mark.parametrize("method", ["original", "updated", "nrupdated", "overview"])
def test_crops_lie_inside_the_canvas_and_see_only_their_box(method):
    views, draw, image = _views(method, progress=0.9)
    crops = [k for k in range(N) if draw.pooled is None or not draw.pooled[k]]
    assert crops
    for k in crops:
        x, y, side = (int(v) for v in draw.boxes[k])
        assert 0 <= x and x + side <= W and 0 <= y and y + side <= H and min(S, H) <= side <= H
        seen = _pixels_seen(views, image, k)
        inside = torch.zeros(H, W, dtype=torch.bool)
        inside[y : y + side, x : x + side] = True
        assert not (seen & ~inside).any() and seen[inside].float().mean() > 0.9, (k, x, y, side)


def test_pixrays_zoomed_views_lie_inside_the_pooled_canvas():
    views, draw, image = _views("pixray")
    zoomed = (draw.pooled & (draw.boxes[:, 2] < S)).nonzero().flatten().tolist()
    assert len(zoomed) == int(0.6 * N)
    for k in zoomed:
        x, y, side = (int(v) for v in draw.boxes[k])
        assert 0 <= x and x + side <= S and 0 <= y and y + side <= S and side >= S // 2
        assert not _pixels_seen(views, image, k).all()  # a zoomed view leaves part of the canvas out


@pytest.mark.parametrize("method", CUT_METHODS)
def test_the_same_seed_gives_the_same_views_and_another_seed_others(method):
    cut = Cutouts(S, N, method=method)  # the method's augmentations and noise included
    image = _canvas()
    first, again, other = (cut(image, cut.draw(H, W, torch.Generator().manual_seed(s), 0.5)) for s in (3, 3, 4))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_every_method_draws_the_same_numbers_from_the_generator():
    """The draws after the cutouts' (the next step's, the noise) do not depend on the cut method."""
    after = []
    for method in CUT_METHODS:
        generator = torch.Generator().manual_seed(5)
        Cutouts(S, N, method=method).draw(H, W, generator, 0.3)
        after.append(torch.rand(4, generator=generator))
    assert all(torch.equal(a, after[0]) for a in after)


def test_the_overview_share_of_whole_views_falls_over_the_run():
    counts = [int(_whole(_views("overview", progress=p)[1]).sum()) for p in (0.0, 0.5, 0.99)]
    assert counts == [round(N * overview_share(p)) for p in (0.0, 0.5, 0.99)] == [9, 6, 3]


def test_latest_pads_its_warps_with_black_as_the_reference_does():
    """nerdyrodent's `latest` pads the affine warp with zeros; vqclip's crops repeat the border. On a white
    canvas, views warped by a large affine turn black at the edges only under `latest`."""
    white = torch.ones(1, 3, H, W)
    darkest = {}
    for method in ("latest", "original"):
        cut = Cutouts(S, 64, augment=("affine",), noise_fac=0, method=method)
        darkest[method] = float(cut(white, cut.draw(H, W, torch.Generator().manual_seed(0))).min())
    assert darkest["latest"] < 0.05 and darkest["original"] > 0.99, darkest


def test_each_method_brings_its_augmentations_unless_they_are_named():
    cfg = GenerationConfig("x", cut_method="updated")
    assert cfg.augmentations == ("flip", "jitter", "sharpness", "affine", "perspective")
    assert GenerationConfig("x").augmentations == ("affine", "perspective", "jitter", "erasing")
    assert GenerationConfig("x", cut_method="updated", augment=("flip",)).augmentations == ("flip",)
    assert GenerationConfig("x", cut_method="latest", augment=()).augmentations == ()
    # a record from before --cut-method existed replays with the crops it was made with
    assert GenerationConfig.from_dict({"prompt": "x"}).cut_method == "original"


def test_a_bad_cut_method_is_one_sentence_and_exit_2(vq, tmp_path):
    result = vq("a cat", "--cut-method", "squish", "--vqgan", "nowhere.ckpt", cwd=tmp_path)
    assert result.returncode == 2
    assert b"squish" in result.stderr and b"latest" in result.stderr


@pytest.mark.parametrize("spelling", ["--cut-method", "--cut_method", "-cutm"])
def test_the_references_spellings_are_accepted(spelling):
    from vqclip.cli.generate import generate

    assert generate.make_context("generate", ["x", spelling, "pixray"]).params["cut_method"] == "pixray"


def test_the_cut_method_is_recorded_and_replayed(fixtures, tiny_clip, tmp_path, vq):
    out = tmp_path / "latest.png"
    args = [
        *tiny_args(str(fixtures / "vqgan_tiny_f16.ckpt"), tiny_clip, cutn="4"),
        "--steps",
        "5",
        "--lr",
        "0.5",
    ]  # codes move by step 5
    made = vq("a lighthouse", *args, "-cutm", "latest", "--seed", "7", "--precision", "fp32", "-o", out)
    assert made.returncode == 0, made.stderr.decode()
    with Image.open(out) as im:
        record = json.loads(im.text["vqclip"])
        assert "Cut method: latest" in im.text["parameters"]
        pixels = im.convert("RGB").tobytes()
    assert record["config"]["cut_method"] == "latest"
    crops = vq("a lighthouse", *args, "--seed", "7", "--precision", "fp32", "-o", tmp_path / "original.png")
    assert crops.returncode == 0
    with Image.open(tmp_path / "original.png") as im:
        assert im.convert("RGB").tobytes() != pixels  # the method changes the picture
    replayed = vq("replay", out, "-q")
    assert replayed.returncode == 0, replayed.stderr.decode()
    with Image.open(replayed.stdout.decode().strip()) as im:
        assert im.convert("RGB").tobytes() == pixels
