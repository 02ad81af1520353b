"""The memory plan where its users run it (issue 29, defects 5 and 8): CUDA's caching allocator, the GPT's
weights, ResNet CLIPs, a batch that meets an out-of-memory, and systems without /proc/meminfo. The CUDA
memory API is replaced by a stand-in, so all of it runs on a CPU."""

import builtins
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import tiny_args
from vqclip import memory

GIB = 2**30
CUDA = torch.device("cuda")


class CudaMemory:
    """A stand-in for torch.cuda's memory API: the driver's free bytes, the allocator's tensors and cache."""

    def __init__(self, monkeypatch, free: int, allocated: int, reserved: int):
        self.free, self.allocated, self.reserved, self.total = free, allocated, reserved, 141 * GIB
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (self.free, self.total))
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: self.reserved)

    def run_an_image(self, step_bytes: int) -> None:
        """What one image leaves behind: its step's blocks stay cached (reserved, not allocated), and the
        driver counts them as used."""
        self.reserved += step_bytes
        self.free -= step_bytes


def test_the_cuda_budget_counts_what_the_caching_allocator_holds(monkeypatch):
    CudaMemory(monkeypatch, free=10 * GIB, allocated=1 * GIB, reserved=3 * GIB)
    assert memory.free_memory(CUDA) == 13 * GIB  # free + reserved (allocated is a part of reserved)


@pytest.fixture(scope="module")
def on_cuda():
    """The default VQGAN and CLIP as a CUDA run in bf16 plans them: shapes only."""
    from vqclip.bench import bench_config, random_models

    models = random_models(bench_config((512, 512), precision="bf16", device="cpu"), shapes_only=True)
    return replace(models, device=CUDA)


def test_the_second_image_of_a_batch_gets_the_plan_of_the_first(monkeypatch, on_cuda):
    """After one image the allocator keeps the step's blocks for reuse: the plan must not see them as gone."""
    size, cutn = (512, 512), 32
    weights = memory.weights_bytes(on_cuda, text_towers=True)
    need = memory.estimate(on_cuda, size, cutn, False, cutn)
    # just enough free memory for the fastest plan
    cuda = CudaMemory(
        monkeypatch, free=int(need * memory.MARGIN) - weights + GIB // 8, allocated=weights, reserved=weights
    )
    first = memory.make_plan(on_cuda, size, cutn)
    assert (first.checkpointing, first.clip_chunk) == (False, cutn)
    cuda.run_an_image(need - weights)
    second = memory.make_plan(on_cuda, size, cutn)
    assert (second.checkpointing, second.clip_chunk) == (False, cutn)
    assert second.budget == first.budget


def test_the_gpt_weights_are_in_the_estimate(on_cuda):
    gpt = torch.nn.Linear(1024, 1024, device="meta")  # 4 MiB of fp32 weights and a 4 KiB bias
    gpt_bytes = (1024 * 1024 + 1024) * 4
    without = memory.estimate(on_cuda, (512, 512), 32, False, 32)
    with_gpt = memory.estimate(replace(on_cuda, gpt=gpt), (512, 512), 32, False, 32)
    assert with_gpt - without == gpt_bytes


def _meta_clip(arch: str):
    import open_clip

    from vqclip.models.clip import wrap_clip

    model = open_clip.create_model(arch, device="meta").eval().requires_grad_(False)
    return wrap_clip(arch, model, open_clip.get_tokenizer(arch), None)


def test_the_reference_count_is_vit_b_32s():
    clip = _meta_clip("ViT-B-32")
    assert memory.activation_elements(clip.model.visual, clip.input_size) == memory.REF_CLIP_ACTIVATIONS
    assert memory._clip_cost(clip) == pytest.approx(1.0)


@pytest.mark.parametrize("arch, low, high", [("RN50", 5.5, 7.0), ("RN50x4", 15.0, 19.0)])
def test_resnet_clips_are_costed_as_themselves(arch, low, high):
    """A ResNet's activations per cutout, against ViT-B/32's: the old plan took it for ViT-B/32 (1.0)."""
    assert low < memory._clip_cost(_meta_clip(arch)) < high


def test_vision_transformers_count_as_their_formula_says():
    """The counted activations agree with width x layers x tokens, the ViTs' calibrated measure."""
    clip = _meta_clip("ViT-B-16")
    counted = memory.activation_elements(clip.model.visual, clip.input_size) / memory.REF_CLIP_ACTIVATIONS
    assert counted == pytest.approx(memory._clip_cost(clip), rel=0.03)


# ---- systems without /proc -----------------------------------------------------------------------


