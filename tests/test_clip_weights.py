"""CLIP weights: the Hugging Face cache first, then vqclip's own downloader from a Hub-like local server; a
missing model is one message at once, with no Hugging Face log line and no environment change."""

import logging
import os
import socket
import time

import huggingface_hub.constants as hf
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from tests.http_server import FileServer
from vqclip.errors import DownloadError, OfflineError
from vqclip.weights import cache, download
from vqclip.weights.clip import download_clip, load_clip

REPO = "test-org/tiny-clip"


@pytest.fixture(autouse=True)
def hub(tmp_path, monkeypatch, tiny_clip):
    """An empty Hugging Face cache, and an open_clip tag `TinyCLIP-test/tiny` whose weights live on the Hub."""
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    tags = {"tiny": {"hf_hub": f"{REPO}/", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "TinyCLIP-test", tags)
    monkeypatch.setattr(download, "BACKOFF", 0.01)


@pytest.fixture
def tiny_weights():
    torch.manual_seed(0)
    return open_clip.create_model("TinyCLIP-test").state_dict()


@pytest.fixture
def hub_server(tmp_path, monkeypatch, tiny_weights):
    """A local server laid out like the Hub, serving the tiny model's safetensors file."""
    files = tmp_path / "www" / REPO / "resolve" / "main"
    files.mkdir(parents=True)
    save_file(tiny_weights, files / "open_clip_model.safetensors")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with FileServer(tmp_path / "www") as server:
        monkeypatch.setattr(hf, "ENDPOINT", server.url)
        server.files = files
        yield server


def _no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: pytest.fail("a socket was opened"))


def test_hub_weights_download_into_the_cache_and_load(hub_server, isolated, tiny_weights, monkeypatch, capfd):
    events = []
    path = download_clip("TinyCLIP-test/tiny", progress=events.append)
    assert path == isolated / "cache" / "clip" / "test-org--tiny-clip" / "open_clip_model.safetensors"
    assert events[-1].job == "download" and events[-1].done == events[-1].total == path.stat().st_size
    _no_network(monkeypatch)
    handlers = list(logging.getLogger().handlers)
    capfd.readouterr()
    clip = load_clip("TinyCLIP-test/tiny", offline=True)  # verified once, used offline from now on
    assert capfd.readouterr() == ("", "")  # open_clip's "No pretrained weights loaded" stays unseen
    assert logging.getLogger().handlers == handlers  # and its logging.warning() configured nothing
    assert torch.equal(clip.model.state_dict()["text_projection"], tiny_weights["text_projection"])
    assert clip.mean.flatten().tolist() == [0.5, 0.5, 0.5]  # the tag's normalisation
    assert clip.sha256 == cache.sha256_file(path)


def test_a_repo_without_safetensors_falls_back_to_the_pickle(hub_server, tiny_weights):
    (hub_server.files / "open_clip_model.safetensors").unlink()
    torch.save(tiny_weights, hub_server.files / "open_clip_pytorch_model.bin")
    clip = load_clip("TinyCLIP-test/tiny")
    assert clip.model.state_dict()["logit_scale"] == tiny_weights["logit_scale"]
    assert [path.rsplit("/", 1)[1] for path, _ in hub_server.requests] == [
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
    ]


def test_the_hugging_face_cache_is_used_offline(tmp_path, tiny_weights, monkeypatch):
    snapshot = tmp_path / "hf-hub" / "models--test-org--tiny-clip" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file(tiny_weights, snapshot / "open_clip_model.safetensors")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    _no_network(monkeypatch)
    clip = load_clip("TinyCLIP-test/tiny")
    assert torch.equal(clip.model.state_dict()["logit_scale"], tiny_weights["logit_scale"])


def test_missing_default_clip_offline_is_one_message_at_once(capfd, caplog):
    environ = dict(os.environ)
    caplog.set_level(logging.DEBUG)
    start = time.perf_counter()
    with pytest.raises(OfflineError) as err:
        load_clip("ViT-B-32/openai")
    assert time.perf_counter() - start < 2
    assert "CLIP ViT-B-32/openai is not in the Hugging Face cache" in err.value.message
    assert "the network is off (HF_HUB_OFFLINE=1)" in err.value.message
    assert "vqclip models download ViT-B-32/openai` with HF_HUB_OFFLINE unset" in err.value.hint
    assert capfd.readouterr() == ("", "")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert dict(os.environ) == environ  # library code changes no environment variable


def test_unreachable_hub_is_one_message_quickly(monkeypatch, capfd, caplog):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    monkeypatch.setattr(hf, "ENDPOINT", f"http://127.0.0.1:{s.getsockname()[1]}")  # nothing listens there
    s.close()
    caplog.set_level(logging.DEBUG)
    start = time.perf_counter()
    with pytest.raises(DownloadError) as err:
        load_clip("ViT-B-32/openai")
    assert time.perf_counter() - start < 5
    assert "connection failed" in err.value.message and "Check your connection" in err.value.hint
    assert capfd.readouterr() == ("", "")
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub")]


def test_models_path_and_list_for_a_hub_clip(isolated, vq):
    found = vq("models", "path", "ViT-B-32/openai")
    expected = isolated / "cache" / "clip" / "timm--vit_base_patch32_clip_224.openai" / "open_clip_model.safetensors"
    assert (found.returncode, found.stdout.decode().strip()) == (0, str(expected))
    listed = vq("models", "list", "--kind", "clip", "--json")
    assert (
        listed.returncode == 0 and b'"name": "ViT-B-32/openai"' in listed.stdout and b'"cached": false' in listed.stdout
    )
