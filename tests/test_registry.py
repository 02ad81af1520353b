"""The registry, the user's TOML models, and `vqclip models list/download/verify/path`."""

import json

import pytest
import torch

from tests.conftest import run_cli
from tests.http_server import FileServer
from vqclip import load_vqgan
from vqclip.pretrained import PRETRAINED
from vqclip.registry import get_spec, list_specs


@pytest.fixture
def user_model(tmp_path, fixtures, isolated, monkeypatch):
    """A user TOML entry `tiny_f16` served by a local HTTP server (no sha256 given)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    root = tmp_path / "www"
    root.mkdir()
    (root / "tiny.ckpt").write_bytes((fixtures / "vqgan_tiny_f16.ckpt").read_bytes())
    (root / "tiny.yaml").write_bytes((fixtures / "vqgan_tiny_f16.yaml").read_bytes())
    with FileServer(root) as server:
        (isolated / "config.toml").write_text(
            "[models.tiny_f16]\n"
            'kind = "vqgan"\n'
            f'urls = ["{server.url}/404/tiny.ckpt", "{server.url}/ok/tiny.ckpt"]\n'
            f'config_urls = ["{server.url}/ok/tiny.yaml"]\n'
        )
        yield server


def test_registry_entries_are_complete():
    for name in (
        "vqgan_imagenet_f16_16384",
        "vqgan_imagenet_f16_1024",
        "vqgan_gumbel_f8_8192",
        "wikiart_16384",
        "coco_first_stage",
        "cin_transformer",
        "sflckr",
        "realesrgan_x4plus",
        "ViT-B-32/openai",
    ):
        assert name in PRETRAINED
    for spec in PRETRAINED.values():
        if spec.kind == "clip":
            assert spec.clip_arch and spec.clip_tag
            continue
        assert spec.checkpoint.urls, spec.name
        assert all(u.startswith("https://") for u in spec.checkpoint.urls), spec.name
        assert spec.checkpoint.sha256 is None or len(spec.checkpoint.sha256) == 64
        if spec.kind in ("vqgan", "transformer"):
            assert spec.config is not None or spec.config_data is not None, spec.name
    assert PRETRAINED["ViT-B-32/openai"].clip_arch == "ViT-B-32-quickgelu"


def test_user_toml_model_downloads_and_loads(user_model, reference):
    assert get_spec("tiny_f16").kind == "vqgan"
    assert "tiny_f16" in [s.name for s in list_specs("vqgan")]
    model = load_vqgan("tiny_f16", quiet=True)
    with torch.no_grad():
        _, idx = model.quantize(model.encode(reference["x"]))
    assert torch.equal(idx, reference["f16_indices"])
    assert len(user_model.gets("/404/")) == 1 and len(user_model.gets("/ok/tiny.ckpt")) == 1


def test_models_commands(user_model, isolated):
    listed = run_cli("models", "list", "--json")
    assert listed.returncode == 0, listed.stderr.decode()
    rows = {r["name"]: r for r in map(json.loads, listed.stdout.decode().splitlines())}
    assert rows["tiny_f16"]["cached"] is False
    assert rows["vqgan_imagenet_f16_16384"]["size"] == 980_092_370

    path = run_cli("models", "path", "tiny_f16").stdout.decode().strip()
    assert path == str(isolated / "cache" / "tiny_f16" / "model.ckpt")

    got = run_cli("models", "download", "tiny_f16", "-q")
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout.decode().strip() == path
    rows = {r["name"]: r for r in map(json.loads, run_cli("models", "list", "--json").stdout.decode().splitlines())}
    assert rows["tiny_f16"]["cached"] and rows["tiny_f16"]["verified"]

    ok = run_cli("models", "verify", "tiny_f16")
    assert ok.returncode == 0 and f"ok       {path}" in ok.stdout.decode()

    with open(path, "r+b") as f:  # flip a byte in the middle
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = run_cli("models", "verify")
    assert bad.returncode == 1
    assert f"corrupt  {path}" in bad.stdout.decode() and "removed" in bad.stdout.decode()
    assert not (isolated / "cache" / "tiny_f16" / "model.ckpt").exists()

    unknown = run_cli("models", "download", "nope")
    assert unknown.returncode == 2 and b"Unknown model 'nope'" in unknown.stderr


def test_all_mirrors_failing_is_exit_3_listing_urls(user_model, isolated):
    (isolated / "config.toml").write_text(
        f'[models.dead]\nkind = "vqgan"\nurls = ["{user_model.url}/404/x.ckpt", "{user_model.url}/404/y.ckpt"]\n'
    )
    r = run_cli("models", "download", "dead", "-q")
    assert r.returncode == 3
    err = r.stderr.decode()
    assert "Could not download dead (model.ckpt)" in err
    assert "/404/x.ckpt: HTTP 404" in err and "/404/y.ckpt: HTTP 404" in err
