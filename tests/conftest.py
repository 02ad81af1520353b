"""Shared test fixtures: the taming fixture checkpoints, a tiny real open_clip model, an isolated cache."""

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from vqclip.threads import fit_threads_to_free_cores

# Before any test module imports torch, as the CLI does: spinning threads beside another busy process made
# the suite 10x slower (issue 28). OMP_NUM_THREADS, when set, is kept; it is set here either way, so that the
# CLI in the tests' subprocesses does not sample the load again. Under pytest-xdist (`make test` runs a worker
# per core) the workers start together and would each take every core: each gets its share of them instead,
# unless the user pinned OMP_NUM_THREADS before pytest started (the controller passes that on to the workers).
os.environ.setdefault("VQCLIP_TESTS_PINNED_THREADS", os.environ.get("OMP_NUM_THREADS", ""))
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1 and not os.environ["VQCLIP_TESTS_PINNED_THREADS"] and hasattr(os, "sched_getaffinity"):
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // _workers))
fit_threads_to_free_cores()
os.environ.setdefault(
    "OMP_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "taming"

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


# The longest files first. `make test` runs a pytest-xdist worker per core with work stealing: tests are dealt
# out in this order and an idle worker steals from the end of a busy one's queue, so the long judged runs
# start at once and the short ones fill in around them (about 15 CPU-minutes in all; these files are 70 %).
LONGEST_FIRST = (
    "test_quality.py",
    "test_controls_effects.py",
    "test_batch.py",
    "test_generate.py",
    "test_newcomer.py",
    "test_restyle.py",
    "test_soak.py",
    "test_pack.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort: the rest keep their order


def pytest_report_header(config):
    if not FIXTURES.is_dir():
        return f"taming fixtures: not found at {FIXTURES}; the tests that need them are skipped"


def pytest_terminal_summary(terminalreporter):
    """A clone without ../shared says how many tests it skipped for that, and what to put where."""
    if FIXTURES.is_dir():
        return
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "taming fixtures" in str(r.longrepr)]
    terminalreporter.write_line(
        f"{len(skipped)} tests skipped: they need the taming fixtures at {FIXTURES} "
        "(the shared/ folder that sits beside the project's checkout)."
    )


@pytest.fixture(scope="session")
def fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"taming fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def reference(fixtures):
    import torch

    return torch.load(fixtures / "reference_outputs.pt", weights_only=True)


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory, monkeypatch):
    """Every test gets its own empty cache and config, and no network for Hugging Face."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("VQCLIP_CACHE", str(home / "cache"))
    monkeypatch.setenv("VQCLIP_CONFIG", str(home / "config.toml"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VQCLIP_OFFLINE", raising=False)
    return home


def make_tiny_clip(directory: Path, name: str = "TinyCLIP-test", seed: int = 0) -> str:
    """A tiny real open_clip model saved as CONFIG.json + weights; returns the --clip value for it."""
    import open_clip
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    cfg_path = directory / f"{name}.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(str(cfg_path))
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    weights = directory / f"{name}.pt"
    torch.save(model.state_dict(), weights)
    return f"{cfg_path}:{weights}"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def tiny_clip2(tmp_path_factory) -> str:
    return make_tiny_clip(tmp_path_factory.mktemp("clip2"), name="TinyCLIP-two", seed=1)


def tiny_args(vqgan, clip, size="64", cutn="2") -> list[str]:
    """The CLI options that select the tiny fixture models."""
    return ["--vqgan", str(vqgan), "--clip", clip, "--size", str(size), "--cutn", str(cutn)]


def run_cli(*args, cwd=None, env=None, input=None, timeout=300):
    """Run `python -m vqclip ...` as a real subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "vqclip", *map(str, args)],
        cwd=cwd,
        env=full_env,
        input=input,
        capture_output=True,
        timeout=timeout,
    )


@dataclass
class Run:
    returncode: int
    stdout: bytes
    stderr: bytes


@pytest.fixture
def vq(capfdbinary, monkeypatch):
    """Run `vqclip ...` in this process through `main(argv)`: exit code, stdout and stderr as bytes."""
    from vqclip.cli import main

    def run(*args, cwd=None, input: bytes | None = None) -> Run:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        if input is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(input)))
        capfdbinary.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        out, err = capfdbinary.readouterr()
        return Run(code, out, err)

    return run


@pytest.fixture
def ffmpeg(tmp_path_factory, monkeypatch) -> str:
    """A real ffmpeg on PATH: the system's, or the static build the test extra installs (imageio-ffmpeg)."""
    import shutil

    found = shutil.which("ffmpeg")
    if found is None:
        imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="no ffmpeg: pip install -e '.[test]'")
        folder = tmp_path_factory.mktemp("ffmpeg-bin")
        (folder / "ffmpeg").symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
        found = str(folder / "ffmpeg")
    return found
