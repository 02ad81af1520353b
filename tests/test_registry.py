"""The registry, the user's TOML models, and `vqclip models list/download/verify/path` (run in-process)."""

import json
from pathlib import Path

import pytest
import torch

from tests.http_server import FileServer
from vqclip import load_vqgan
from vqclip.errors import UsageError
from vqclip.weights import cache, download
from vqclip.weights.pretrained import PRETRAINED
from vqclip.weights.registry import get_spec, list_specs


def _run(vq, *args) -> tuple[int, str, str]:
    """`vqclip ARGS` in this process (the `vq` fixture): exit code, stdout and stderr as text."""
    r = vq(*args)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


@pytest.fixture
def www(tmp_path, fixtures, monkeypatch):
    """A local server holding the tiny VQGAN and its yaml; downloads retry fast."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(download, "BACKOFF", 0.01)
    root = tmp_path / "www"
    root.mkdir()
    (root / "tiny.ckpt").write_bytes((fixtures / "vqgan_tiny_f16.ckpt").read_bytes())
    (root / "tiny.yaml").write_bytes((fixtures / "vqgan_tiny_f16.yaml").read_bytes())
    with FileServer(root) as server:
        yield server


def _toml(isolated, text: str) -> None:
    (isolated / "config.toml").write_text(text)


@pytest.fixture
def user_model(www, isolated):
    """A user TOML entry `tiny_f16` without sha256; its first mirrors are dead (404, a web page)."""
    _toml(
        isolated,
        "[models.tiny_f16]\n"
        'kind = "vqgan"\n'
        f'urls = ["{www.url}/404/tiny.ckpt", "{www.url}/html/tiny.ckpt", "{www.url}/ok/tiny.ckpt"]\n'
        f'config_urls = ["{www.url}/disguised/tiny.yaml", "{www.url}/ok/tiny.yaml"]\n',
    )
    return www


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
        if spec.path:  # shipped inside the package (the shapes world): never downloaded
            assert Path(spec.path).is_file(), spec.name
            continue
        if spec.kind == "clip":
            assert spec.clip_arch and spec.clip_tag
            continue
        assert spec.checkpoint.urls, spec.name
        assert all(u.startswith("https://") for u in spec.checkpoint.urls), spec.name
        assert spec.checkpoint.sha256 is None or len(spec.checkpoint.sha256) == 64
        if spec.kind in ("vqgan", "transformer"):
            assert spec.config is not None or spec.config_data is not None, spec.name
    assert PRETRAINED["ViT-B-32/openai"].clip_arch == "ViT-B-32-quickgelu"


def test_user_toml_model_skips_dead_mirrors_and_loads(user_model, isolated, fixtures, reference):
    assert get_spec("tiny_f16").kind == "vqgan"
    assert "tiny_f16" in [s.name for s in list_specs("vqgan")]
    model = load_vqgan("tiny_f16")
    with torch.no_grad():
        _, idx = model.quantize(model.encode(reference["x"]))
    assert torch.equal(idx, reference["f16_indices"])
    cached = isolated / "cache" / "tiny_f16"
    assert (cached / "model.yaml").read_bytes() == (fixtures / "vqgan_tiny_f16.yaml").read_bytes()
    assert len(user_model.gets("/ok/tiny.ckpt")) == 1 and user_model.gets("/ok/tiny.ckpt")[0][1] is None


def test_web_page_is_never_cached_as_a_model_without_sha256(www, isolated, vq):
    _toml(
        isolated,
        f'[models.dead]\nurls = ["{www.url}/disguised/tiny.ckpt"]\nconfig_urls = ["{www.url}/ok/tiny.yaml"]\n',
    )
    code, out, err = _run(vq, "models", "download", "dead", "-q")
    assert code == 3 and out == ""
    assert "Could not download dead (model.ckpt)" in err and "web page" in err
    assert "connection" not in err  # a dead link is not a network problem
    assert not (isolated / "cache" / "dead" / "model.ckpt").exists()


@pytest.mark.parametrize(
    "entry, message",
    [
        ("urls = 5", "Model 'bad' in {toml}: `urls` must be a list of strings, not a whole number (5)."),
        ('urls = ["https://x/a.ckpt", 3]', "`urls` must be a list of strings, not a list"),
        ('path = "/m.ckpt"\nsize = "big"', "`size` must be a whole number, not a string ('big')."),
        ('path = "/m.ckpt"\nsha265 = "abc"', "Model 'bad' in {toml} has an unknown key `sha265`."),
        ('path = "/m.ckpt"\nsha256 = "abc"', "`sha256` must be 64 hexadecimal digits, not 'abc'."),
    ],
)
def test_user_toml_with_a_wrong_entry_names_entry_key_and_type(isolated, vq, entry, message):
    toml = isolated / "config.toml"
    _toml(isolated, f"[models.bad]\n{entry}\n")
    with pytest.raises(UsageError) as err:
        get_spec("bad")
    assert message.format(toml=toml) in err.value.message
    if "sha265" in entry:
        assert "Did you mean `sha256`?" in err.value.hint
    code, _, stderr = _run(vq, "models", "list")
    assert code == 2 and "Traceback" not in stderr and message.format(toml=toml) in stderr.replace("\n", "")


def test_models_commands(user_model, isolated, vq):
    code, out, _ = _run(vq, "models", "list", "--json", "--kind", "vqgan")
    assert code == 0
    rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
    assert rows["tiny_f16"]["cached"] is False
    assert rows["vqgan_imagenet_f16_16384"]["size"] == 980_092_370

    path = str(isolated / "cache" / "tiny_f16" / "model.ckpt")
    assert _run(vq, "models", "path", "tiny_f16")[1].strip() == path
    code, out, err = _run(vq, "models", "download", "tiny_f16", "-q")
    assert (code, out.strip()) == (0, path), err
    rows = {
        r["name"]: r for r in map(json.loads, _run(vq, "models", "list", "--json", "--kind", "vqgan")[1].splitlines())
    }
    assert rows["tiny_f16"]["cached"] and rows["tiny_f16"]["verified"]

    code, out, _ = _run(vq, "models", "verify", "tiny_f16")
    assert code == 0 and f"ok       {path}" in out

    with open(path, "r+b") as f:  # flip a byte in the middle
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    code, out, _ = _run(vq, "models", "verify", "tiny_f16")
    assert code == 1 and f"corrupt  {path}" in out and "removed" in out
    assert not (isolated / "cache" / "tiny_f16" / "model.ckpt").exists()

    code, _, err = _run(vq, "models", "download", "nope")
    assert code == 2 and "Unknown model 'nope'" in err


def test_verify_rechecks_what_an_unpublished_file_holds(user_model, isolated, vq):
    """A web page stamped as the model by an older vqclip: verify recognises it and removes it."""
    path = isolated / "cache" / "tiny_f16" / "model.ckpt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<!DOCTYPE html><html>Link does not exist.</html>")
    cache.write_stamp(path, cache.sha256_file(path))
    code, out, _ = _run(vq, "models", "verify", "tiny_f16")
    assert code == 1 and f"corrupt  {path} (it is not a weights file" in out and "web page" in out
    assert not path.exists()


def test_verify_with_nothing_cached_says_so(isolated, vq):
    code, out, err = _run(vq, "models", "verify")
    assert code == 0 and out == ""
    assert f"Nothing to verify: no model files in {isolated / 'cache'}." in err


def test_all_mirrors_failing_is_exit_3_listing_urls(www, isolated, vq):
    _toml(isolated, f'[models.dead]\nkind = "vqgan"\nurls = ["{www.url}/404/x.ckpt", "{www.url}/404/y.ckpt"]\n')
    code, _, err = _run(vq, "models", "download", "dead", "-q")
    assert code == 3
    assert "Could not download dead (model.ckpt)" in err
    assert "/404/x.ckpt: HTTP 404" in err and "/404/y.ckpt: HTTP 404" in err


def test_cache_that_is_a_file_is_one_sentence_and_exit_3(user_model, isolated, monkeypatch, vq):
    blocker = isolated / "cache-file"
    blocker.write_text("")
    monkeypatch.setenv("VQCLIP_CACHE", str(blocker))
    code, out, err = _run(vq, "models", "download", "tiny_f16", "-q")
    assert code == 3 and out == ""
    first, *rest = err.strip().splitlines()
    assert first == f"Error: The cache folder {blocker / 'tiny_f16'} cannot be made: {blocker} is a file, not a folder."
    assert rest == ["Set VQCLIP_CACHE to a folder you can write to."]
