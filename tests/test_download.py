"""Downloads against a real local HTTP server: verification, resume, mirrors, locking, offline."""

import hashlib
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.http_server import FileServer
from vqclip import download
from vqclip.download import Target, fetch, is_verified
from vqclip.errors import ChecksumError, DownloadError, OfflineError


@pytest.fixture
def served(tmp_path, fixtures):
    root = tmp_path / "www"
    root.mkdir()
    data = (fixtures / "vqgan_tiny_f16.ckpt").read_bytes()
    (root / "model.ckpt").write_bytes(data)
    (root / "model.yaml").write_bytes((fixtures / "vqgan_tiny_f16.yaml").read_bytes())
    with FileServer(root) as server:
        server.data = data
        server.sha = hashlib.sha256(data).hexdigest()
        yield server


@pytest.fixture(autouse=True)
def online_fast_retries(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # HF_HUB_OFFLINE=1 would switch vqclip offline too
    monkeypatch.setattr(download, "BACKOFF", 0.01)


def _target(tmp_path, urls, server, **kw):
    return Target(
        tmp_path / "cache" / "model.ckpt",
        tuple(urls),
        size=len(server.data),
        sha256=server.sha,
        label="tiny (model.ckpt)",
        **kw,
    )


def _refused_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/model.ckpt"


def test_fresh_download_verified_and_cached(tmp_path, served):
    target = _target(tmp_path, [f"{served.url}/ok/model.ckpt"], served)
    path = fetch(target, quiet=True)
    assert path.read_bytes() == served.data
    assert is_verified(path, served.sha)
    assert not path.with_name("model.ckpt.part").exists()
    assert len(served.requests) == 1
    fetch(target, quiet=True)
    assert len(served.requests) == 1  # the second call did not touch the network


def test_interrupted_transfer_resumes_with_range(tmp_path, served):
    target = _target(tmp_path, [f"{served.url}/cut/model.ckpt"], served)
    path = fetch(target, quiet=True)
    assert path.read_bytes() == served.data
    (_, first_range), (_, second_range) = served.requests
    assert first_range is None
    half = len(served.data) // 2  # what the server sent before dropping the connection
    start = int(second_range.removeprefix("bytes=").rstrip("-"))
    assert half - download.NET_CHUNK < start <= half  # only the rest was asked for


def test_partial_file_from_an_earlier_run_resumes(tmp_path, served):
    target = _target(tmp_path, [f"{served.url}/ok/model.ckpt"], served)
    target.path.parent.mkdir(parents=True)
    target.path.with_name("model.ckpt.part").write_bytes(served.data[:1000])
    fetch(target, quiet=True)
    assert served.requests == [("/ok/model.ckpt", "bytes=1000-")]
    assert target.path.read_bytes() == served.data


def test_server_ignoring_range_restarts_cleanly(tmp_path, served):
    target = _target(tmp_path, [f"{served.url}/norange/model.ckpt"], served)
    target.path.parent.mkdir(parents=True)
    target.path.with_name("model.ckpt.part").write_bytes(b"x" * 1000)  # junk that must not be kept
    fetch(target, quiet=True)
    assert target.path.read_bytes() == served.data


def test_missing_content_length_and_unknown_hash_records_one(tmp_path, served):
    target = Target(tmp_path / "c" / "model.ckpt", (f"{served.url}/nolength/model.ckpt",), label="x")
    path = fetch(target, quiet=True)
    assert path.read_bytes() == served.data
    assert download.read_stamp(path)["sha256"] == served.sha  # recorded at the first download
    path.write_bytes(b"changed behind our back")
    assert download.verify_file(path, None, None) is not None


def test_mirrors_fall_through_and_all_failing_lists_them(tmp_path, served):
    bad = [f"{served.url}/404/model.ckpt", f"{served.url}/500/model.ckpt", _refused_url()]
    path = fetch(_target(tmp_path, [*bad, f"{served.url}/ok/model.ckpt"], served), quiet=True)
    assert path.read_bytes() == served.data
    assert len(served.gets("/404/")) == 1  # a 404 is not retried
    assert len(served.gets("/500/")) == download.RETRIES  # a 500 is

    with pytest.raises(DownloadError) as err:
        fetch(_target(tmp_path / "again", bad, served), quiet=True)
    message = err.value.message
    for url in bad:
        assert url in message
    assert "HTTP 404" in message and "HTTP 500" in message and "connection failed" in message
    assert err.value.exit_code == 3


def test_checksum_mismatch_is_never_moved_into_place(tmp_path, served):
    target = _target(tmp_path, [f"{served.url}/bad/model.ckpt"], served)
    with pytest.raises(ChecksumError, match="sha256 mismatch") as err:
        fetch(target, quiet=True)
    assert "discarded" in err.value.message
    assert not target.path.exists()
    assert not target.path.with_name("model.ckpt.part").exists()


def test_offline_never_opens_a_socket(tmp_path, served, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("VQCLIP_OFFLINE", "1")
    target = _target(tmp_path, [f"{served.url}/ok/model.ckpt"], served, fetch_command="vqclip models download tiny")
    with pytest.raises(OfflineError) as err:
        fetch(target, quiet=True)
    assert "tiny (model.ckpt) is not in the cache" in err.value.message
    assert str(target.path) in err.value.message
    assert "vqclip models download tiny" in err.value.hint
    assert f"{served.url}/ok/model.ckpt" in err.value.hint
    assert served.requests == []


def test_two_processes_one_transfer(tmp_path, served):
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from vqclip.download import Target, fetch
        t = Target(Path({str(tmp_path / "shared" / "model.ckpt")!r}), ({served.url + "/slow/model.ckpt"!r},),
                   size={len(served.data)}, sha256={served.sha!r})
        print(fetch(t, quiet=True).stat().st_size)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0].decode().strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == [str(len(served.data))] * 2
    assert len(served.gets("/slow/")) == 1
