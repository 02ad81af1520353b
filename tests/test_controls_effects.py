"""What issue 26's controls do to the picture, measured in the shapes world with the shipped models (VQGAN
shapes_f8, CLIP A guiding, the independent judge): each test compares runs that differ only in the control,
over a few seeds, and fails when the control is disabled in the code (each was broken once on purpose; the
break and what the test then saw are in each docstring). Small runs (96 px, 16 cutouts, 25-60 steps, fp32),
and the plain runs are shared: one 60-step run per seed, read at steps 25, 40 and 60 (a run's image at step k
is the image of the same run stopped at k). Figures measured on a 2-core Intel Xeon (family 6 model 167),
one thread, natively and with oneDNN and ATen held to AVX2 (`ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2`, as an AVX2-only CPU runs); `pytest tests/test_controls_effects.py -s` prints them.

"Judged right" is the judge's colour and background: at 40 steps the shape is not yet reliable (the quality
suite's shape accuracy is 25 % at 50 steps), colour and background are.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from vqclip import generate
from vqclip.config import GenerationConfig
from vqclip.losses import mirror_error, palette_fraction, parse_palette, seam_error, total_variation
from vqclip.pipeline.load import load_models
from vqclip.shapes import CLIP_A, VQGAN
from vqclip.shapes.judge import judge, load_judge, probabilities
from vqclip.shapes.scenes import BACKGROUNDS, COLOURS

BASE = GenerationConfig(
    "an orange circle on a black background",
    vqgan=VQGAN,
    clip=(CLIP_A,),
    size=(96, 96),
    steps=40,
    cutn=16,
    precision="fp32",
)
SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def the_judge():
    return load_judge()


@pytest.fixture(scope="module")
def models():
    return load_models(BASE)


SYMMETRY_STEPS, PALETTE_STEPS = 25, 60  # the other controls are read at BASE.steps


@pytest.fixture(scope="module")
def plain(models):
    """The runs without any control: {steps: {seed: image}} at 25, 40 and 60 steps, from one run per seed."""
    at = {SYMMETRY_STEPS: {}, BASE.steps: {}, PALETTE_STEPS: {}}
    for s in SEEDS:

        def keep(step, s=s):
            if step.i in at:
                at[step.i][s] = step.image()

        generate(replace(BASE, seed=s, steps=PALETTE_STEPS), models=models, callback=keep)
    return at


def right(image, the_judge, colour="orange", background="black") -> bool:
    v = judge(image, the_judge)[0]
    return v.colour == colour and v.background == background


def p_prompt(images, the_judge, colour="orange", background="black") -> float:
    """The judge's probability of the prompt's colour times that of its background, averaged over the images:
    how surely the prompt is drawn, without a verdict's flip at one half (a seed's background at P 0.52)."""
    _, colours, backgrounds = probabilities(images, the_judge)
    both = colours[:, list(COLOURS).index(colour)] * backgrounds[:, list(BACKGROUNDS).index(background)]
    return float(both.mean())


def with_control(models, seeds=SEEDS, **settings):
    return {s: generate(replace(BASE, seed=s, **settings), models=models).image for s in seeds}


def test_symmetry_halves_the_mirror_error_and_keeps_the_prompt(models, plain, the_judge):
    """--symmetry 2, 25 steps: the mirror error falls to at most half in every seed, and the prompt is drawn
    as surely (`p_prompt` at least the plain runs' minus 0.15). Measured (mirrored over plain, per seed;
    p_prompt with and without): native 0.27, 0.22, 0.29; 0.87 against 0.61. AVX2 0.30, 0.20, 0.31; 0.82
    against 0.65 (a margin of 1.6x on the worst seed). Broken (the symmetry loss not added to the step): the
    mirror error is the plain run's (1.0, 1.0, 1.0) and the test fails."""
    mirrored = with_control(models, steps=SYMMETRY_STEPS, symmetry=2.0)
    before = plain[SYMMETRY_STEPS]
    ratios = [mirror_error(mirrored[s]) / mirror_error(before[s]) for s in SEEDS]
    kept = p_prompt(list(mirrored.values()), the_judge), p_prompt(list(before.values()), the_judge)
    print("score symmetry", [round(r, 3) for r in ratios], "p_prompt", [round(p, 3) for p in kept])
    assert max(ratios) <= 0.5, ratios
    assert kept[0] >= kept[1] - 0.15, kept


