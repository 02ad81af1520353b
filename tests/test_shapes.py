"""The shapes world and its shipped models: the renderer, the captions, the weights' checksums, and what
each trained model really does on held-out renders (reconstruction, zero-shot, the judge's accuracy)."""

import hashlib

import numpy as np
import torch

from vqclip.shapes import WEIGHTS
from vqclip.shapes.judge import judge, load_judge
from vqclip.shapes.scenes import (
    HELDOUT_TEMPLATES,
    SHAPES,
    TRAIN_TEMPLATES,
    all_classes,
    caption,
    prompt,
    render,
    render_array,
    sample_scene,
)

HELD_OUT_SEED = 123_456  # no training script draws from this seed


def held_out(n: int, seed: int = HELD_OUT_SEED):
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    images = torch.from_numpy(np.stack([render_array(s) for s in scenes])).permute(0, 3, 1, 2).float() / 255
    return scenes, images


def test_renders_are_deterministic_anti_aliased_and_distinct():
    a = render_array(sample_scene(np.random.default_rng(5)), 96)
    b = render_array(sample_scene(np.random.default_rng(5)), 96)
    assert a.shape == (96, 96, 3) and np.array_equal(a, b)
    scene = sample_scene(np.random.default_rng(0), colour="red", background="white")
    pixels = render_array(scene, 128).reshape(-1, 3)
    distinct = {tuple(p) for p in pixels}
    assert len(distinct) > 10, "edges should blend shape and background (anti-aliasing)"
    shapes = [
        render_array(sample_scene(np.random.default_rng(0), shape=s, colour="red", background="white")) for s in SHAPES
    ]
    assert all(not np.array_equal(shapes[i], shapes[j]) for i in range(5) for j in range(i + 1, 5))


def test_any_resolution_keeps_the_scene():
    scene = sample_scene(np.random.default_rng(1))
    small, large = np.asarray(render(scene, 64)), np.asarray(render(scene, 256).resize((64, 64)))
    assert np.abs(small.astype(int) - large.astype(int)).mean() < 6


def test_captions_held_out_phrasings_are_new():
    scene = sample_scene(np.random.default_rng(2), shape="star", colour="red", background="white")
    assert caption(scene) == prompt("star", "red", "white") == "a red star on a white background"
    train = {caption(scene, t) for t in TRAIN_TEMPLATES}
    held = {caption(scene, t) for t in HELDOUT_TEMPLATES}
    assert len(train) == len(TRAIN_TEMPLATES) and not train & held
    assert all("red" in c and "star" in c and "white" in c for c in train | held)
    assert len(all_classes()) == 5 * 6 * 3


def test_shipped_weights_match_their_checksums():
    lines = (WEIGHTS / "SHA256SUMS").read_text().split("\n")
    entries = [line.split() for line in lines if line.strip()]
    assert {name for _, name in entries} >= {
        "shapes_f8.ckpt",
        "shapes_f8.yaml",
        "shapes-a.pt",
        "shapes-b.pt",
        "judge.pt",
    }
    for digest, name in entries:
        assert hashlib.sha256((WEIGHTS / name).read_bytes()).hexdigest() == digest, f"{name} does not match SHA256SUMS"


def test_clip_weights_are_in_openai_layout():
    """OpenAI's loader infers each tower from the tensor shapes (heads = width / 64; a ResNet's attention
    pool has width * 32 / 64 heads), so the configs must agree with that and the keys with open_clip's."""
    import json

    import open_clip

    for which in "ab":
        cfg = json.loads((WEIGHTS / f"shapes-{which}.json").read_text())
        sd = torch.load(WEIGHTS / f"shapes-{which}.pt", weights_only=True)
        assert set(sd) == set(open_clip.CLIP(**cfg).state_dict())
        assert cfg["quick_gelu"] and cfg["vision_cfg"]["head_width"] == 64
        assert sd["token_embedding.weight"].shape[0] == 49408 and sd["positional_embedding"].shape[0] == 77
        assert cfg["text_cfg"]["heads"] == sd["ln_final.weight"].shape[0] // 64
        if "visual.proj" in sd:  # ViT
            assert sd["visual.conv1.weight"].shape[0] % 64 == 0
        else:  # ResNet
            assert sd["visual.layer1.0.conv1.weight"].shape[0] == cfg["vision_cfg"]["width"]


def test_the_vqgan_reconstructs_every_colour_and_shape():
    """decode(encode(render)) as the judge sees it, one held-out render of each of the 90 classes. What the
    decoder cannot draw, guidance cannot draw either: the first VQGAN (uniform crops) kept only blue and
    orange (colour right 34 of 90); the shipped one, trained on crops centred on the shape, all six."""
    from vqclip.shapes.judge import judge_reconstructions
    from vqclip.weights.loading import load_vqgan

    vqgan = load_vqgan(WEIGHTS / "shapes_f8.ckpt", WEIGHTS / "shapes_f8.yaml").eval()
    judged = judge_reconstructions(vqgan, np.random.default_rng(HELD_OUT_SEED))
    per_colour = judged["colour_per_colour"]
    assert min(per_colour.values()) >= 14, per_colour  # of 15 each
    assert judged["of"] == 90 and judged["all"] >= 80, judged


def test_judge_is_right_on_held_out_renders():
    scenes, images = held_out(200)
    verdicts = judge(images, load_judge())
    right = [v.check(s.shape, s.colour, s.background)["all"] for v, s in zip(verdicts, scenes, strict=True)]
    assert sum(right) / len(right) >= 0.98


def test_clip_a_tells_shapes_colours_and_backgrounds_apart():
    """Zero-shot on held-out renders with a held-out phrasing: the nearest of the 90 class captions.
    Here 89.5 % (the first CLIP A, 37 % on shapes, scored 36.5 %); on 1000 renders 94.7 % with the training
    phrasing, 92.8 % over the held-out phrasings (weights README)."""
    import json

    import open_clip
    import torch.nn.functional as F

    from vqclip.models.clip import OPENAI_MEAN, OPENAI_STD

    cfg = json.loads((WEIGHTS / "shapes-a.json").read_text())
    model = open_clip.CLIP(**cfg)
    model.load_state_dict({k: v.float() for k, v in torch.load(WEIGHTS / "shapes-a.pt", weights_only=True).items()})
    model.eval()
    scenes, images = held_out(200)
    size = cfg["vision_cfg"]["image_size"]
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    x = (F.interpolate(images, size=(size, size), mode="area") - mean) / std
    classes = all_classes()
    texts = [HELDOUT_TEMPLATES[0].format(shape=s, colour=c, background=b) for s, c, b in classes]
    with torch.no_grad():
        sims = (
            F.normalize(model.encode_image(x), dim=-1)
            @ F.normalize(model.encode_text(open_clip.tokenize(texts)), dim=-1).t()
        )
    guesses = [classes[i] for i in sims.argmax(1).tolist()]
    right = [g == (s.shape, s.colour, s.background) for g, s in zip(guesses, scenes, strict=True)]
    assert sum(right) / len(right) >= 0.85
