"""Issue 31, what a new user meets: the install, the examples after `make`, --video without a system ffmpeg,
--frames with --video, the README's Python block, replay's thread count, and the smaller messages."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import pytest
from PIL import Image, ImageDraw

from tests.conftest import ROOT, tiny_args


@pytest.fixture(scope="module")
def f16(fixtures):
    return str(fixtures / "vqgan_tiny_f16.ckpt")


@pytest.fixture
def no_system_ffmpeg(tmp_path, monkeypatch):
    """A PATH without any ffmpeg (nor vqclip), as on a fresh machine: a few shell tools only."""
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    for tool in ("sh", "bash", "env", "dirname", "mktemp", "cat", "rm"):  # what the examples use
        found = shutil.which(tool)
        if found:
            (bare / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bare))
    assert shutil.which("ffmpeg") is None
    return imageio_ffmpeg.get_ffmpeg_exe()


def _frames_of(video: Path, ffmpeg: str) -> int:
    r = subprocess.run(
        [ffmpeg, "-loglevel", "error", "-i", str(video), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    )
    return len(r.stdout) // (64 * 64 * 3)


def test_video_uses_imageio_ffmpeg_when_no_ffmpeg_is_on_the_path(f16, tiny_clip, tmp_path, vq, no_system_ffmpeg):
    r = vq("a cat", *tiny_args(f16, tiny_clip), "--steps", "3", "--video", "v.mp4", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert "needs ffmpeg" not in r.stderr.decode()
    assert r.stdout.decode().splitlines()[-1] == "v.mp4"
    assert _frames_of(tmp_path / "v.mp4", no_system_ffmpeg) == 3


def test_video_without_any_ffmpeg_is_one_sentence_and_exit_2(tmp_path, vq, no_system_ffmpeg, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # not installed either
    r = vq("a cat", "--video", "v.mp4", "--offline", cwd=tmp_path)
    assert r.returncode == 2 and "--video needs ffmpeg" in r.stderr.decode(), r.stderr.decode()


def test_frames_folder_and_video_are_both_written(f16, tiny_clip, tmp_path, vq, ffmpeg):
    args = tiny_args(f16, tiny_clip)
    r = vq(
        "a cat", *args, "--steps", "4", "--frames", "fr", "--frames-every", "2", "--video", "v.mp4", "-q", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr.decode()
    frames = sorted((tmp_path / "fr").glob("frame-*.png"))
    assert [f.name for f in frames] == ["frame-00001.png", "frame-00002.png"]
    assert Image.open(frames[0]).size == (64, 64)
    assert _frames_of(tmp_path / "v.mp4", ffmpeg) == 2
    # the folder is checked with --video too: one that holds frames is refused before any model loads
    r = vq("a cat", *args, "--steps", "4", "--frames", "fr", "--video", "w.mp4", cwd=tmp_path)
    assert r.returncode == 2 and "already holds frames" in r.stderr.decode(), r.stderr.decode()


def test_examples_run_after_make_with_no_vqclip_and_no_ffmpeg_on_the_path(tmp_path, no_system_ffmpeg):
    """A checkout after `make`: vqclip only in .venv/bin (not on the PATH, no VQCLIP=), no system ffmpeg.
    Every example runs as written, with the shapes models (offline)."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "examples", repo / "examples")
    venv_bin = repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for name, module in (("vqclip", "-m vqclip"), ("python", "")):
        (venv_bin / name).write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} {module} "$@"\n')
        (venv_bin / name).chmod(0o755)
    env = {**os.environ, "VQCLIP_OFFLINE": "1"}
    env.pop("VQCLIP", None)
    shapes = ["--vqgan", "shapes_f8", "--clip", "shapes-a", "--size", "64", "--cutn", "2", "--steps", "3"]

    def example(script, *args):
        return subprocess.run(["bash", repo / "examples" / script, *args], env=env, capture_output=True, cwd=tmp_path)

    r = example("batch.sh", repo / "examples/prompts.txt", tmp_path / "out", *shapes)
    assert r.returncode == 0, r.stderr.decode()
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
    r = example("zoom.sh", "a red star", tmp_path / "z", *shapes, "--frames-every", "1")
    assert r.returncode == 0, r.stderr.decode()
    assert len(list((tmp_path / "z").glob("frame-*.png"))) == 3
    r = example("to_video.sh", "a red star", tmp_path / "v.mp4", *shapes)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == str(tmp_path / "v.mp4") and (tmp_path / "v.mp4").stat().st_size > 0
    frames = tmp_path / "in"
    frames.mkdir()
    for k, x in enumerate((8, 24)):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((x, 20, x + 24, 44), fill="red")
        image.save(frames / f"{k}.png")
    r = example("restyle.sh", frames, "a blue circle on a black background", tmp_path / "r.mp4", *shapes)
    assert r.returncode == 0, r.stderr.decode()
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "r.mp4"))[0] == 2  # one frame out per frame in
    # no .venv either: one sentence saying what to do, exit 127 (as a shell's "command not found")
    shutil.rmtree(repo / ".venv")
    r = example("batch.sh", repo / "examples/prompts.txt", tmp_path / "out2")
    assert r.returncode == 127 and b"vqclip is not installed: run make" in r.stderr, r.stderr.decode()


