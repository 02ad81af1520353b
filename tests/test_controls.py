"""Issue 26's controls at their edges: validation before any model loads (exit 2, one sentence), the
schedules and optimisers, the pixel inits, and every control through the CLI, `vqclip batch` and
`vqclip replay` with the tiny fixture models (the same pixels, the PNG record). What each control does to
the picture is measured in the shapes world in tests/test_controls_effects.py."""

import json
import math

import pytest
import torch
from PIL import Image

from vqclip.config import GenerationConfig
from vqclip.errors import UsageError
from vqclip.inits import init_pixels
from vqclip.losses import PixelLosses, parse_palette, seam_error
from vqclip.regions import parse_region
from vqclip.schedules import OPTIMIZERS, Tracker, lr_factor, make_optimizer


@pytest.mark.parametrize(
    "args, message",
    [
        (["--palette", "black,whyte"], "'whyte' is not a colour"),
        (["--palette", ","], "names no colour"),
        (["--region", "0,0,1.5,1:a cat"], "must be fractions between 0 and 1"),
        (["--region", "0.5,0,0.2,1:a cat"], "X0 < X1 and Y0 < Y1"),
        (["--region", "0,0,1:a cat"], 'should be "X0,Y0,X1,Y1:PROMPT'),
        (["--region", "0,0,1,1:"], "has no prompt text"),
        (["--region", "0,0,1,1:a cat:1e"], "is not a number"),
        (["--tv", "-1"], "--tv must be at least 0"),
        (["--symmetry", "-0.5"], "--symmetry must be at least 0"),
        (["--palette", "red", "--palette-weight", "-2"], "--palette-weight must be at least 0"),
        (["--saturation", "nan"], "--saturation must be a finite number"),
        (["--optimizer", "diffgrad"], "'diffgrad' is not one of"),
        (["--lr-schedule", "step"], "'step' is not one of"),
        (["--keep", "first"], "'first' is not one of"),
        (["--init", "plasma"], "'plasma' is not one of"),
        (["--auto-stop", "-3"], "-3 is not in the range x>=0"),
    ],
)
def test_bad_controls_are_exit_2_before_any_model_loads(tmp_path, vq, args, message):
    # --offline and no weights in the cache: anything that got as far as loading would be exit 3
    r = vq("a cat", *args, "--offline", cwd=tmp_path)
    assert r.returncode == 2, r.stderr.decode()
    assert message in r.stderr.decode() and "Traceback" not in r.stderr.decode(), r.stderr.decode()
    assert not list(tmp_path.iterdir())


def test_the_api_checks_the_same():
    with pytest.raises(UsageError, match="not a colour"):
        GenerationConfig("a cat", palette=("black", "nocolour"))
    with pytest.raises(UsageError, match="between 0 and 1"):
        GenerationConfig("a cat", regions=("-0.1,0,1,1:a dog",))
    with pytest.raises(UsageError, match="tuples of strings"):
        GenerationConfig("a cat", palette="black,white")
    GenerationConfig("", regions=("0,0,0.5,1:a dog",))  # regions alone are a prompt


def test_region_syntax():
    r = parse_region("0,0.25,0.5,1:a red circle: with a colon:2:0.3")
    assert r.box == (0, 0.25, 0.5, 1) and r.prompt.text == "a red circle: with a colon"
    assert (r.prompt.weight, r.prompt.stop) == (2, 0.3)
    assert r.pixels(128, 64) == (0, 16, 64, 64)
    assert parse_region("0.99,0,1,0.001:x").pixels(64, 64) == (63, 0, 64, 1)  # at least a pixel
    assert parse_palette("black, #ff2200 ,orange") == ((0, 0, 0), (255, 34, 0), (255, 165, 0))