def test_tv_smooths_by_a_third_and_keeps_the_prompt(models, plain, the_judge):
    """--tv 20, 40 steps: total variation falls by at least a third in every seed, and the prompt is drawn as
    surely (`p_prompt` at least the plain runs' minus 0.15). Measured (smoothed over plain, per seed;
    p_prompt with and without): native 0.37, 0.49, 0.40; 0.83 against 0.81. AVX2 0.40, 0.49, 0.42; 0.74
    against 0.74. (The verdicts, counted, flipped with the CPU: 3 of 3 right with tv and without natively, 2
    against 3 with AVX2, seed 2's background at P(black) 0.31-0.52.) Fewer steps do not do: at 20-30 the
    smoothed runs are judged right 0-2 times of 3. Broken (the tv term dropped): total variation unchanged,
    the test fails."""
    smooth = with_control(models, tv=20.0)
    before = plain[BASE.steps]
    ratios = [total_variation(smooth[s]) / total_variation(before[s]) for s in SEEDS]
    kept = p_prompt(list(smooth.values()), the_judge), p_prompt(list(before.values()), the_judge)
    print("score tv", [round(r, 3) for r in ratios], "p_prompt", [round(p, 3) for p in kept])
    assert max(ratios) <= 2 / 3, ratios
    assert kept[0] >= kept[1] - 0.15, kept


PALETTE = ("black", "white", "orange")


def test_palette_puts_nine_pixels_in_ten_near_a_palette_colour(plain, models, the_judge):
    """--palette black,white,orange --palette-weight 5, 60 steps (the loss needs them: the guidance draws
    the prompt first): over seeds 1-3, the mean share of pixels within 0.25 (Euclidean, RGB in 0..1) of a
    palette colour at least 90 %, at least 2 points above the same runs without it, with the prompt still
    judged right (colour and background) in at least 2 of 3. Measured: native 90.8, 91.3, 92.8 % (mean
    91.6 %) against 86.8 % without it; AVX2 91.4 % against 86.6 %; all three judged orange on black on both.
    At 80 steps 92.1 % against 87.7 %; at 40-50 steps 87-90 %. Weight 10 at 80 steps gave 91.5-92.6 % but a
    background judged white on seed 1; squaring the distance did worse (77-88 % at 40 steps). The VQGAN's own
    round trip of a rendered orange circle on black reaches 94-95 % (its edges are soft), so the target needs
    few, large blobs. Broken (the palette term dropped): the plain runs' figures, the test fails."""
    colours = parse_palette(",".join(PALETTE))
    paletted = with_control(models, steps=PALETTE_STEPS, palette=PALETTE, palette_weight=5.0)
    before = np.mean([palette_fraction(plain[PALETTE_STEPS][s], colours) for s in SEEDS])
    after = np.mean([palette_fraction(paletted[s], colours) for s in SEEDS])
    print(f"score palette {after:.3f} plain {before:.3f}")
    assert after >= 0.9 and after >= before + 0.02, (before, after)
    assert sum(right(paletted[s], the_judge) for s in SEEDS) >= 2, [judge(paletted[s], the_judge)[0] for s in SEEDS]


def test_tile_closes_the_seams(models, plain):
    """--tile: the seam error (last column against the first, last row against the first, mean absolute
    difference) within the image's own neighbouring-column differences: no larger than the largest between
    two neighbouring columns or rows inside it (measured 0.066 against 0.109 on seed 1, a margin of 1.6x),
    where the plain run's seam is 3x its largest inside edge (0.250 against 0.083). Broken (the roll alone,
    the decoder padding with zeros): the seam 0.278, the inside's mean edge 0.034, the test fails."""
    tiled = with_control(models, seeds=SEEDS[:1], tile=True)[1]
    seam, inner = seam_error(tiled)
    plain_seam, plain_inner = seam_error(plain[BASE.steps][1])
    assert plain_seam > 2 * plain_inner
    assert seam <= inner, (seam, inner)


