"""The CLIP names users type (issue 29, defects 3 and 8): openai/CLIP's keys, and local files on Windows."""

import json

import pytest

from tests.conftest import TINY_CLIP_CFG
from vqclip.weights.clip import canonical_clip_name, parse_clip_name, split_local

OPENAI_KEYS = [
    ("ViT-B/32", "ViT-B-32/openai", "ViT-B-32-quickgelu"),
    ("ViT-B/16", "ViT-B-16/openai", "ViT-B-16-quickgelu"),
    ("ViT-L/14", "ViT-L-14/openai", "ViT-L-14-quickgelu"),
    ("ViT-L/14@336px", "ViT-L-14-336/openai", "ViT-L-14-336-quickgelu"),
    ("RN50", "RN50/openai", "RN50-quickgelu"),
    ("RN101", "RN101/openai", "RN101-quickgelu"),
    ("RN50x4", "RN50x4/openai", "RN50x4-quickgelu"),
    ("RN50x16", "RN50x16/openai", "RN50x16-quickgelu"),
    ("RN50x64", "RN50x64/openai", "RN50x64-quickgelu"),
]


@pytest.mark.parametrize("typed, canonical, arch", OPENAI_KEYS)
def test_openai_clip_names_are_the_openai_weights_of_open_clip(typed, canonical, arch):
    source = parse_clip_name(typed)
    assert (source.name, source.arch, source.tag) == (canonical, arch, "openai")
    assert parse_clip_name(canonical) == source  # the recorded name resolves to the same weights


@pytest.mark.parametrize("typed, canonical, arch", OPENAI_KEYS)
def test_every_mapped_architecture_has_openai_weights_in_open_clip(typed, canonical, arch):
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, "openai")
    assert cfg and cfg.get("hf_hub"), f"{typed} -> {arch}: open_clip has no openai weights on the Hub"


def test_openai_names_ignore_case_and_other_names_are_kept():
    assert canonical_clip_name("vit-b/32") == "ViT-B-32/openai"
    assert canonical_clip_name(" rn50 ") == "RN50/openai"
    assert canonical_clip_name("ViT-B-32/laion2b_s34b_b79k") == "ViT-B-32/laion2b_s34b_b79k"
    assert canonical_clip_name("ViT-B-32/openai") == "ViT-B-32/openai"


def test_the_cli_records_the_canonical_name():
    from vqclip.cli.options import CONFIG_FIELDS, build_config
    from vqclip.config import GenerationConfig, default

    params = {k: default(k) for k in CONFIG_FIELDS if k in GenerationConfig.__dataclass_fields__}
    params.update(clip=("ViT-B/32", "ViT-L/14@336px"), size=None, seed=1, max_memory=None)
    cfg = build_config("a cat", params)
    assert cfg.clip == ("ViT-B-32/openai", "ViT-L-14-336/openai")


def test_an_unknown_name_is_still_one_clear_usage_error():
    from vqclip.errors import UsageError

    with pytest.raises(UsageError, match="Unknown CLIP architecture 'ViT-Q'"):
        parse_clip_name("ViT-Q/32")


@pytest.mark.parametrize(
    "value, expected",
    [
        (r"C:\m\cfg.json:C:\m\w.safetensors", (r"C:\m\cfg.json", r"C:\m\w.safetensors")),
        (r"ViT-B-32:D:\weights\w.pt", ("ViT-B-32", r"D:\weights\w.pt")),
        ("C:/m/cfg.json:C:/m/w.bin", ("C:/m/cfg.json", "C:/m/w.bin")),
        ("/m/cfg.json:/m/w.safetensors", ("/m/cfg.json", "/m/w.safetensors")),
        ("cfg.json:w.pth", ("cfg.json", "w.pth")),
        ("ViT-B-32/openai", None),
        ("ViT-B/32", None),
    ],
)
def test_local_values_split_at_the_colon_between_the_paths(value, expected):
    assert split_local(value) == expected


def test_a_windows_value_resolves_to_both_files(tmp_path, monkeypatch):
    """On Linux a file may be named with a drive and backslashes, so the Windows value names real files."""
    monkeypatch.chdir(tmp_path)
    config, weights = r"C:\m\cfg.json", r"C:\m\w.safetensors"
    (tmp_path / config).write_text(json.dumps(TINY_CLIP_CFG))  # checked before anything is built
    (tmp_path / weights).write_bytes(b"")
    source = parse_clip_name(f"{config}:{weights}")
    assert (source.config_file, source.weights) == (config, weights)
    assert source.arch == r"C:\m\cfg"  # the config file's stem, as open_clip registers it


def test_a_colon_inside_a_posix_folder_name_is_not_the_split(tmp_path):
    folder = tmp_path / "run:1"
    folder.mkdir()
    (folder / "cfg.json").write_text("{}")
    (folder / "w.pt").write_bytes(b"")
    value = f"{folder}/cfg.json:{folder}/w.pt"
    assert split_local(value) == (f"{folder}/cfg.json", f"{folder}/w.pt")
