"""Batches, shards, frame streams and animation with the tiny models: in-process through `main(argv)`, and
as real subprocesses where signals, kills and pipes are the point."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image

from tests.conftest import ROOT
from vqclip.animation import affine_image
from vqclip.pipeline.batch import derive_seed, read_prompts, resolve_shard, shard_items

PROMPTS = "# a comment\na red apple\n\na blue car:0.8\n  a green tree | fog:0.3  \n"


@pytest.fixture
def models(fixtures, tiny_clip):
    return ["--vqgan", str(fixtures / "vqgan_tiny_f16.ckpt"), "--clip", tiny_clip, "--size", "64", "--cutn", "2"]


def _manifest(outdir):
    path = outdir / "manifest.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_batch_manifest_and_skip_existing(tmp_path, models, vq):
    (tmp_path / "p.txt").write_text(PROMPTS)
    out = tmp_path / "out"
    r = vq("batch", tmp_path / "p.txt", "--outdir", out, "--steps", "2", *models)
    assert r.returncode == 0, r.stderr.decode()
    paths = r.stdout.decode().split()
    assert len(paths) == 3 and all(os.path.exists(p) for p in paths)
    rows = _manifest(out)
    assert [row["line"] for row in rows] == [2, 4, 5]
    assert [row["prompt"] for row in rows] == ["a red apple", "a blue car:0.8", "a green tree | fog:0.3"]
    assert all(row["status"] == "ok" and row["seed"] == derive_seed(0, row["line"]) for row in rows)
    assert all(set(row) >= {"path", "loss", "seconds"} for row in rows)

    again = vq("batch", tmp_path / "p.txt", "--outdir", out, "--steps", "2", "--skip-existing", *models)
    assert again.returncode == 0
    assert b"Loading models" not in again.stderr  # no work at all
    assert again.stdout.decode().splitlines() == [row["path"] for row in rows]  # each image's path, as when done
    assert b"Skipped 3 prompts whose image is already there." in again.stderr
    assert len(_manifest(out)) == 3


@pytest.fixture(scope="module")
def clean_batch(tmp_path_factory, fixtures, tiny_clip):
    """The batch run without interruption, for the resumed runs to match."""
    tmp = tmp_path_factory.mktemp("clean")
    (tmp / "p.txt").write_text(PROMPTS)
    models = ["--vqgan", str(fixtures / "vqgan_tiny_f16.ckpt"), "--clip", tiny_clip, "--size", "64", "--cutn", "2"]
    args = ["-m", "vqclip", "batch", str(tmp / "p.txt"), "--steps", "25", "--skip-existing", "-q", *models]
    subprocess.run([sys.executable, *args, "--outdir", str(tmp / "out")], check=True, capture_output=True)
    return args, tmp / "out"


@pytest.mark.parametrize("signame", ["SIGKILL", "SIGTERM"])
def test_batch_stopped_and_resumed_matches_a_clean_run(tmp_path, clean_batch, signame):
    args, clean = clean_batch
    stopped = tmp_path / "stopped"
    loud = [a for a in args if a != "-q"] + ["--progress", "json", "--outdir", str(stopped)]
    proc = subprocess.Popen([sys.executable, *loud], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = False
    for line in proc.stderr:  # stop a few steps into the second image
        event = json.loads(line) if line.startswith("{") else {}
        second = second or (event.get("job") == "batch" and event.get("done") == 1)
        if second and event.get("job") == "optimize" and event.get("done") == 3:
            break
    proc.send_signal(getattr(signal, signame))
    proc.communicate()
    rows = _manifest(stopped)
    assert len([r for r in rows if r["status"] == "ok"]) < 3, "the batch finished before it could be stopped"
    if signame == "SIGTERM":  # handled: the manifest says which image was cut short, and where it is kept
        assert proc.returncode == 143
        cut = [r for r in rows if r["status"] == "interrupted"]
        assert len(cut) == 1 and cut[0]["path"].endswith(".partial.png") and os.path.exists(cut[0]["path"])
    resumed = subprocess.run([sys.executable, *args, "--outdir", str(stopped)], capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()
    names = sorted(p.name for p in clean.glob("*.png"))
    assert names == sorted(p.name for p in stopped.glob("*.png")) and len(names) == 3  # no partial left
    for name in names:
        assert (stopped / name).read_bytes() == (clean / name).read_bytes()
    assert sorted(r["line"] for r in _manifest(stopped) if r["status"] == "ok") == [2, 4, 5]


def test_bad_lines_are_reported_and_skipped(tmp_path, models, vq):
    (tmp_path / "p.txt").write_text("a cat\na cat:1..2\n|||\n^^^\n:0.5\na dog\n")
    r = vq("batch", tmp_path / "p.txt", "--outdir", tmp_path, "--steps", "1", *models)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "Line 2: Weight '1..2'" in err and "Line 3: The prompt '|||' has no text" in err
    rows = _manifest(tmp_path)
    assert [row["status"] for row in rows] == ["ok", "error", "error", "error", "error", "ok"]
    assert len(r.stdout.decode().split()) == 2
    assert "4 of 6 prompts failed" in err


@pytest.mark.parametrize(
    "data, message", [(b"caf\xe9 au lait\n", "not UTF-8 text (byte 0xe9"), (b"\x00\xff\xfe", "not UTF-8")]
)
def test_a_prompt_file_that_is_not_utf8_is_one_sentence(tmp_path, models, vq, data, message):
    (tmp_path / "p.txt").write_bytes(data)
    r = vq("batch", tmp_path / "p.txt", "--outdir", tmp_path, *models)
    assert r.returncode == 2 and message in r.stderr.decode() and "Traceback" not in r.stderr.decode()
    stdin = vq("batch", "-", "--outdir", tmp_path, *models, input=data)
    assert stdin.returncode == 2 and "stdin is not UTF-8" in stdin.stderr.decode()


def test_batch_from_closed_stdin_is_one_sentence(tmp_path, models):
    r = subprocess.run(
        [sys.executable, "-m", "vqclip", "batch", "-", "--outdir", str(tmp_path), *models],
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    assert r.returncode == 0 and b"No prompts to run." in r.stderr  # an empty stdin is an empty batch
    closed = subprocess.run(
        f"{sys.executable} -m vqclip batch - --outdir {tmp_path} <&-", shell=True, capture_output=True
    )
    assert closed.returncode == 2 and b"Standard input is closed" in closed.stderr


def test_shards_cover_every_prompt_once(tmp_path, models, vq, monkeypatch):
    items = read_prompts("\n".join(f"prompt {i}" for i in range(10)))
    parts = [shard_items(items, k, 3) for k in range(3)]
    assert sorted(i.line for p in parts for i in p) == list(range(1, 11))
    for k in range(3):
        assert resolve_shard(None, {"RANK": str(k), "WORLD_SIZE": "3"}) == (k, 3)
        assert resolve_shard(
            None, {"SLURM_ARRAY_TASK_ID": str(k + 5), "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "3"}
        ) == (k, 3)
        assert resolve_shard(f"{k}/3", {"RANK": "0", "WORLD_SIZE": "1"}) == (k, 3)  # --shard wins
    (tmp_path / "p.txt").write_text(PROMPTS)
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    r = vq("batch", tmp_path / "p.txt", "--outdir", tmp_path, "--steps", "1", *models)
    assert r.returncode == 0, r.stderr.decode()
    rows = [json.loads(x) for x in (tmp_path / "manifest.shard-1-of-2.jsonl").read_text().splitlines()]
    assert [row["line"] for row in rows] == [4]  # the second of the three prompts
    assert not (tmp_path / "manifest.jsonl").exists()


def _png_stream(data: bytes) -> list[bytes]:
    sig = b"\x89PNG\r\n\x1a\n"
    return [sig + part for part in data.split(sig)[1:]]


def test_frames_to_stdout_and_closed_pipe(tmp_path, models):
    code = (
        "import sys, io\nfrom PIL import Image\ndata = sys.stdin.buffer.read()\nsig = b'\\x89PNG\\r\\n\\x1a\\n'\n"
        "frames = [Image.open(io.BytesIO(sig + p)) for p in data.split(sig)[1:]]\n"
        "[f.load() for f in frames]\nprint(len(frames), frames[0].size)\n"
    )
    vq = " ".join(f"'{a}'" for a in models)
    cmd = f"{sys.executable} -m vqclip 'a cat' {vq} --steps 6 --frames-every 2 --frames - -q"
    r = subprocess.run(f'{cmd} | {sys.executable} -c "{code}"', shell=True, capture_output=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "3 (64, 64)"
    closed = subprocess.run(
        f"set -o pipefail; {cmd} --steps 40 --frames-every 1 | head -c 1000 > /dev/null",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        cwd=tmp_path,
    )
    assert closed.returncode == 0, closed.stderr.decode()
    assert b"Traceback" not in closed.stderr
    assert list(tmp_path.glob("a-cat_s*.png")), "the latest image was not saved"


def test_zoom_frames(tmp_path, models, vq):
    r = vq(
        "a tunnel",
        *models,
        "--steps",
        "4",
        "--frames-every",
        "1",
        "--zoom",
        "1.5",
        "--lr",
        "1",  # a frame starts from exact codes: at the default 0.1 one Adam step rarely changes a code
        "--frames",
        tmp_path / "frames",
        "-q",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr.decode()
    frames = sorted((tmp_path / "frames").glob("frame-*.png"))
    assert [f.name for f in frames] == [f"frame-0000{i}.png" for i in range(1, 5)]
    pixels = [Image.open(f).convert("RGB").tobytes() for f in frames]
    assert len(set(pixels)) == 4


def test_zoom_grows_content_and_shift_moves_it():
    img = torch.zeros(1, 3, 64, 64)
    img[:, :, 28:36, 28:36] = 1
    assert float(affine_image(img, zoom=2.0).sum()) == pytest.approx(4 * float(img.sum()), rel=0.05)
    moved = affine_image(img, shift=(8, 0))
    assert (moved[0, 0].sum(0) > 0.5).nonzero().flatten().tolist() == list(range(36, 44))
    turned = affine_image(img, rotate=45)
    assert float(turned.sum()) == pytest.approx(float(img.sum()), rel=0.1) and not torch.allclose(turned, img)


def test_example_scripts_run_as_written(tmp_path, models, ffmpeg):
    """`VQCLIP=` picks the vqclip the scripts run, an ffmpeg on the PATH is the one used, and a failing vqclip
    ends the script with its own code and message. (Every script run after `make` with no ffmpeg on the PATH:
    tests/test_newcomer.py.)"""
    (tmp_path / "vqclip").write_text(f'#!/bin/sh\nexec {sys.executable} -m vqclip "$@"\n')
    (tmp_path / "vqclip").chmod(0o755)
    env = {**os.environ, "VQCLIP": str(tmp_path / "vqclip")}  # PATH holds the ffmpeg fixture's folder
    quick = [*models, "--steps", "3"]

    def example(script, *args):
        return subprocess.run(["bash", ROOT / "examples" / script, *args], env=env, capture_output=True, cwd=tmp_path)

    r = example("to_video.sh", "a cat", tmp_path / "v.mp4", *quick)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == str(tmp_path / "v.mp4") and (tmp_path / "v.mp4").stat().st_size > 0
    # when vqclip fails, the script ends with vqclip's code and message, not ffmpeg's "End of file"
    r = example("to_video.sh", "a cat", tmp_path / "w.mp4", *quick, "--vqgan", "no_such_model")
    assert r.returncode == 2, r.stderr.decode()
    assert b"no_such_model" in r.stderr and b"End of file" not in r.stderr and not (tmp_path / "w.mp4").exists()
