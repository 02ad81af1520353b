"""Where outputs go: a folder that only looks writable (`/proc` as root, where `os.access` says yes) is exit 2
before any model loads, found by creating and removing a file there; `-o -` and `-o /dev/stdout` write the
PNG itself to stdout, and no file is ever created in /dev."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_upscale import _rrdbnet_state_dict

SHAPES = ["--vqgan", "shapes_f8", "--clip", "shapes-a", "--size", "32", "--steps", "2", "--cutn", "2"]
SHAPES += ["--precision", "fp32", "--device", "cpu", "--seed", "7"]
as_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not os.access("/proc", os.W_OK),
    reason="/proc only looks writable to root",
)


@pytest.fixture
def dev_unchanged():
    """Fails a test that leaves a new entry in /dev (and removes it, so that one failure does not litter)."""
    before = set(os.listdir("/dev"))
    yield
    added = set(os.listdir("/dev")) - before
    for name in added:
        if name.startswith(("stdout", "null", ".vqclip-")):
            Path("/dev", name).unlink(missing_ok=True)
    assert not added, f"files created in /dev: {sorted(added)}"


def _no_model_loaded(result, message: str) -> None:
    err = result.stderr.decode().replace("\n", " ")
    assert result.returncode == 2, err
    assert message in err, err
    assert "Loading models" not in err and "Traceback" not in err


@as_root
def test_generate_into_a_folder_that_only_looks_writable_is_exit_2_before_loading(tmp_path, vq):
    result = vq("a cat", *SHAPES, "-o", "/proc/x.png", cwd=tmp_path)
    _no_model_loaded(result, "Cannot write to /proc: a file cannot be created in /proc (no such file or directory).")
    assert result.stdout == b""


@as_root
def test_batch_into_a_folder_that_only_looks_writable_is_exit_2_before_loading(tmp_path, vq):
    (tmp_path / "p.txt").write_text("a cat\n")
    result = vq("batch", tmp_path / "p.txt", "--outdir", "/proc/out", *SHAPES)
    _no_model_loaded(result, "Cannot write to /proc/out: a file cannot be created in /proc")


@as_root
def test_upscale_into_a_folder_that_only_looks_writable_is_exit_2_before_loading(tmp_path, vq):
    Image.new("RGB", (8, 8)).save(tmp_path / "pic.png")
    result = vq("upscale", tmp_path / "pic.png", "--model", tmp_path / "missing.pth", "-o", "/proc/x.png")
    _no_model_loaded(result, "Cannot write to /proc: a file cannot be created in /proc")


def _png(data: bytes) -> tuple[np.ndarray, dict]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), data[:80]
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB")), dict(im.text)


@pytest.mark.parametrize("target", ["-", "/dev/stdout"])
def test_the_png_itself_goes_to_stdout(target, tmp_path, vq, dev_unchanged):
    reference = vq("a cat", *SHAPES, "-o", tmp_path / "ref.png", "-q")
    assert reference.returncode == 0, reference.stderr.decode()
    work = tmp_path / "work"
    work.mkdir()
    result = vq("a cat", *SHAPES, "-o", target, cwd=work)
    assert result.returncode == 0, result.stderr.decode()
    pixels, texts = _png(result.stdout)
    with Image.open(tmp_path / "ref.png") as im:
        assert np.array_equal(pixels, np.asarray(im.convert("RGB")))
    assert '"seed": 7' in texts["vqclip"]
    assert b".png" not in result.stderr  # no path: the image is the output
    assert not list(work.iterdir())


def test_replay_to_stdout(tmp_path, vq, dev_unchanged):
    assert vq("a cat", *SHAPES, "-o", tmp_path / "ref.png", "-q").returncode == 0
    result = vq("replay", tmp_path / "ref.png", "-o", "-", "-q")
    assert result.returncode == 0, result.stderr.decode()
    with Image.open(tmp_path / "ref.png") as im:
        assert np.array_equal(_png(result.stdout)[0], np.asarray(im.convert("RGB")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.png"]


def test_upscale_to_stdout(tmp_path, vq):
    import torch

    torch.save({"params_ema": _rrdbnet_state_dict()}, tmp_path / "tiny_x4.pth")
    Image.new("RGB", (12, 10), "red").save(tmp_path / "pic.png")
    result = vq("upscale", tmp_path / "pic.png", "--model", tmp_path / "tiny_x4.pth", "-o", "-", "-q")
    assert result.returncode == 0, result.stderr.decode()
    assert _png(result.stdout)[0].shape == (40, 48, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pic.png", "tiny_x4.pth"]


@pytest.mark.parametrize("target", ["/dev/null", "/dev/x.png"])
def test_a_device_path_is_exit_2_before_loading(target, tmp_path, vq, dev_unchanged):
    result = vq("a cat", *SHAPES, "-o", target, cwd=tmp_path)
    why = "is a device or special file, not a file vqclip can write" if target == "/dev/null" else "is in /dev"
    _no_model_loaded(result, f"-o {target} {why}")
    assert "Use -o - to get the PNG on standard output" in result.stderr.decode()


def test_png_and_frames_both_on_stdout_is_exit_2(tmp_path, vq):
    result = vq("a cat", *SHAPES, "-o", "-", "--frames", "-", cwd=tmp_path)
    _no_model_loaded(result, "-o - and --frames - both write to standard output")