def test_schedules():
    assert [lr_factor("drop", i, 100) for i in (0, 74, 75, 99)] == [1, 1, 0.1, 0.1]  # pixray's /10 at 75 %
    assert lr_factor("cosine", 0, 10) == 1 and math.isclose(lr_factor("cosine", 5, 10), 0.5)
    assert all(lr_factor("constant", i, 7) == 1 for i in range(7))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_descends(name):
    """Each optimiser lowers a quadratic in a few steps, also after its state is rebuilt (animation)."""
    x = torch.full((4,), 3.0, requires_grad=True)
    for _rebuild in range(2):
        opt = make_optimizer(name, [x], 0.1)
        for _ in range(20):
            opt.zero_grad()
            (x**2).sum().backward()
            opt.step()
    assert float((x.detach() ** 2).sum()) < 36 * 0.8, name


def test_tracker_keeps_the_best_and_stops_after_patience():
    t = Tracker(seed=1, keep_best=True, patience=3)
    for i, loss in enumerate([5.0, 4.0, 4.5, 3.0, 3.5, 3.2, 3.1, 3.3]):
        t.observe(i, 0, torch.tensor([float(i)]), loss)
        if t.should_stop(i):
            break
    assert (t.best_step, float(t.best_z), i) == (3, 3.0, 6)
    t.observe(7, 1, torch.tensor([7.0]), 9.0)  # a new story phase starts over
    assert t.best_step == 7 and not t.should_stop(7)


