"""Declared minimum versions (issue 29, defect 7): the floors are what the code uses, and an older library is
one clear message, not a "truncated or corrupt" checkpoint or an AttributeError mid-run."""

import sys

import pytest
import torch

from vqclip.versions import MINIMUM, LibraryTooOld, parse_version


def test_pyproject_declares_the_floors_the_code_checks():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    from tests.conftest import ROOT

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {d.split(">=")[0].strip(): parse_version(d.split(">=")[1].split(";")[0]) for d in deps if ">=" in d}
    for package, floor in MINIMUM.items():
        assert declared[package] == floor[: len(declared[package])] and declared[package] >= floor[:2], package


def test_the_installed_libraries_meet_the_floors():
    import open_clip

    assert parse_version(torch.__version__) >= MINIMUM["torch"]
    assert parse_version(open_clip.__version__) >= MINIMUM["open_clip_torch"]
    assert hasattr(torch.serialization, "safe_globals")
    assert hasattr(open_clip.transformer.VisionTransformer, "_pool")


@pytest.mark.parametrize(
    "text, parsed", [("2.14.1+cu130", (2, 14, 1)), ("2.5.0a0+git1234", (2, 5, 0)), ("2.32.0", (2, 32, 0))]
)
def test_versions_parse(text, parsed):
    assert parse_version(text) == parsed


def test_an_old_torch_is_named_not_taken_for_a_damaged_checkpoint(tmp_path, monkeypatch):
    from vqclip.weights.checkpoint import read_checkpoint

    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2)}, path)
    monkeypatch.setattr(torch, "__version__", "2.4.1+cu121")
    monkeypatch.delattr(torch.serialization, "safe_globals")  # as in torch 2.4
    with pytest.raises(LibraryTooOld) as err:
        read_checkpoint(path)
    assert "torch 2.5 or newer" in err.value.message and "2.4.1+cu121 is installed" in err.value.message
    assert "truncated" not in err.value.message and "pip install -U 'torch>=2.5'" in err.value.hint


def test_an_old_open_clip_is_named_before_a_run(tiny_clip, monkeypatch):
    import open_clip

    from vqclip.weights.clip import load_clip

    monkeypatch.setattr(open_clip, "__version__", "2.24.0")
    monkeypatch.delattr(open_clip.transformer.VisionTransformer, "_pool")
    with pytest.raises(LibraryTooOld, match=r"open_clip_torch 2\.32\.0 or newer .* but 2\.24\.0 is installed"):
        load_clip(tiny_clip)


def test_the_cli_says_it_in_one_sentence(tmp_path, monkeypatch, vq, fixtures, tiny_clip):
    import open_clip

    from tests.conftest import tiny_args

    monkeypatch.setattr(open_clip, "__version__", "2.31.0")
    r = vq("a cat", *tiny_args(fixtures / "vqgan_tiny_f16.ckpt", tiny_clip), "--steps", "1", cwd=tmp_path)
    assert r.returncode == 1
    assert b"open_clip_torch 2.32.0 or newer" in r.stderr and b"Traceback" not in r.stderr
    assert sys.modules["vqclip.versions"]
