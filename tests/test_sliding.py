"""The taming GPT and the sliding-window sampler: parity with the reference, batched == raster."""

import pytest
import torch
from torch.testing import assert_close

from vqclip.models.gpt import GPT, GPTConfig
from vqclip.sliding import filter_logits, sample_tokens, schedule, window_start
from vqclip.weights.loading import load_transformer


@pytest.fixture(scope="module")
def cin(fixtures):
    return load_transformer(fixtures / "transformer_tiny_cin.ckpt")


def test_gpt_logits_match_reference(cin, reference):
    gpt, _, conditioning = cin
    assert conditioning.kind == "class" and conditioning.n_classes == 10
    with torch.no_grad():
        assert_close(gpt(reference["gpt_input"]), reference["gpt_logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("order", ["raster", "wavefront"])
def test_greedy_sliding_pass_matches_reference(cin, reference, order):
    gpt, vqgan, _ = cin
    out = sample_tokens(gpt, reference["sliding_init"], reference["sliding_class"], greedy=True, order=order)
    assert torch.equal(out, reference["sliding_greedy"])
    with torch.no_grad():
        decoded = vqgan.decode(vqgan.embed(out))
    # A 320x384 decode in float32: the reference itself is 2.9e-5 away from a float64 decode of the same
    # tokens, so "about 1e-5" means a few times float32 rounding here.
    assert_close(decoded, reference["sliding_decoded"], atol=3e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "pos, size, start",
    [(0, 20, 0), (8, 20, 0), (9, 20, 1), (11, 20, 3), (12, 20, 4), (13, 20, 4), (19, 20, 4), (0, 16, 0), (15, 16, 0)],
)
def test_window_start_is_the_reference_clamp(pos, size, start):
    # taming: local = pos if pos <= 8 else 16 - (size - pos) if size - pos < 8 else 8; start = pos - local
    local = pos if pos <= 8 else 16 - (size - pos) if size - pos < 8 else 8
    assert window_start(pos, size) == pos - local == start


def test_wavefront_takes_816_calls_for_48x64_tokens():
    groups = schedule(48, 64)
    assert len(groups) == 816  # against 3072 in raster order: the figure the README gives
    assert sorted(p for g in groups for p in g) == [(i, j) for i in range(48) for j in range(64)]


def test_batched_equals_raster_on_a_large_grid():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=64, block_size=256, n_layer=2, n_head=2, n_embd=32)).eval()
    for p in gpt.parameters():
        p.data.normal_(0, 0.5)  # sharper logits than the default init, so argmax is no near-tie
    init = torch.randint(0, 64, (1, 48, 64))
    cond = torch.tensor([[5]])
    raster = sample_tokens(gpt, init, cond, greedy=True, order="raster")
    batched = sample_tokens(gpt, init, cond, greedy=True, order="wavefront")
    assert torch.equal(raster, batched)
    assert not torch.equal(raster, init)


def test_seeded_sampling_is_reproducible(cin, reference):
    gpt = cin[0]
    runs = [
        sample_tokens(
            gpt,
            reference["sliding_init"],
            reference["sliding_class"],
            top_k=20,
            top_p=0.9,
            generator=torch.Generator().manual_seed(s),
        )
        for s in (1, 1, 2)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    probs = filter_logits(logits, top_k=3).softmax(-1)
    assert_close(probs, torch.tensor([[0.5, 0.2, 0.15, 0, 0]]) / 0.85)
    probs = filter_logits(logits, top_p=0.6).softmax(-1)  # 0.5 < 0.6, so 0.2 (the crossing one) is kept
    assert_close(probs, torch.tensor([[0.5, 0.2, 0, 0, 0]]) / 0.7)
    probs = filter_logits(logits, top_p=0.4).softmax(-1)  # the first token alone crosses 0.4
    assert_close(probs, torch.tensor([[1.0, 0, 0, 0, 0]]))
    probs = filter_logits(logits, temperature=2.0).softmax(-1)
    expected = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]).sqrt()
    assert_close(probs, expected / expected.sum())


def _canvas(fixtures, tiny_clip, tmp_path, anchor, vq):
    import json

    from PIL import Image

    out = tmp_path / f"canvas{anchor}.png"
    r = vq(
        "a goldfish",
        "--transformer",
        fixtures / "transformer_tiny_cin.ckpt",
        "--clip",
        tiny_clip,
        "--size",
        "320x256",
        "--base-size",
        "160",
        "--steps",
        "2",
        "--refine-steps",
        "1",
        "--cutn",
        "2",
        "--anchor",
        anchor,
        "--seed",
        "4",
        "-o",
        out,
        "--progress",
        "json",
    )
    assert r.returncode == 0, r.stderr.decode()
    stages = {json.loads(x).get("stage") for x in r.stderr.decode().splitlines() if x.startswith("{")}
    assert stages == {"base", "transformer", "refine"}
    assert record_of(out)["models"]["vqgan"]["name"].endswith("transformer_tiny_cin.ckpt (first stage)")
    with Image.open(out) as im:
        return im.size, json.loads(im.text["vqclip"])


def record_of(path):
    import json

    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text["vqclip"])


def test_canvas_end_to_end_and_the_anchor(fixtures, tiny_clip, tmp_path, vq):
    size, record = _canvas(fixtures, tiny_clip, tmp_path, "100", vq)
    assert size == (320, 256)
    canvas = record["canvas"]
    assert canvas["base_size"] == [160, 128]  # a quarter of the area, same aspect
    assert 0 <= canvas["class"] < 10 and canvas["class_name"]
    assert canvas["gpt_calls"] < 20 * 16  # the wavefront batches positions
    assert record["config"]["transformer"].endswith("transformer_tiny_cin.ckpt")
    assert canvas["kept_fraction"] > 0.9
    _, free = _canvas(fixtures, tiny_clip, tmp_path, "0", vq)
    assert free["canvas"]["kept_fraction"] < 0.5
