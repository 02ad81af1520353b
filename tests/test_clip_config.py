"""A local CLIP config JSON (`--clip CONFIG.json:WEIGHTS`) is checked before anything is built: a field with an
odd value is one sentence naming the file, the key and the value (exit 2, before any model loads), and a
model too large to build is the out-of-memory exit 4 with advice, not a raw allocator error."""

import json
import math
from pathlib import Path

import pytest

from tests.conftest import TINY_CLIP_CFG
from vqclip import memory

RUN = ["--vqgan", "shapes_f8", "--size", "32", "--steps", "1", "--cutn", "2", "--device", "cpu"]


def _config(tmp_path: Path, tiny_clip: str, section: str | None, key: str, value) -> tuple[str, Path]:
    """The tiny CLIP's config with one value changed, beside its real weights: the --clip value and the file."""
    cfg = json.loads(json.dumps(TINY_CLIP_CFG))
    (cfg[section] if section else cfg)[key] = value
    path = tmp_path / "odd-clip.json"
    path.write_text(json.dumps(cfg))  # NaN and Infinity are written as JSON's common extension
    return f"{path}:{tiny_clip.rpartition(':')[2]}", path


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("vision_cfg", "layers", "two", "a whole number of at least 1 (a ViT), or a list of four (a ResNet)"),
        ("vision_cfg", "layers", [1, 1, 1], "a whole number of at least 1 (a ViT), or a list of four (a ResNet)"),
        ("vision_cfg", "image_size", -32, "a whole number of at least 1, or a list of two"),
        ("vision_cfg", "width", math.nan, "a finite number"),
        ("text_cfg", "mlp_ratio", math.inf, "a finite number"),
        ("vision_cfg", "patch_size", 0, "a whole number of at least 1"),
        ("text_cfg", "heads", 2.5, "a whole number of at least 1"),
        (None, "embed_dim", True, "a whole number of at least 1"),
        (None, "quick_gelu", "yes", "true or false"),
    ],
)
def test_an_odd_value_is_exit_2_naming_file_key_and_value(section, key, value, expected, tiny_clip, tmp_path, vq):
    clip, path = _config(tmp_path, tiny_clip, section, key, value)
    result = vq("a cat", "--clip", clip, *RUN, "-o", tmp_path / "cat.png")
    err = result.stderr.decode()
    assert result.returncode == 2, err
    dotted = f"{section}.{key}" if section else key
    assert f"CLIP config {path}: `{dotted}` is {value!r}; it must be {expected}" in err.replace("\n", " ")
    assert "Loading models" not in err and "Traceback" not in err  # before any model loads
    assert not (tmp_path / "cat.png").exists()


def test_heads_that_do_not_divide_the_width_is_exit_2(tiny_clip, tmp_path, vq):
    clip, path = _config(tmp_path, tiny_clip, "text_cfg", "heads", 3)
    result = vq("a cat", "--clip", clip, *RUN, "-o", tmp_path / "cat.png")
    assert result.returncode == 2
    assert f"CLIP config {path}: `text_cfg.width` (32) must be a multiple of `text_cfg.heads` (3)." in (
        result.stderr.decode().replace("\n", " ")
    )


@pytest.mark.parametrize("estimate", ["from-the-config", "at-allocation"])
def test_a_model_too_large_to_build_is_exit_4_with_advice(estimate, tiny_clip, tmp_path, vq, monkeypatch):
    """A vision width of 10^12: refused from its sizes before building, or, when the estimate lets it through,
    when its first allocation fails."""
    if estimate == "at-allocation":
        monkeypatch.setattr(memory, "free_memory", lambda device: math.inf)
    clip, path = _config(tmp_path, tiny_clip, "vision_cfg", "width", 10**12)
    result = vq("a cat", "--clip", clip, *RUN, "-o", tmp_path / "cat.png", "-q")
    err = result.stderr.decode().replace("\n", " ")
    assert result.returncode == 4, err
    assert "does not fit in memory" in err and f"(check the sizes in {path})" in err
    assert "Close other programs or use a machine with more memory" in err
    assert "Traceback" not in err and "Re-run with --debug" not in err
    assert ("allocate" in err) == (estimate == "at-allocation")  # the allocator's own words, in one sentence
    assert not (tmp_path / "cat.png").exists()