@pytest.fixture
def no_proc(monkeypatch):
    """A system without /proc (macOS, Windows) and without psutil."""
    real_open = builtins.open

    def open_(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(memory, "_psutil", lambda: None)


def test_free_ram_without_proc_meminfo_comes_from_the_system_not_a_guess(no_proc):
    import os

    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    measured = memory.free_memory(torch.device("cpu"))
    assert measured != 16 * GIB
    assert abs(measured - available) < 256 * 2**20  # the same figure, read a moment apart


def test_where_only_the_total_is_known_half_of_it_is_planned_for(no_proc, monkeypatch):
    import os

    real = memory._sysconf
    monkeypatch.setattr(memory, "_sysconf", lambda name: None if name == "SC_AVPHYS_PAGES" else real(name))
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert memory.free_memory(torch.device("cpu")) == total // 2


def test_psutil_is_used_where_it_is_installed(no_proc, monkeypatch):
    fake = SimpleNamespace(
        virtual_memory=lambda: SimpleNamespace(available=7 * GIB),
        Process=lambda: SimpleNamespace(memory_info=lambda: SimpleNamespace(rss=GIB)),
    )
    monkeypatch.setattr(memory, "_psutil", lambda: fake)
    assert memory.free_memory(torch.device("cpu")) == 8 * GIB


def test_a_system_that_says_nothing_needs_max_memory(no_proc, monkeypatch, on_cuda):
    from vqclip.errors import OutOfMemoryError

    monkeypatch.setattr(memory, "_sysconf", lambda name: None)
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    cpu = replace(on_cuda, device=torch.device("cpu"))
    with pytest.raises(OutOfMemoryError, match="neither its free nor its total memory") as err:
        memory.make_plan(cpu, (256, 256), 32)
    assert "--max-memory" in err.value.hint
    assert memory.make_plan(cpu, (256, 256), 32, max_memory=64 * GIB).budget == 64 * GIB


# ---- a batch goes on after an out-of-memory --------------------------------------------------------


def _batch_with(monkeypatch, tmp_path, fail):
    """run_batch over three prompts, with models, planning and writing stood in; `fail(prompt)` raises."""
    from vqclip.config import GenerationConfig
    from vqclip.pipeline import batch

    monkeypatch.setattr("vqclip.pipeline.prepare.prepare", lambda request, models: request)
    rendered = []

    def write(request, models, out, progress=None):
        fail(request.cfg.prompt)
        out.path.write_bytes(b"png")
        rendered.append(request.cfg.prompt)
        return SimpleNamespace(path=out.path, loss=0.5)

    monkeypatch.setattr("vqclip.pipeline.write.write", write)
    released = []
    monkeypatch.setattr(batch, "_release_memory", lambda models: released.append(models))
    items = batch.read_prompts("a cat\na huge castle\na dog\n")
    errors = []
    summary = batch.run_batch(
        items,
        GenerationConfig(prompt="x", size=(512, 512), seed=0),
        batch.BatchOptions(tmp_path),
        lambda request: SimpleNamespace(device=torch.device("cpu")),
        on_error=lambda line, err: errors.append((line, err.message)),
    )
    rows = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    return summary, rows, rendered, errors, released


@pytest.mark.parametrize("kind", ["device", "planned"])
def test_one_out_of_memory_is_a_manifest_line_and_the_batch_goes_on(monkeypatch, tmp_path, kind):
    from vqclip.errors import OutOfMemoryError

    def fail(prompt):
        if prompt == "a huge castle":
            if kind == "device":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise OutOfMemoryError("A 512x512 image needs about 9.1 GiB even with checkpointing.")

    summary, rows, rendered, errors, released = _batch_with(monkeypatch, tmp_path, fail)
    assert rendered == ["a cat", "a dog"]
    assert [(r["line"], r["status"]) for r in rows] == [(1, "ok"), (2, "oom"), (3, "ok")]
    assert "out of memory" in rows[1]["error"].lower() or "needs about" in rows[1]["error"]
    assert (summary.done, summary.failed, summary.oom) == (2, 1, 1)
    assert [line for line, _ in errors] == [2] and len(released) == 1


def test_a_batch_the_plan_refuses_records_every_line_and_exits_1(fixtures, tiny_clip, tmp_path, vq):
    """End to end with the tiny models: the plan refuses every prompt under a 10 MB cap; each gets its line."""
    (tmp_path / "p.txt").write_text("a cat\na dog\n")
    args = tiny_args(fixtures / "vqgan_tiny_f16.ckpt", tiny_clip)
    r = vq("batch", tmp_path / "p.txt", "--outdir", tmp_path / "out", "--max-memory", "10M", "-q", *args)
    assert r.returncode == 1, r.stderr.decode()
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [(row["line"], row["status"]) for row in rows] == [(1, "oom"), (2, "oom")]
    assert all("needs about" in row["error"] for row in rows)
    assert b"2 of 2 prompts failed" in r.stderr
