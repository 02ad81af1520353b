"""The memory plan and the precision contract, on the fixture VQGAN and a tiny CLIP."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from tests.conftest import tiny_args
from vqclip.config import GenerationConfig
from vqclip.errors import OutOfMemoryError, UsageError
from vqclip.memory import MARGIN, estimate, largest_square, make_plan
from vqclip.pipeline.load import load_models
from vqclip.pipeline.prepare import prepare
from vqclip.pipeline.run import generate, run
from vqclip.pipeline.validate import validate


@pytest.fixture(scope="module")
def models_and_cfg(fixtures, tiny_clip):
    cfg = GenerationConfig(
        prompt="a red apple",
        vqgan=str(fixtures / "vqgan_tiny_f16.ckpt"),
        clip=(tiny_clip,),
        size=(64, 64),
        steps=30,
        seed=3,
        cutn=16,
        lr=1.0,
        augment=(),
        precision="fp32",
    )
    return load_models(cfg), cfg


def test_plan_prefers_speed_and_degrades_step_by_step(models_and_cfg):
    models, _ = models_and_cfg
    size, cutn = (512, 512), 32
    free = make_plan(models, size, cutn, max_memory=2**40)
    assert not free.checkpointing and free.clip_chunk == cutn
    just_ckpt = int(estimate(models, size, cutn, True, cutn) * MARGIN) + 1
    plan = make_plan(models, size, cutn, max_memory=just_ckpt)
    assert plan.checkpointing and plan.clip_chunk == cutn and plan.estimate <= plan.budget
    tighter = make_plan(models, size, cutn, max_memory=int(estimate(models, size, cutn, True, 8) * MARGIN) + 1)
    assert tighter.checkpointing and tighter.clip_chunk == 8


def test_plan_refuses_with_the_largest_size_that_fits(models_and_cfg):
    models, _ = models_and_cfg
    budget = int(estimate(models, (256, 256), 32, True, 1) * MARGIN) + 1
    with pytest.raises(OutOfMemoryError) as err:
        make_plan(models, (1024, 1024), 32, max_memory=budget)
    assert err.value.exit_code == 4
    side = largest_square(models, 32, budget)
    assert 256 <= side < 1024
    assert f"about {side}x{side}" in err.value.hint


def test_a_tighter_plan_changes_the_memory_not_the_picture(models_and_cfg, unlimited):
    """A --max-memory that makes the plan chunk CLIP, and a plan that checkpoints the decoder, give the same
    image as the roomy plan (float rounding aside: chunks add their gradients in another order)."""
    from vqclip.memory import Plan

    models, cfg = models_and_cfg
    cfg = replace(cfg, steps=3)
    roomy = generate(cfg, models=models)
    budget = int(estimate(models, cfg.size, cfg.cutn, False, 4) * MARGIN) + 1
    chunked = generate(replace(cfg, max_memory=budget), models=models)
    checkpointed = run(prepare(validate(cfg), models, plan=Plan(True, cfg.cutn, 0, 0)), models)
    assert (roomy.plan.checkpointing, roomy.plan.clip_chunk) == (False, cfg.cutn)
    assert (chunked.plan.checkpointing, chunked.plan.clip_chunk) == (False, 4)
    for other in (chunked, checkpointed):
        a, b = (np.asarray(r.image, dtype=int) for r in (roomy, other))
        assert np.abs(a - b).max() <= 2, (other.plan, np.abs(a - b).max())


def test_checkpointing_and_chunks_keep_the_optimisation_working(models_and_cfg):
    models, cfg = models_and_cfg
    from vqclip.memory import Plan

    plain = generate(replace(cfg, steps=10), models=models)
    lean = run(prepare(validate(replace(cfg, steps=10)), models, plan=Plan(True, 4, 0, 0)), models)
    assert lean.plan.checkpointing and abs(lean.loss - plain.loss) < 0.1


def test_bf16_and_fp32_losses_agree(models_and_cfg):
    models, cfg = models_and_cfg
    fp32 = generate(cfg, models=models)
    bf16_models = load_models(replace(cfg, precision="bf16"))
    bf16 = generate(replace(cfg, precision="bf16"), models=bf16_models)
    assert abs(bf16.loss - fp32.loss) < 0.05 * abs(fp32.loss), (fp32.loss, bf16.loss)


def test_too_little_memory_is_exit_4_before_the_first_step(fixtures, tiny_clip, tmp_path, vq):
    args = tiny_args(fixtures / "vqgan_tiny_f16.ckpt", tiny_clip)
    r = vq("a cat", *args, "--max-memory", "10M", "--progress", "json", cwd=tmp_path)
    assert r.returncode == 4, r.stderr.decode()
    err = r.stderr.decode()
    assert "needs about" in err and "available" in err
    assert '"step"' not in err
    assert list(tmp_path.iterdir()) == []


def test_bench_reports_every_stage_and_the_plan(vq):
    import json

    r = vq("bench", "--size", "32", "--steps", "1", "--cutn", "2", "--json", "--no-isolate")
    assert r.returncode == 0, r.stderr.decode()
    row = json.loads(r.stdout.decode().splitlines()[-1])
    assert row["weights"] == "random" and row["size"] == [32, 32]
    assert set(row["stages_s"]) == {"decoder", "cutouts", "clip", "backward", "optimiser"}
    assert row["flops_per_step"] > 0 and 0 < row["rate_fraction"] and row["peak_memory"] > 0
    assert set(row["plan"]) >= {"checkpointing", "clip_chunk", "estimate", "budget"}
    assert 0 < row["largest_square"]["no_checkpointing"] < row["largest_square"]["checkpointing"]
    assert row["step_cpu_s"] > 0 and set(row["stages_cpu_s"]) == set(row["stages_s"])
    machine = row["machine"]  # where the figures were taken
    assert machine["cpu"] and machine["cores"] >= 1 and machine["torch"]
    assert isinstance(machine["fast_bf16"], bool) and isinstance(machine["fast_fp16"], bool)
    assert set(machine["cpu_flags"]) <= {"avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"}
    assert len(row["load"]) == 2
    from vqclip.cli.bench import machine_line

    assert machine_line(row).startswith(machine["cpu"]) and "fast bf16/fp16" in machine_line(row)


# ---- the plan on the full-size default architectures (built on the meta device: no memory, no time) ----


PRECISIONS = ("fp32", "bf16")
GIB = 2**30


@pytest.fixture(scope="module")
def full_size():
    """The default VQGAN and CLIP as a CPU run plans them, by precision: shapes only."""
    from vqclip.bench import bench_config, random_models

    return {p: random_models(bench_config((256, 256), precision=p, device="cpu"), shapes_only=True) for p in PRECISIONS}


@pytest.fixture
def unlimited(monkeypatch):
    """Plans decided by --max-memory alone, whatever this machine has free."""
    monkeypatch.setattr("vqclip.memory.free_memory", lambda device: 2**50)


def test_fp32_384_gets_a_plan_under_a_3_gib_cap(full_size, unlimited):
    plan = make_plan(full_size["fp32"], (384, 384), 32, max_memory=3 * GIB, text_towers=False)
    assert plan.estimate <= 3 * GIB  # the issue: refused at this cap although 2.7 GiB is what it takes


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_estimate_has_two_peaks_and_chunks_only_lower_the_first(full_size, precision):
    models = full_size[precision]
    for ckpt in (False, True):
        small, large = (estimate(models, (s, s), 32, ckpt, 32) for s in (256, 768))
        assert small < large
        by_chunk = [estimate(models, (768, 768), 32, ckpt, c) for c in (32, 8, 1)]
        assert by_chunk == sorted(by_chunk, reverse=True)
    assert estimate(models, (768, 768), 32, True, 1) < estimate(models, (768, 768), 32, False, 1)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_dropping_the_text_towers_lowers_the_estimate_by_their_weights(full_size, precision):
    models = full_size[precision]
    text = sum(c.text_tower_bytes() for c in models.clips)
    assert text > 200 * 2**20  # ViT-B/32's text tower, fp32 in every precision
    keep, drop = (estimate(models, (384, 384), 32, False, 32, text_towers=t) for t in (True, False))
    assert keep - drop == text


def test_bf16_fits_larger_canvases_than_fp32(full_size):
    sides = {p: largest_square(full_size[p], 32, 4 * GIB, text_towers=False) for p in PRECISIONS}
    assert 384 <= sides["fp32"] < sides["bf16"]


def test_models_loaded_without_text_towers_hold_their_prompts_and_a_smaller_plan(models_and_cfg):
    """What the models keep is decided at load: without the text towers (the CLI's single image) they hold
    the request's prompt embeddings, the plan counts the weights freed, the pixels are the same, and a
    prompt they were not loaded for is one sentence."""
    cfg = replace(models_and_cfg[1], size=(32, 32), steps=2, seed=1, cutn=4)
    request = validate(cfg)
    full = load_models(request)
    lean = load_models(request, text_towers=False)
    text = sum(c.text_tower_bytes() for c in full.clips)
    assert text > 0 and not any(c.has_text_tower for c in lean.clips)
    assert sum(c.text_tower_bytes() for c in lean.clips) == 0
    kept, freed = prepare(request, full), prepare(request, lean)
    assert kept.plan.estimate - freed.plan.estimate == text
    assert run(kept, full).image.tobytes() == run(freed, lean).image.tobytes()
    with pytest.raises(UsageError, match="loaded without CLIP text towers"):
        prepare(validate(replace(cfg, prompt="another prompt")), lean)


def test_models_loaded_without_the_encoder_refuse_an_init_image_in_one_sentence(models_and_cfg, tmp_path):
    cfg = replace(models_and_cfg[1], size=(32, 32), steps=1, cutn=4)
    models = load_models(cfg, encoder=False)  # the caller says nothing will be encoded
    init = tmp_path / "init.png"
    Image.new("RGB", (32, 32), "red").save(init)
    with pytest.raises(UsageError, match="without the VQGAN's encoder, which init images") as err:
        generate(replace(cfg, init_image=str(init)), models=models)
    assert "load_models" in err.value.hint
    assert generate(replace(cfg, init_image=str(init)), models=load_models(cfg))  # the default keeps it


def test_the_estimate_is_within_10_percent_of_the_peaks_it_was_not_fitted_to(full_size):
    """benchmarks/memory_calibration.jsonl holds the peaks measured on this project's CPU, 256-768 px, with and
    without checkpointing; the constants were fitted to 256-512 (`--fit-sizes`), so the 768 px runs check
    them (rerun the script there after a change to the step's memory, and refit)."""
    import json

    from tests.conftest import ROOT

    lines = (ROOT / "benchmarks/memory_calibration.jsonl").read_text().splitlines()
    fitted = {256, 384, 512}  # benchmarks/memory_calibration.py's default --fit-sizes
    runs = [json.loads(line) for line in lines if line.startswith("{")]
    held_out = [r for r in runs if r["size"] not in fitted]
    assert {r["size"] for r in held_out} == {768} and {(r["checkpointing"], r["precision"]) for r in held_out} == {
        (c, p) for c in (False, True) for p in ("fp32", "bf16")
    }
    for r in held_out:
        models = full_size[r["precision"]]
        assert models.vqgan.config.ch == 128  # the calibrated decoder
        est = estimate(models, (r["size"], r["size"]), 32, r["checkpointing"], r["chunk"], text_towers=False)
        peak = max(max(s["clip_phase"], s["decoder_backward"]) for s in r["steps"])
        assert abs(est / peak - 1) < 0.10, r
