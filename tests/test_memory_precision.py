"""The memory plan and the precision contract, on the fixture VQGAN and a tiny CLIP."""

from dataclasses import replace

import pytest

from tests.conftest import tiny_args
from vqclip.config import GenerationConfig
from vqclip.errors import OutOfMemoryError
from vqclip.job import prepare
from vqclip.loading import load_models
from vqclip.memory import estimate, largest_square, make_plan
from vqclip.pipeline import generate, run


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
    just_ckpt = estimate(models, size, cutn, True, cutn)
    plan = make_plan(models, size, cutn, max_memory=just_ckpt)
    assert plan.checkpointing and plan.clip_chunk == cutn and plan.estimate <= plan.budget
    tighter = make_plan(models, size, cutn, max_memory=estimate(models, size, cutn, True, 8))
    assert tighter.checkpointing and tighter.clip_chunk == 8


def test_plan_refuses_with_the_largest_size_that_fits(models_and_cfg):
    models, _ = models_and_cfg
    budget = estimate(models, (256, 256), 32, True, 1)
    with pytest.raises(OutOfMemoryError) as err:
        make_plan(models, (1024, 1024), 32, max_memory=budget)
    assert err.value.exit_code == 4
    side = largest_square(models, 32, budget)
    assert 256 <= side < 1024
    assert f"about {side}x{side}" in err.value.hint


def test_plan_changes_nothing_in_the_result_when_it_fits(models_and_cfg):
    models, cfg = models_and_cfg
    a = generate(replace(cfg, steps=3), models=models)
    b = generate(replace(cfg, steps=3, max_memory=2**40), models=models)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.plan.clip_chunk == cfg.cutn


def test_checkpointing_and_chunks_keep_the_optimisation_working(models_and_cfg):
    models, cfg = models_and_cfg
    from vqclip.memory import Plan

    plain = generate(replace(cfg, steps=10), models=models)
    lean = run(prepare(replace(cfg, steps=10), models, plan=Plan(True, 4, 0, 0)), models)
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
