"""Features judged by their effect on real images: generation in the shapes world with the shipped, really
trained models, each result read by the independent judge (vqclip.shapes.judge), not by the guiding CLIP.

Every test here fails when its feature is broken (checked once by breaking the loss sign, the cutouts
and the CLIP normalisation on purpose). Runs at 64x64 with few cutouts to stay within seconds.

The pinned-pixels test compares a fixed-seed run with tests/shapes_pin.json. When a change to the
pixels is intended, regenerate the pin with:

    PYTHONPATH=. python tests/test_quality.py
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import vqclip
from vqclip.config import GenerationConfig
from vqclip.shapes import CLIP_A, CLIP_B, VQGAN
from vqclip.shapes.judge import judge, load_judge
from vqclip.shapes.scenes import prompt, render, sample_scene

PIN = Path(__file__).with_name("shapes_pin.json")
PIN_PIXELS = [(5, 7), (20, 40), (32, 32), (50, 13), (60, 60)]  # (y, x) of the pinned pixels


def config(text: str, seed: int = 0, **overrides) -> GenerationConfig:
    settings = {
        "prompt": text,
        "vqgan": VQGAN,
        "clip": (CLIP_A,),
        "size": (64, 64),
        "steps": 60,
        "cutn": 8,
        "seed": seed,
        "precision": "fp32",
        "device": "cpu",
    }
    return GenerationConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def models():
    return vqclip.load_models(config("x"))


@pytest.fixture(scope="module")
def the_judge():
    return load_judge()


def verdict(cfg: GenerationConfig, models, the_judge, callback=None):
    return judge(vqclip.generate(cfg, models=models, callback=callback).image, the_judge)[0]


def test_prompt_is_judged_right_for_most_seeds(models, the_judge):
    cases = [
        ("star", "red", "white"),
        ("circle", "blue", "black"),
        ("triangle", "yellow", "gray"),
        ("square", "green", "white"),
    ]
    right = [
        verdict(config(prompt(*case), seed=k), models, the_judge).check(*case)["all"] for k, case in enumerate(cases)
    ]
    assert sum(right) >= 3, f"judged right: {right}"


def test_negative_prompt_keeps_red_out(models, the_judge):
    text = "a circle on a white background"
    pulled = [verdict(config(f"{text} | red circle:0.5", seed=s), models, the_judge).colour for s in range(2)]
    pushed = [verdict(config(f"{text} | red circle:0.5 | red:-1", seed=s), models, the_judge).colour for s in range(2)]
    assert pulled.count("red") == 2 and "red" not in pushed, (pulled, pushed)


def test_image_prompt_pulls_towards_its_colour(models, the_judge, tmp_path):
    path = tmp_path / "blue.png"
    render(
        sample_scene(__import__("numpy").random.default_rng(0), shape="square", colour="blue", background="gray")
    ).save(path)
    seen = verdict(config("", image_prompts=(str(path),)), models, the_judge)
    assert (seen.colour, seen.background) == ("blue", "gray"), seen


def test_story_phases_change_the_judged_colour(models, the_judge):
    cfg = config(f"{prompt('circle', 'red', 'white')} ^ {prompt('circle', 'blue', 'white')}", steps=120)
    colours = {}

    def callback(state):
        if state.i in (60, 120):
            colours[state.i] = judge(state.image(), the_judge)[0].colour

    vqclip.generate(cfg, models=models, callback=callback)
    assert colours == {60: "red", 120: "blue"}


def test_init_image_with_init_weight_keeps_its_shape(the_judge, tmp_path):
    path = tmp_path / "star.png"
    render(
        sample_scene(__import__("numpy").random.default_rng(1), shape="star", colour="green", background="black"), 64
    ).save(path)
    cfg = config(prompt("circle", "green", "black"), init_image=str(path))
    models = vqclip.load_models(cfg)  # with the encoder, which the other tests drop
    kept = verdict(replace(cfg, init_weight=5.0), models, the_judge)
    free = verdict(cfg, models, the_judge)
    assert kept.shape == "star" and free.shape == "circle", (kept, free)


def test_two_clips_together_through_the_cli(the_judge, tmp_path):
    from vqclip.cli import main

    out = tmp_path / "two.png"
    args = [
        prompt("triangle", "orange", "black"),
        "--vqgan",
        VQGAN,
        "--clip",
        CLIP_A,
        "--clip",
        CLIP_B,
    ]
    args += [
        "--size",
        "64",
        "--steps",
        "60",
        "--cutn",
        "8",
        "--seed",
        "0",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "-q",
        "-o",
        str(out),
    ]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code in (0, None)
    from PIL import Image

    seen = judge(Image.open(out), the_judge)[0]
    assert seen.check("triangle", "orange", "black")["all"], seen


def test_bf16_and_fp32_reach_the_same_verdicts(the_judge):
    cases = [("square", "purple", "white"), ("hexagon", "red", "gray")]
    seen = {}
    for precision in ("fp32", "bf16"):
        models = vqclip.load_models(config("x", precision=precision))
        seen[precision] = [str(verdict(config(prompt(*c), precision=precision), models, the_judge)) for c in cases]
    assert seen["fp32"] == seen["bf16"] == [f"{c} {s} on {b}" for s, c, b in cases]


def pinned_run() -> dict:
    """A short fixed-seed run on the shipped models, on one thread: a few pixel values of its image."""
    cfg = config(prompt("star", "red", "white"), steps=10, seed=1234)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums depend on the thread count
    try:
        image = vqclip.generate(cfg, models=vqclip.load_models(cfg)).image
    finally:
        torch.set_num_threads(threads)
    return {f"{y},{x}": list(image.getpixel((x, y))) for y, x in PIN_PIXELS}


def test_pinned_pixels():
    expected = json.loads(PIN.read_text())
    got = pinned_run()
    off = {
        k: (expected[k], v) for k, v in got.items() if max(abs(a - b) for a, b in zip(expected[k], v, strict=True)) > 2
    }
    assert not off, (
        f"The pixels of the pinned run changed (expected, got): {off}. If the change is intended, regenerate "
        f"the pin with `PYTHONPATH=. python tests/test_quality.py` and commit tests/shapes_pin.json."
    )


if __name__ == "__main__":
    PIN.write_text(json.dumps(pinned_run(), indent=1) + "\n")
    print(f"wrote {PIN}", file=sys.stderr)