def test_regions_put_each_colour_in_its_own_half(models, the_judge):
    """No global prompt, "a red circle" in the left half and "a blue square" in the right half, 25 steps and 8
    cutouts per region: the judge, run on each half, separates the colours: the mean over seeds 1-3 of
    (P(red) left - P(red) right + P(blue) right - P(blue) left) / 2 is at least 0.4. Measured: native 0.83
    (0.99, 1.00, 0.50: seed 3 draws purple on the left), AVX2 0.70 (0.99, 1.00, 0.11: seed 3 purple on both).
    Broken (the regions' cutouts drawn from the whole image): -0.13 (blue, not red, on the left), the test
    fails. (Counting verdicts, 2 of 3 right, sat at its threshold on both kinds.)"""
    cfg = replace(BASE, prompt="", regions=("0,0,0.5,1:a red circle", "0.5,0,1,1:a blue square"), cutn=8, steps=25)
    red, blue = list(COLOURS).index("red"), list(COLOURS).index("blue")
    separation = []
    for s in SEEDS:
        image = generate(replace(cfg, seed=s), models=models).image
        w, h = image.size
        left, right_half = probabilities([image.crop((0, 0, w // 2, h)), image.crop((w // 2, 0, w, h))], the_judge)[1]
        separation.append(float(left[red] - right_half[red] + right_half[blue] - left[blue]) / 2)
    print("score regions", [round(x, 3) for x in separation])
    assert np.mean(separation) >= 0.4, separation


def test_mask_regions_put_each_colour_in_its_own_triangle(models, the_judge, tmp_path):
    """No global prompt, two mask images split along the diagonal: "a red circle" where the top-left triangle is
    white, "a blue square" where the bottom-right one is. The judge, run on the top-left and the bottom-right
    quarter (each inside its own triangle), finds red and blue in at least 2 of 3 seeds, at 20 steps and 8
    cutouts per region (measured 3 of 3 natively and with AVX2, at every step from 20 to 40). The mask's part
    in it is checked in tests/test_controls.py (the region's gradient is zero outside the mask; with the mask
    not applied it reaches the box's corners, and that test fails)."""
    from PIL import Image, ImageDraw

    masks = []
    for name, corner in (("top-left", (0, 0)), ("bottom-right", (95, 95))):
        image = Image.new("L", (96, 96), 0)
        ImageDraw.Draw(image).polygon([corner, (95, 0), (0, 95)], fill=255)
        image.save(tmp_path / f"{name}.png")
        masks.append(tmp_path / f"{name}.png")
    regions = (f"{masks[0]}:a red circle", f"{masks[1]}:a blue square")
    cfg = replace(BASE, prompt="", regions=regions, cutn=8, steps=20)
    both = 0
    for s in SEEDS:
        image = generate(replace(cfg, seed=s), models=models).image
        w, h = image.size
        quarters = [image.crop((0, 0, w // 2, h // 2)), image.crop((w // 2, h // 2, w, h))]
        top_left, bottom_right = judge(quarters, the_judge)
        both += top_left.colour == "red" and bottom_right.colour == "blue"
    assert both >= 2, both


def test_keep_best_and_auto_stop_on_a_run_whose_loss_rises(models):
    """lr 2.0 (twenty times the default): the guide loss on the fixed cutouts is lowest at step 20 (0.617) and
    higher after (0.669 at step 25, measured on seed 1). --keep best keeps the latent of the best step, whose
    guide loss is lower than the last step's; --auto-stop 5 ends the run 5 steps after it, long before the
    60 steps, and the record says where. Broken (keep best returning the last latent): the kept latent is the
    last step's, not the best's; auto-stop not stopping: 60 steps done; either fails the test."""
    seen = {}
    cfg = replace(BASE, seed=1, lr=2.0, steps=60, keep="best", auto_stop=5)
    result = generate(cfg, models=models, callback=lambda step: seen.setdefault(step.i, step.z))
    t = result.tracker
    assert t.get("stopped_at") == result.steps_done < 60 and result.complete, t
    assert t["best_guide_loss"] < t["guide_loss"] and t["best_step"] == t["stopped_at"] - 5, t
    best = seen.get(t["best_step"])
    assert best is not None and torch.equal(result.latent, best), t
    assert not torch.equal(result.latent, seen[result.steps_done])