def test_replay_uses_the_recorded_thread_count_and_says_so(f16, tiny_clip, tmp_path, vq):
    import torch

    from vqclip.metadata import read_record

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        r = vq("a cat", *tiny_args(f16, tiny_clip), "--steps", "3", "--seed", "4", "-o", "a.png", "-q", cwd=tmp_path)
        assert r.returncode == 0, r.stderr.decode()
        assert read_record(tmp_path / "a.png")["threads"] == 2
        torch.set_num_threads(1)
        r = vq("replay", "a.png", "-o", "b.png", "--progress", "none", cwd=tmp_path)
        assert r.returncode == 0, r.stderr.decode()
        assert "Replaying with 2 CPU threads as recorded (this process had 1)" in r.stderr.decode()
        assert r.stdout.decode().strip() == "b.png"
        assert read_record(tmp_path / "b.png")["threads"] == 2  # it ran with 2
        assert torch.get_num_threads() == 1  # and gave the caller's count back
        a, b = (Image.open(tmp_path / n).convert("RGB").tobytes() for n in ("a.png", "b.png"))
        assert a == b
        # the same count: no line
        torch.set_num_threads(2)
        r = vq("replay", "a.png", "-o", "c.png", "--progress", "none", cwd=tmp_path)
        assert r.returncode == 0 and "Replaying with" not in r.stderr.decode(), r.stderr.decode()
    finally:
        torch.set_num_threads(before)