@pytest.mark.parametrize("kind", ["gradient", "pixels", "perlin"])
def test_pixel_inits_are_images_drawn_from_the_generator(kind):
    one, two, other = (init_pixels(kind, 40, 48, 8, torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert one.shape == (1, 3, 40, 48) and float(one.min()) >= 0 and float(one.max()) <= 1
    assert torch.equal(one, two) and not torch.equal(one, other)
    assert float(one.std()) > 0.05  # not flat
    if kind == "pixels":  # one colour per 8 x 8 cell
        assert torch.equal(one[..., :8, :8], one[..., :1, :1].expand(1, 3, 8, 8))


def test_pixel_losses_pull_the_way_their_names_say():
    """A few gradient steps on a random image: each loss lowers its own measure."""
    from vqclip.losses import mirror_error, palette_fraction, total_variation

    palette = parse_palette("black,white,orange")
    cases = {
        "tv": (PixelLosses(tv=1.0), total_variation, -1),
        "symmetry": (PixelLosses(symmetry=1.0), mirror_error, -1),
        "palette": (PixelLosses(palette=palette, palette_weight=1.0), lambda a: palette_fraction(a, palette), 1),
        "saturation": (PixelLosses(saturation=1.0), lambda a: float((a.max(-1) - a.min(-1)).mean()), 1),
        "tile": (PixelLosses(tv=1.0, wrap=True), lambda a: seam_error(a)[0], -1),
    }
    for name, (loss, measure, sign) in cases.items():
        x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        before = measure(x.detach()[0].permute(1, 2, 0).numpy())
        opt = torch.optim.Adam([x], lr=0.02)
        for _ in range(30):
            opt.zero_grad()
            torch.stack(loss(x)).sum().backward()
            opt.step()
            x.data.clamp_(0, 1)
        after = measure(x.detach()[0].permute(1, 2, 0).numpy())
        assert sign * (after - before) > 0, (name, before, after)


def _pixels(path):
    with Image.open(path) as im:
        return im.convert("RGB").tobytes(), json.loads(im.text["vqclip"]), im.text["parameters"]


CONTROLS = [
    "--optimizer", "radam", "--lr-schedule", "drop", "--keep", "best", "--auto-stop", "50",
    "--tv", "0.5", "--saturation", "0.2", "--symmetry", "0.5", "--palette", "black,white,#ff8800",
    "--palette-weight", "0.5", "--region", "0,0,0.5,1:a red apple:1.5", "--region", "0.5,0,1,1:a pear",
    "--tile", "--init", "perlin",
]  # fmt: skip


def test_every_control_through_the_cli_batch_and_replay(fixtures, tiny_clip, tmp_path, vq):
    """All controls at once: recorded, in the parameters text, and replayed to the same pixels, from a
    generated image and from a batch's."""
    models = ["--vqgan", fixtures / "vqgan_tiny_f16.ckpt", "--clip", tiny_clip, "--size", "64", "--cutn", "2"]
    args = [*models, "--steps", "4", "--precision", "fp32", "--seed", "3", "-q", *CONTROLS]
    r = vq("a fruit bowl", *args, "-o", tmp_path / "one.png")
    assert r.returncode == 0, r.stderr.decode()
    pixels, record, params = _pixels(tmp_path / "one.png")
    cfg = record["config"]
    assert (cfg["optimizer"], cfg["lr_schedule"], cfg["keep"], cfg["auto_stop"]) == ("radam", "drop", "best", 50)
    assert (cfg["tv"], cfg["saturation"], cfg["symmetry"], cfg["palette_weight"]) == (0.5, 0.2, 0.5, 0.5)
    assert cfg["palette"] == ["black", "white", "#ff8800"] and cfg["tile"] is True and cfg["init"] == "perlin"
    assert cfg["regions"] == ["0,0,0.5,1:a red apple:1.5", "0.5,0,1,1:a pear"]
    assert record["tracker"]["best_step"] in range(5) and record["complete"]
    for text in ("Optimizer: radam", "LR schedule: drop", "Palette: black white #ff8800", "Tile: on", "Kept: best"):
        assert text in params, params
    replayed = vq("replay", tmp_path / "one.png", "-q", "-o", tmp_path / "replayed.png")
    assert replayed.returncode == 0, replayed.stderr.decode()
    assert _pixels(tmp_path / "replayed.png")[0] == pixels

    (tmp_path / "p.txt").write_text("a fruit bowl\n")
    b = vq("batch", tmp_path / "p.txt", "--outdir", tmp_path / "batch", *args)
    assert b.returncode == 0, b.stderr.decode()
    path = b.stdout.decode().split()[0]
    batch_pixels, batch_record, _ = _pixels(path)
    assert {k: batch_record["config"][k] for k in cfg if k != "seed"} == {k: v for k, v in cfg.items() if k != "seed"}
    again = vq("replay", path, "-q", "-o", tmp_path / "batch-replayed.png")
    assert again.returncode == 0 and _pixels(tmp_path / "batch-replayed.png")[0] == batch_pixels


def test_auto_stop_ends_the_run_and_the_record_says_where(fixtures, tiny_clip, tmp_path, vq):
    """With a patience of 1 the tiny models' noisy loss stops the run long before its 40 steps; the PNG is a
    finished image (not a partial one) that says where, and replays to the same pixels."""
    models = ["--vqgan", fixtures / "vqgan_tiny_f16.ckpt", "--clip", tiny_clip, "--size", "64", "--cutn", "2"]
    args = [*models, "--steps", "40", "--lr", "0.5", "--seed", "1", "-q", "--auto-stop", "1"]
    r = vq("a cat", *args, "-o", tmp_path / "cat.png")
    assert r.returncode == 0, r.stderr.decode()
    pixels, record, params = _pixels(tmp_path / "cat.png")
    stopped = record["tracker"]["stopped_at"]
    assert 1 <= stopped < 40 and record["steps_done"] == stopped and record["complete"], record
    assert f"Steps: {stopped}," in params and f"(stopped at step {stopped})" in params
    replayed = vq("replay", tmp_path / "cat.png", "-q", "-o", tmp_path / "again.png")
    assert replayed.returncode == 0 and _pixels(tmp_path / "again.png")[0] == pixels


def _latents(fixtures, tiny_clip, steps=8, **settings):
    """The latent after each step of a short run with the tiny models."""
    from vqclip import generate

    cfg = GenerationConfig(
        "a cat",
        vqgan=str(fixtures / "vqgan_tiny_f16.ckpt"),
        clip=(tiny_clip,),
        size=(64, 64),
        cutn=2,
        steps=steps,
        seed=2,
        precision="fp32",
        **settings,
    )
    seen = []
    generate(cfg, callback=lambda step: seen.append(step.z))
    return seen


def test_the_drop_schedule_and_the_optimizer_reach_the_loop(fixtures, tiny_clip):
    """drop: the latent moves about a tenth as far per step in the last quarter (measured 0.1x; constant
    1.0x); each optimiser gives another latent from the same start."""

    def late_over_early(zs):
        moves = [float((b - a).abs().mean()) for a, b in zip(zs, zs[1:], strict=False)]
        return sum(moves[-2:]) / 2 / (sum(moves[:4]) / 4)

    assert late_over_early(_latents(fixtures, tiny_clip, lr_schedule="drop")) < 0.3
    assert late_over_early(_latents(fixtures, tiny_clip, lr_schedule="constant")) > 0.5
    finals = [_latents(fixtures, tiny_clip, steps=2, optimizer=name)[1] for name in OPTIMIZERS]
    assert all(not torch.equal(a, b) for i, a in enumerate(finals) for b in finals[i + 1 :])


# ---- mask-image regions ------------------------------------------------------------------------------


def _mask(path, size=(40, 40), white=None):
    """A black PNG with a white disc (or the box `white`, in pixels) at `path`."""
    from PIL import ImageDraw

    image = Image.new("L", size, 0)
    draw = ImageDraw.Draw(image)
    if white == "disc":
        draw.ellipse((4, 8, 28, 32), fill=255)
    elif white is not None:
        draw.rectangle(white, fill=255)
    image.save(path)
    return path


def test_bad_masks_are_exit_2_before_any_model_loads(tmp_path, vq):
    """A missing mask, a file that is not an image, a mask with no white: one sentence, exit 2, nothing
    loaded (--offline with an empty cache would be exit 3)."""
    (tmp_path / "notes.png").write_text("not an image")
    _mask(tmp_path / "black.png")
    cases = [
        ("missing.png:a cat", "Region mask missing.png does not exist"),
        ("notes.png:a cat", "is not an image that can be read"),
        ("black.png:a cat", "has no white area"),
        ("black.png:", "has no prompt text after its mask image"),
    ]
    for region, message in cases:
        r = vq("a cat", "--region", region, "--offline", cwd=tmp_path)
        assert r.returncode == 2, (region, r.stderr.decode())
        err = r.stderr.decode()
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err


def test_mask_region_syntax_and_mask_on_the_canvas(tmp_path):
    """A head of numbers and commas is a box, anything else a mask's path (a Windows drive's colon kept);
    the mask is stretched to the canvas, and its box is the white area's bounding box."""
    from vqclip.regions import is_mask, with_mask

    assert not is_mask("0,0,1:x") and is_mask("sky.png:x") and is_mask(r"C:\masks\sky.png:a sky:2")
    r = parse_region(r"C:\masks\sky.png:a sky: at night:2:0.5")
    assert r.mask_path == r"C:\masks\sky.png" and r.prompt == type(r.prompt)("a sky: at night", 2, 0.5)
    path = _mask(tmp_path / "m.png", (40, 40), white=(10, 0, 29, 19))  # the top-middle 20 x 20
    with Image.open(path) as im:
        r = with_mask(parse_region(f"{path}:a sun"), str(path), "0" * 64, im.copy())
    mask = r.mask_at(80, 40)  # stretched twice as wide
    assert mask.shape == (40, 80) and mask.sum() == 40 * 20 and r.pixels(80, 40) == (20, 0, 60, 20)
    tiny = _mask(tmp_path / "dot.png", (400, 400), white=(200, 200, 200, 200))  # one white pixel in 160000
    with Image.open(tiny) as im:
        dot = with_mask(parse_region(f"{tiny}:a dot"), str(tiny), "0" * 64, im.copy())
    assert dot.mask_at(32, 32).sum() >= 1  # a white area too small for the canvas still draws somewhere


def test_a_mask_regions_cutouts_see_and_pull_only_the_mask(fixtures, tiny_clip, tmp_path):
    """The region's cutouts are drawn inside the mask's bounding box and see the outside of the mask as
    flat grey: its gradient on the image is zero everywhere outside the white disc and non-zero inside
    it; the same holds for what --keep best scores. Broken (the mask not applied, the box alone): the
    gradient reaches the box's corners outside the disc and the test fails."""
    from vqclip.cutouts import Cutouts
    from vqclip.guidance import Guide, RegionTargets, Target
    from vqclip.optimize import region_losses
    from vqclip.pipeline.load import load_models
    from vqclip.regions import with_mask

    cfg = GenerationConfig("x", vqgan=str(fixtures / "vqgan_tiny_f16.ckpt"), clip=(tiny_clip,), precision="fp32")
    clip = load_models(cfg).clips[0]
    path = _mask(tmp_path / "disc.png", white="disc")
    with Image.open(path) as im:
        region = with_mask(parse_region(f"{path}:a cat"), str(path), "0" * 64, im.copy())
    target = Target(torch.randn(clip.embed_dim, generator=torch.Generator().manual_seed(0)))
    rt = RegionTargets.of(region, (64, 64), [target], "cpu")
    guide = Guide(clip, Cutouts(clip.input_size, 8, augment=("affine",)), [[]], [rt])
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    image.grad = torch.zeros_like(image)
    (loss,) = region_losses(guide, image, torch.Generator().manual_seed(2))
    inside = torch.from_numpy(region.mask_at(64, 64))
    pulled = image.grad.abs().sum(1)[0] > 0  # (64, 64)
    rows, cols = torch.nonzero(inside, as_tuple=True)
    tight = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
    assert math.isfinite(float(loss)) and rt.box == region.pixels(64, 64) == tight
    assert not pulled[~inside].any(), int(pulled[~inside].sum())
    assert pulled[inside].float().mean() > 0.9
    # what CLIP sees outside the disc is grey whatever the image holds there
    x0, y0, x1, y1 = rt.box
    part = image.detach()[0, :, y0:y1, x0:x1]
    seen, mask = rt.masked(part[None])[0], rt.mask[0, 0]
    assert torch.all(seen[:, ~mask] == 0.5) and torch.equal(seen[:, mask], part[:, mask])
    tracker = Tracker(seed=1)
    scored = tracker.guide_loss([guide], 0, image.detach())
    noisy = image.detach().clone()
    noisy[:, :, ~inside] = torch.rand(int((~inside).sum()) * 3).reshape(3, -1)  # only outside the mask
    assert tracker.guide_loss([guide], 0, noisy) == scored


def test_a_mask_region_is_recorded_replayed_and_checked(fixtures, tiny_clip, tmp_path, vq):
    """A mask region through the CLI: the config records the mask's resolved path, `inputs` its sha256;
    a mask whose white area is a box draws the same pixels as that box; replay gives the same pixels from
    another folder, and refuses once the mask file has changed."""
    models = ["--vqgan", fixtures / "vqgan_tiny_f16.ckpt", "--clip", tiny_clip, "--size", "64", "--cutn", "2"]
    args = [*models, "--steps", "3", "--precision", "fp32", "--seed", "5", "-q", "--region", "0.5,0,1,1:a pear"]
    left = _mask(tmp_path / "left.png", (64, 64), white=(0, 0, 31, 63))  # exactly the box 0,0,0.5,1
    r = vq("a fruit bowl", *args, "--region", "left.png:a red apple:1.5", "-o", tmp_path / "mask.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    box = vq("a fruit bowl", *args, "--region", "0,0,0.5,1:a red apple:1.5", "-o", tmp_path / "box.png")
    assert box.returncode == 0, box.stderr.decode()
    pixels, record, params = _pixels(tmp_path / "mask.png")
    assert pixels == _pixels(tmp_path / "box.png")[0]
    from vqclip.weights.cache import sha256_file

    assert record["config"]["regions"] == ["0.5,0,1,1:a pear", f"{left.resolve()}:a red apple:1.5"]
    assert record["inputs"] == {str(left.resolve()): sha256_file(left)}
    assert f"{left.resolve()}:a red apple:1.5" in params
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = vq("replay", tmp_path / "mask.png", "-q", "-o", tmp_path / "again.png", cwd=elsewhere)
    assert again.returncode == 0 and _pixels(tmp_path / "again.png")[0] == pixels, again.stderr.decode()
    _mask(left, (64, 64), white=(0, 0, 20, 63))
    changed = vq("replay", tmp_path / "mask.png", "-q", "-o", tmp_path / "changed.png")
    assert changed.returncode == 2 and "has changed since" in changed.stderr.decode()
