"""Downloads against a real local HTTP server that misbehaves like real hosts: verification, resume, mirrors,
web pages instead of files, hand-placed files, cache errors, locking, offline."""

import errno
import hashlib
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.http_server import FileServer
from vqclip.errors import CacheError, ChecksumError, DownloadError, OfflineError
from vqclip.events import Progress
from vqclip.weights import cache, download
from vqclip.weights.cache import FileTarget, check_file, is_verified
from vqclip.weights.download import fetch


@pytest.fixture
def served(tmp_path, fixtures):
    root = tmp_path / "www"
    root.mkdir()
    data = (fixtures / "vqgan_tiny_f16.ckpt").read_bytes()
    (root / "model.ckpt").write_bytes(data)
    with FileServer(root) as server:
        server.data = data
        server.sha = hashlib.sha256(data).hexdigest()
        yield server


@pytest.fixture(autouse=True)
def online_fast_retries(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # HF_HUB_OFFLINE=1 would switch vqclip offline too
    monkeypatch.setattr(download, "BACKOFF", 0.01)
    monkeypatch.setattr(download, "TIMEOUT", (2, 0.3))  # /stall/ goes silent for longer than this


def _target(tmp_path, urls, server, published=True, **kw):
    """The fixture checkpoint as a registry file: with its published size and sha256, or with neither."""
    return FileTarget(
        tmp_path / "cache" / "model.ckpt",
        tuple(urls),
        size=len(server.data) if published else None,
        sha256=server.sha if published else None,
        label="tiny (model.ckpt)",
        content="checkpoint",
        **kw,
    )


def _part(target):
    return target.path.with_name("model.ckpt.part")


def _leftovers(target) -> list[str]:
    """Files that must never stay behind in the cache folder: locks and temporary files."""
    folder = target.path.parent
    return sorted(p.name for p in folder.glob("*") if p.suffix in (".lock", ".tmp")) if folder.is_dir() else []


def _refused_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/model.ckpt"


def test_fresh_download_verified_cached_and_reported(tmp_path, served):
    events = []
    target = _target(tmp_path, [f"{served.url}/ok/model.ckpt"], served)
    path = fetch(target, progress=events.append)
    assert path.read_bytes() == served.data
    assert is_verified(path, served.sha)
    assert not _part(target).exists() and not path.with_name("model.ckpt.part.json").exists()
    assert _leftovers(target) == []
    assert len(served.requests) == 1
    assert all(e.job == "download" and e.unit == "byte" and e.stage == "tiny (model.ckpt)" for e in events)
    assert events[-1] == Progress("download", len(served.data), len(served.data), unit="byte", stage=target.label)
    fetch(target)
    assert len(served.requests) == 1  # the second call did not touch the network


def test_interrupted_transfer_resumes_with_range_and_if_range(tmp_path, served):
    target = _target(tmp_path, [f"{served.url}/cut/model.ckpt"], served)
    path = fetch(target)
    assert path.read_bytes() == served.data
    (_, first_range), (_, second_range) = served.requests
    assert first_range is None
    assert int(second_range.removeprefix("bytes=").rstrip("-")) == len(served.data) // 2  # every byte was kept
    assert served.headers[1]["If-Range"] == '"v1"'  # only if the file did not change since


def test_ctrl_c_leaves_a_resumable_part_and_no_lock(tmp_path, served):
    target = _target(tmp_path, [f"{served.url}/slow/model.ckpt"], served)

    def interrupt(event):
        if event.done >= 8192:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch(target, progress=interrupt)
    kept = _part(target).stat().st_size
    assert kept >= 8192 and not target.path.exists()
    assert _leftovers(target) == []
    fetch(target)
    assert target.path.read_bytes() == served.data
    assert served.requests[-1] == ("/slow/model.ckpt", f"bytes={kept}-")


def test_part_from_elsewhere_is_not_resumed(tmp_path, served):
    target = _target(tmp_path, [f"{served.url}/ok/model.ckpt"], served)
    target.path.parent.mkdir(parents=True)
    _part(target).write_bytes(b"x" * 1000)  # not from this URL's transfer: no record says where it came from
    fetch(target)
    assert served.requests == [("/ok/model.ckpt", None)]  # one transfer, from the start
    assert target.path.read_bytes() == served.data


def test_a_mirrors_bytes_are_never_appended_to_anothers(tmp_path, served, monkeypatch):
    monkeypatch.setattr(download, "RETRIES", 1)  # the first mirror gives up half way
    target = _target(tmp_path, [f"{served.url}/cut/model.ckpt", f"{served.url}/ok/model.ckpt"], served)
    fetch(target)
    assert served.gets("/ok/") == [("/ok/model.ckpt", None)]
    assert target.path.read_bytes() == served.data


# Each fault of a real host: does a download that meets it alone still end with the file?
FAULTS = {
    "html": False,  # a dead host's page with status 200
    "disguised": False,  # the same page, served as application/octet-stream
    "moved": False,  # a redirect to such a page
    "404": False,
    "500": False,
    "bad": False,  # wrong bytes of the right length
    "cut": True,  # the connection dropped midway: resumed
    "norange": True,  # Range ignored: started over
    "overstate": True,  # Content-Length larger than the body
    "slow": True,
    "stall": True,  # silent past the read timeout: resumed
}
REASONS = {
    "html": "web page (text/html)",
    "disguised": "web page (HTML)",
    "moved": "web page (text/html) after a redirect to",
    "404": "HTTP 404",
    "500": "HTTP 500 (3 tries)",
}


@pytest.mark.parametrize("published", [True, False], ids=["sha256", "no-sha256"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_alone_ends_with_the_file_or_one_clear_error(tmp_path, served, fault, published):
    target = _target(tmp_path, [f"{served.url}/{fault}/model.ckpt"], served, published=published)
    if FAULTS[fault]:
        assert fetch(target).read_bytes() == served.data
        assert is_verified(target.path, served.sha if published else None)
    else:
        with pytest.raises((DownloadError, ChecksumError)) as err:
            fetch(target)
        message = err.value.message
        assert err.value.exit_code == 3 and message.count(". ") == 0 and message.endswith(".")
        assert message.startswith(f"Could not download tiny (model.ckpt); tried: {served.url}/{fault}/model.ckpt: ")
        expected = REASONS.get(fault) or ("sha256 mismatch" if published else "is not a weights file")
        assert expected in message
        assert "connection closed" not in message  # the wrong diagnosis for a web page
        assert not target.path.exists()  # never a file in the cache that is not the model
    assert _leftovers(target) == []


@pytest.mark.parametrize("published", [True, False], ids=["sha256", "no-sha256"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_working_later_mirror_wins_on_the_first_run(tmp_path, served, fault, published):
    target = _target(
        tmp_path, [f"{served.url}/{fault}/model.ckpt", f"{served.url}/ok/model.ckpt"], served, published=published
    )
    assert fetch(target).read_bytes() == served.data
    assert all(rng is None for _, rng in served.gets("/ok/"))  # the good mirror's bytes were not appended
    assert len(served.gets("/ok/")) <= 1
    assert _leftovers(target) == []


def test_missing_content_length_and_unknown_hash_records_one(tmp_path, served):
    target = FileTarget(tmp_path / "c" / "model.ckpt", (f"{served.url}/nolength/model.ckpt",), content="checkpoint")
    path = fetch(target)
    assert path.read_bytes() == served.data
    assert cache.read_stamp(path)["sha256"] == served.sha  # recorded at the first download
    path.write_bytes(b"changed behind our back")
    assert check_file(target) is not None


def test_failures_list_every_url_with_advice_that_fits(tmp_path, served):
    dead = [f"{served.url}/404/model.ckpt", f"{served.url}/html/model.ckpt"]
    with pytest.raises(DownloadError) as err:
        fetch(_target(tmp_path, dead, served))
    for url in dead:
        assert url in err.value.message
    assert "connection" not in err.value.hint  # a dead link is not a network problem
    assert str(tmp_path / "cache" / "model.ckpt") in err.value.hint

    unreachable = [f"{served.url}/500/model.ckpt", _refused_url()]
    with pytest.raises(DownloadError) as err:
        fetch(_target(tmp_path / "again", unreachable, served))
    assert "HTTP 500" in err.value.message and "connection failed" in err.value.message
    assert "Check your connection or proxy" in err.value.hint
    assert len(served.gets("/500/")) == download.RETRIES  # a 500 is retried; a 404 was not
    assert len(served.gets("/404/")) == 1


def test_checksum_mismatch_is_never_moved_into_place(tmp_path, served):
    target = _target(tmp_path, [f"{served.url}/bad/model.ckpt"], served)
    with pytest.raises(ChecksumError, match="sha256 mismatch") as err:
        fetch(target)
    assert "discarded" in err.value.message
    assert "connection" not in err.value.hint
    assert not target.path.exists() and not _part(target).exists()


def test_changed_file_on_the_server_starts_over(tmp_path, served):
    target = _target(tmp_path, [f"{served.url}/ok/model.ckpt"], served)
    target.path.parent.mkdir(parents=True)
    _part(target).write_bytes(served.data[:1000])
    record = {"url": f"{served.url}/ok/model.ckpt", "validator": '"v0"', "total": len(served.data)}
    cache.write_json(target.path.with_name("model.ckpt.part.json"), record)
    fetch(target)
    assert served.headers[0]["If-Range"] == '"v0"'  # the server sent the whole file instead of the range
    assert target.path.read_bytes() == served.data


# ---- files already in the cache, offline ----------------------------------------------------------


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_offline_never_opens_a_socket_and_says_why(tmp_path, served, monkeypatch):
    _no_network(monkeypatch)
    target = _target(tmp_path, [f"{served.url}/ok/model.ckpt"], served, fetch_command="vqclip models download tiny")
    for var in ("VQCLIP_OFFLINE", "HF_HUB_OFFLINE"):
        with monkeypatch.context() as env:
            env.setenv(var, "1")
            with pytest.raises(OfflineError) as err:
                fetch(target)
            assert "tiny (model.ckpt) is not in the cache" in err.value.message
            assert str(target.path) in err.value.message
            assert f"the network is off ({var}=1)" in err.value.message
            assert f"vqclip models download tiny` with {var} unset" in err.value.hint
            assert f"{served.url}/ok/model.ckpt" in err.value.hint
    assert served.requests == []


def test_hand_placed_file_is_used_offline_checked_once(tmp_path, served, monkeypatch):
    _no_network(monkeypatch)
    target = _target(tmp_path, [f"{served.url}/ok/model.ckpt"], served)
    target.path.parent.mkdir(parents=True)
    target.path.write_bytes(served.data)  # copied exactly where the error message asked for it
    assert fetch(target, offline=True) == target.path
    assert is_verified(target.path, served.sha)  # stamped: the next run trusts it without hashing
    monkeypatch.setattr(cache, "sha256_file", lambda path: pytest.fail("hashed again"))
    assert fetch(target, offline=True) == target.path


def test_wrong_hand_placed_file_is_named_offline_and_replaced_online(tmp_path, served):
    target = _target(tmp_path, [f"{served.url}/ok/model.ckpt"], served)
    target.path.parent.mkdir(parents=True)
    target.path.write_bytes(served.data[:-1] + b"!")
    with pytest.raises(OfflineError, match="in the cache is not usable \\(sha256 "):
        fetch(target, offline=True)
    assert fetch(target).read_bytes() == served.data


def test_read_only_cache_with_correct_unstamped_file_is_used(tmp_path, served, monkeypatch):
    target = _target(tmp_path, [f"{served.url}/ok/model.ckpt"], served)
    target.path.parent.mkdir(parents=True)
    target.path.write_bytes(served.data)

    def read_only(path, digest):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(cache, "write_stamp", read_only)
    assert fetch(target, offline=True) == target.path
    assert fetch(target) == target.path and served.requests == []


# ---- cache errors --------------------------------------------------------------------------------


def test_cache_that_is_a_file_is_one_sentence(tmp_path, served):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    target = FileTarget(blocker / "vqgan" / "model.ckpt", (f"{served.url}/ok/model.ckpt",), label="tiny")
    with pytest.raises(CacheError) as err:
        fetch(target)
    assert err.value.exit_code == 3
    assert (
        err.value.message == f"The cache folder {target.path.parent} cannot be made: {blocker} is a file, not a folder."
    )


def test_unwritable_cache_is_one_sentence(tmp_path, served, monkeypatch):
    target = _target(tmp_path, [f"{served.url}/ok/model.ckpt"], served)
    real_mkdir = pathlib.Path.mkdir

    def denied(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "cache")):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", denied)
    with pytest.raises(CacheError) as err:
        fetch(target)
    assert err.value.message == f"The cache folder {target.path.parent} is not writable (permission denied)."
    assert "VQCLIP_CACHE" in err.value.hint


def test_full_disk_keeps_the_part_and_no_final_file(tmp_path, served, monkeypatch):
    target = _target(tmp_path, [f"{served.url}/ok/model.ckpt"], served)

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download, "open", lambda path, mode: FullDisk(open(path, mode)), raising=False)
    with pytest.raises(CacheError) as err:
        fetch(target)
    assert err.value.message == f"The disk holding the cache folder {target.path.parent} is full."
    assert "resumes" in err.value.hint
    assert not target.path.exists() and _leftovers(target) == []


# ---- two processes -------------------------------------------------------------------------------


def test_two_processes_one_transfer_and_no_lock_left(tmp_path, served):
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from vqclip.weights.cache import FileTarget
        from vqclip.weights.download import fetch
        t = FileTarget(Path({str(tmp_path / "shared" / "model.ckpt")!r}), ({served.url + "/gate/model.ckpt"!r},),
                   size={len(served.data)}, sha256={served.sha!r})
        path = fetch(t, progress=lambda e: "note" in e.extra and print(e.extra["note"], flush=True))
        print(path.stat().st_size)
        """
    )
    first = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    while not served.gets("/gate/"):  # the first process holds the lock and waits for the server
        assert first.poll() is None, "the first process ended early"
        time.sleep(0.01)
    second = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert second.stdout.readline().strip() == "waiting for another vqclip process to fetch it"
    served.gate.set()
    outputs = [p.communicate(timeout=60)[0].strip() for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0]
    assert outputs == [str(len(served.data))] * 2
    assert len(served.gets("/gate/")) == 1
    assert not (tmp_path / "shared" / "model.ckpt.lock").exists()