def test_default_models_without_network_point_to_the_shapes_world(tmp_path, vq):
    r = vq("a cat", "--offline", cwd=tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 3 and "is not in the cache" in err, err
    assert "No network? `make demo`, or --vqgan shapes_f8 --clip shapes-a --size 128, runs offline" in err
    # and that line does what it says, offline
    r = vq("a cat", "--vqgan", "shapes_f8", "--clip", "shapes-a", "--size", "64", "--steps", "1", "--offline", "-q")
    assert r.returncode == 0, r.stderr.decode()


# ---- vqclip models -------------------------------------------------------------------------------


def test_models_list_fits_100_columns_has_every_size_and_imports_neither_torch_nor_open_clip(tmp_path):
    code = (
        "import sys\nfrom vqclip.cli import main\n"
        "try:\n    main(['models', 'list'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = [m for m in ('torch', 'open_clip') if m in sys.modules]\n"
        "assert not heavy, f'models list imported {heavy}'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 100, "\n".join(lines)
    rows = {line.split()[0]: line.split() for line in lines[1:] if line[:1].strip()}
    assert rows["ViT-B-32/openai"][2:4] == ["~605", "MB"]
    assert rows["vqgan_imagenet_f16_1024"][2:4] == ["~958", "MB"]
    assert rows["cin_transformer"][2:4] == ["≥5.6", "GB"]
    assert rows["shapes_f8"][2:5] == ["4.5", "MB", "verified"]
    assert not [name for name, row in rows.items() if row[2] == "?"]


def test_models_list_json_says_which_sizes_are_exact(vq):
    import json

    r = vq("models", "list", "--json")
    rows = {row["name"]: row for row in map(json.loads, r.stdout.decode().splitlines())}
    assert rows["vqgan_imagenet_f16_16384"]["size"] == 980_092_370 and rows["vqgan_imagenet_f16_16384"]["size_exact"]
    assert rows["ViT-B-32/openai"]["size"] == 605_000_000 and rows["ViT-B-32/openai"]["size_exact"] is False
    assert all(row["size"] for row in rows.values())


def test_registry_hub_ids_are_open_clips():
    """`models list` reads the CLIP Hub repos from the registry so as not to import open_clip: they must be
    the ones open_clip downloads."""
    import open_clip

    from vqclip.weights.registry import list_specs

    for spec in list_specs("clip"):
        if spec.clip_tag:
            assert spec.clip_hub == open_clip.get_pretrained_cfg(spec.clip_arch, spec.clip_tag)["hf_hub"], spec.name


def test_verify_a_shipped_model_checks_its_files(vq, tmp_path, monkeypatch):
    r = vq("models", "verify", "shapes_f8")
    out = r.stdout.decode()
    assert r.returncode == 0 and "Nothing to verify" not in r.stderr.decode()
    assert out.startswith("ok       ") and "shapes_f8.ckpt" in out and "shapes_f8.yaml" in out
    # a damaged copy is reported (and not removed: it is not a download)
    from vqclip.weights import pretrained

    shipped = Path(pretrained.PRETRAINED["shapes_f8"].path).parent
    copy = tmp_path / "weights"
    shutil.copytree(shipped, copy)
    with open(copy / "shapes_f8.ckpt", "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    from dataclasses import replace

    spec = pretrained.PRETRAINED["shapes_f8"]
    moved = replace(spec, path=str(copy / "shapes_f8.ckpt"), local_config=str(copy / "shapes_f8.yaml"))
    monkeypatch.setitem(pretrained.PRETRAINED, "shapes_f8", moved)
    r = vq("models", "verify", "shapes_f8")
    assert r.returncode == 1 and f"corrupt  {copy / 'shapes_f8.ckpt'} (its sha256 differs" in r.stdout.decode()
    assert (copy / "shapes_f8.ckpt").exists()
    listed = vq("models", "list", "--json", "--kind", "vqgan").stdout.decode()
    assert '"name": "shapes_f8", "kind": "vqgan", "size": 4' in listed and '"verified": false' in listed


def test_models_download_offline(vq, isolated):
    r = vq("models", "download", "vqgan_imagenet_f16_16384", "--offline", "-q")
    assert r.returncode == 3 and "the network is off (--offline)" in r.stderr.decode(), r.stderr.decode()
    r = vq("models", "download", "ViT-B-32/openai", "--offline", "-q")
    assert r.returncode == 3 and "the network is off (--offline)" in r.stderr.decode(), r.stderr.decode()


def test_download_bar_shows_megabytes_not_bytes():
    import io

    from rich.console import Console

    from vqclip.cli.progress import Reporter
    from vqclip.events import Progress

    reporter = Reporter("bar")
    reporter.console = Console(file=io.StringIO(), force_terminal=True, width=150)
    with reporter:
        reporter(Progress("download", 12_345_678, 980_092_370, unit="byte", stage="vqgan (model.ckpt)"))
        reporter.progress.refresh()
        reporter(Progress("download", 1_200_000_000, 4_263_525_412, unit="byte", stage="sflckr (model.ckpt)"))
        reporter.progress.refresh()
    text = reporter.console.file.getvalue()
    assert "12.3/980.1 MB" in text and "1.20/4.26 GB" in text, text
    assert "12345678" not in text and "980092370" not in text


# ---- signals and pipes ---------------------------------------------------------------------------


def _long_run(f16, tiny_clip, tmp_path, *extra, stdout=subprocess.PIPE):
    import json

    cmd = [sys.executable, "-m", "vqclip", "a cat", *tiny_args(f16, tiny_clip), "--steps", "100000"]
    cmd += ["--progress", "json", "-o", str(tmp_path / "cat.png"), *extra]
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, cwd=ROOT)
    for line in proc.stderr:  # wait until a few steps are done
        if line.startswith(b"{") and json.loads(line).get("step") == 2:
            break
    return proc


def test_a_closed_frame_pipe_names_the_partial_png_on_stderr(f16, tiny_clip, tmp_path):
    proc = _long_run(f16, tiny_clip, tmp_path, "--frames", "-")
    assert proc.stdout.read(8) == b"\x89PNG\r\n\x1a\n"  # the frames stream
    proc.stdout.close()  # the reader goes away (`| head -c 8`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    partial = tmp_path / "cat.partial.png"
    assert f"The frame pipe was closed; the latest image is in {partial}." in err and partial.is_file()
    assert "Error" not in err


@pytest.mark.parametrize("command", [["a cat"], ["batch", "p.txt"]])
def test_a_missing_gpu_is_refused_before_any_model_loads(f16, tiny_clip, tmp_path, vq, monkeypatch, command):
    import torch

    import vqclip.weights.loading as loading

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for name in dir(loading):
        if name.startswith("load_") and callable(getattr(loading, name)):
            monkeypatch.setattr(loading, name, no_loading)
    (tmp_path / "p.txt").write_text("a cat\n")
    r = vq(*command, *tiny_args(f16, tiny_clip), "--device", "cuda", cwd=tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 2 and "--device cuda was asked for, but no CUDA device is available." in err, err
    assert "Loading models" not in err and "a model was loaded" not in err


def test_skip_existing_prints_the_skipped_paths_like_done_ones(f16, tiny_clip, tmp_path, vq):
    (tmp_path / "p.txt").write_text("a cat\na dog\n")
    args = ["batch", "p.txt", *tiny_args(f16, tiny_clip), "--steps", "2", "--outdir", "out", "--skip-existing"]
    first = vq(*args, "--progress", "none", cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    paths = first.stdout.decode().splitlines()
    assert len(paths) == 2 and all((tmp_path / p).is_file() for p in paths)
    (tmp_path / paths[1]).unlink()
    again = vq(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()
    assert sorted(again.stdout.decode().splitlines()) == sorted(paths)  # the skipped one and the redone one
    assert f"Line 1: skipped, {paths[0]} is already there." in again.stderr.decode()
    quiet = vq(*args, "-q", cwd=tmp_path)
    assert sorted(quiet.stdout.decode().splitlines()) == sorted(paths) and quiet.stderr == b""


def test_generate_help_has_examples_that_parse(vq):
    import shlex

    from vqclip.cli.generate import GENERATE_EXAMPLES, generate

    r = vq("generate", "--help")
    assert r.returncode == 0 and "Examples:" in r.stdout.decode()
    examples = [line.split("#")[0].strip() for line in GENERATE_EXAMPLES.splitlines() if "vqclip " in line]
    assert len(examples) == 5 and all(e in r.stdout.decode() for e in examples)
    for example in examples:
        generate.make_context("generate", shlex.split(example)[1:])  # every option exists and its value parses


def test_bench_with_random_weights_prints_no_open_clip_warning(tmp_path):
    args = ["bench", "--vqgan", "shapes_f8", "--clip", "RN50", "--size", "64", "--cutn", "2", "--steps", "1"]
    args += ["--random-weights", "--no-isolate", "--json", "--threads", "1"]
    r = subprocess.run([sys.executable, "-m", "vqclip", *args], capture_output=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert b"WARNING" not in r.stderr and b"No pretrained weights" not in r.stderr, r.stderr.decode()
    assert b'"weights": "random"' in r.stdout


def test_the_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    """The two Python blocks of README.md's "Python" section, run in order with the shapes world's models
    (offline, small) in place of the default ones; nothing else is changed."""
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2
    code = "\n".join(blocks)
    for old, new in [
        ("size=(384, 384), steps=200", 'size=(64, 64), steps=2, cutn=2, vqgan="shapes_f8", clip=("shapes-a",)'),
        ('vqclip.load_vqgan("vqgan_imagenet_f16_16384")', 'vqclip.load_vqgan("shapes_f8")'),
    ]:
        assert old in code, old
        code = code.replace(old, new)
    assert "cfg.upscale =" not in code  # configs are frozen: the README says replace(cfg, upscale=4)
    code = "import torch\nx = torch.rand(1, 3, 64, 64) * 2 - 1  # the README's image x\n" + code
    code += "\nassert replace(cfg, upscale=4).upscale == 4\nassert x_rec.shape == x.shape\n"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VQCLIP_OFFLINE", "1")
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a fox.png", "a lynx.png", "lighthouse.png"]


def test_shell_completion_works_as_the_readme_says(tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert 'eval "$(_VQCLIP_COMPLETE=bash_source vqclip)"' in readme
    env = {**os.environ, "_VQCLIP_COMPLETE": "bash_source"}
    r = subprocess.run([sys.executable, "-m", "vqclip"], capture_output=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and b"_vqclip_completion()" in r.stdout, r.stderr.decode()
    env = {**os.environ, "_VQCLIP_COMPLETE": "bash_complete", "COMP_WORDS": "vqclip models l", "COMP_CWORD": "2"}
    r = subprocess.run([sys.executable, "-m", "vqclip"], capture_output=True, env=env, cwd=ROOT, timeout=60)
    assert r.stdout.decode().split() == ["plain,list"], r.stdout.decode()


def test_the_project_builds_without_setuptools_warnings(tmp_path):
    """What `pip install -e .` runs (setuptools' editable build, here without pip or an install): the
    pyproject must not make setuptools warn (a license table, a flat-layout editable finder)."""
    pytest.importorskip("setuptools")
    code = f"from setuptools import build_meta\nbuild_meta.build_editable({str(tmp_path)!r})\n"
    r = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, cwd=ROOT, timeout=300)
    output = (r.stdout + r.stderr).decode()
    assert r.returncode == 0, output
    assert "Warning" not in output and "deprecated" not in output, output
