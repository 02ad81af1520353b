"""A model entry can only reach files inside its cache folder: a user TOML `filename` that is absolute or
climbs out with `..`, or a link in the cache that leads out, is one sentence and exit 2 in every command
(download, verify, path, a run), and the user's files stay byte-identical. `models verify` removes only files
the cache itself stamped."""

import hashlib
from pathlib import Path

import pytest

from tests.http_server import FileServer
from vqclip.weights import download

ZEROS = "0" * 64


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def www(tmp_path, fixtures, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(download, "BACKOFF", 0.01)
    root = tmp_path / "www"
    root.mkdir()
    (root / "tiny.ckpt").write_bytes((fixtures / "vqgan_tiny_f16.ckpt").read_bytes())
    (root / "tiny.yaml").write_bytes((fixtures / "vqgan_tiny_f16.yaml").read_bytes())
    with FileServer(root) as server:
        yield server


@pytest.fixture
def thesis(tmp_path) -> Path:
    """A file of the user's, outside the cache."""
    home = tmp_path / "me"
    home.mkdir()
    path = home / "thesis.txt"
    path.write_text("four years of work\n" * 100)
    return path


def _entry(isolated, name: str, url: str, **keys) -> None:
    lines = [f"[models.{name}]", 'kind = "vqgan"', f'urls = ["{url}"]']
    lines += [f"{key} = {value!r}".replace("'", '"') for key, value in keys.items()]
    (isolated / "config.toml").write_text("\n".join(lines) + "\n")


def _commands(name: str, tiny_clip: str) -> list[tuple[str, ...]]:
    return [  # verify first: the old code deleted the user's file there
        ("models", "verify", name),
        ("models", "verify"),
        ("models", "download", name, "-q"),
        ("models", "path", name),
        ("a cat", "--vqgan", name, "--clip", tiny_clip, "--size", "32", "--steps", "1", "--device", "cpu"),
    ]


@pytest.mark.parametrize("how", ["absolute", "dotdot", "config_filename"])
def test_a_filename_outside_the_cache_is_exit_2_in_every_command(how, www, isolated, thesis, tiny_clip, vq, tmp_path):
    config = isolated / "config.toml"
    if how == "absolute":
        _entry(isolated, "x", f"{www.url}/ok/tiny.ckpt", filename=str(thesis), sha256=ZEROS)
        key, value = "filename", str(thesis)
    elif how == "dotdot":
        # from <cache>/x/ two levels up is the folder holding the cache: `me/thesis.txt` beside it
        value = str(Path("..", "..", thesis.parent.name, thesis.name))
        (isolated / "me").mkdir(exist_ok=True)
        thesis = isolated / "me" / "thesis.txt"
        thesis.write_text("notes\n" * 100)
        _entry(isolated, "x", f"{www.url}/ok/tiny.ckpt", filename=value, sha256=ZEROS)
        key = "filename"
    else:
        value = str(thesis)
        _entry(isolated, "x", f"{www.url}/ok/tiny.ckpt", config_urls=[f"{www.url}/ok/tiny.yaml"], config_filename=value)
        key = "config_filename"
    before = _digest(thesis)
    for args in _commands("x", tiny_clip):
        result = vq(*args, cwd=tmp_path)
        err = result.stderr.decode().replace("\n", " ")
        assert _digest(thesis) == before, args
        assert result.returncode == 2, (args, err)
        assert f"Model 'x' in {config}: `{key}` must be a plain file name inside the model's cache folder" in err
        assert repr(value) in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.png"))


def test_a_name_that_climbs_out_of_the_cache_is_exit_2(www, isolated, vq):
    (isolated / "config.toml").write_text(f'[models."../x"]\nkind = "vqgan"\nurls = ["{www.url}/ok/tiny.ckpt"]\n')
    result = vq("models", "download", "../x", "-q")
    assert result.returncode == 2
    assert "Model '../x' in" in result.stderr.decode() and "climbs out with `..`" in result.stderr.decode()
    assert not (isolated / "x").exists()


@pytest.mark.parametrize("link", ["folder", "file", "part"])
def test_a_link_that_leads_out_of_the_cache_is_exit_2(link, www, isolated, thesis, tiny_clip, vq, tmp_path):
    """The model's folder, its file or its `.part` file is a link to the user's files."""
    _entry(isolated, "x", f"{www.url}/ok/tiny.ckpt", sha256=ZEROS)
    folder = isolated / "cache" / "x"
    if link == "folder":  # <cache>/x -> the user's folder, which holds a `model.ckpt`
        (isolated / "cache").mkdir()
        victim = thesis.parent / "model.ckpt"
        victim.write_bytes(b"my own checkpoint")
        folder.symlink_to(thesis.parent)
    else:
        folder.mkdir(parents=True)
        victim = thesis
        (folder / ("model.ckpt" if link == "file" else "model.ckpt.part")).symlink_to(thesis)
    before = {p: _digest(p) for p in thesis.parent.iterdir()}
    for args in _commands("x", tiny_clip):
        result = vq(*args, cwd=tmp_path)
        err = result.stderr.decode().replace("\n", " ")
        assert {p: _digest(p) for p in thesis.parent.iterdir()} == before, args
        assert result.returncode == 2, (args, err)
        assert "Model 'x' cannot use" in err and "a link that leads out of the cache folder" in err, err
        assert f"(check its entry in {isolated / 'config.toml'})" in err
    assert victim.exists()


def test_verify_removes_only_files_the_cache_stamped(www, isolated, vq):
    """A file copied into the cache by hand that does not check out is reported and kept; a downloaded
    (stamped) one that went bad is removed."""
    _entry(isolated, "x", f"{www.url}/ok/tiny.ckpt", sha256=ZEROS)
    placed = isolated / "cache" / "x" / "model.ckpt"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"a file the user put here")
    before = _digest(placed)
    result = vq("models", "verify", "x")
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 1
    assert f"corrupt  {placed} (size" not in out and f"corrupt  {placed} (sha256" in out
    assert "kept: vqclip did not download it" in out
    assert "1 corrupt file(s) that vqclip did not download left in place." in err
    assert _digest(placed) == before

    placed.unlink()
    _entry(isolated, "x", f"{www.url}/ok/tiny.ckpt")  # no sha256: the download's is recorded
    assert vq("models", "download", "x", "-q").returncode == 0
    with open(placed, "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xfe")
    result = vq("models", "verify", "x")
    assert result.returncode == 1 and f"corrupt  {placed}" in result.stdout.decode()
    assert "removed" in result.stdout.decode() and not placed.exists()
