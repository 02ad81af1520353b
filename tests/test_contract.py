"""The command line's contract: bad input is refused before any model loads, and nothing finished is lost
(signals are in test_generate and test_batch, where a real process is the point)."""

import json
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import replace

import pytest
import torch
from PIL import Image

from tests.conftest import tiny_args
from vqclip.config import GenerationConfig


@pytest.fixture(scope="module")
def f16(fixtures):
    return str(fixtures / "vqgan_tiny_f16.ckpt")


def _png_header_only(path, width, height):
    """A PNG that declares width x height pixels and holds almost nothing (an image bomb)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "nan"], "--lr must be a finite number"),
        (["--lr", "inf"], "--lr must be a finite number"),
        (["--cut-pow", "nan"], "--cut-pow must be a finite number"),
        (["--init-weight", "nan"], "--init-weight must be a finite number"),
        (["--noise-fac", "inf"], "--noise-fac must be a finite number"),
        (["--zoom", "nan"], "--zoom must be a finite number"),
        (["--shift", "nan,0"], "--shift must be a finite number"),
        (["--init-image", "BOMB"], "has more than 64 megapixels"),
        (["--image-prompt", "BOMB:0.5"], "has more than 64 megapixels"),
        (["--init-image", "TEXT"], "is not an image that can be read"),
        (["--transformer", "cin_transformer", "--vqgan", "vqgan_gumbel_f8_8192"], "brings its own VQGAN"),
        (["--noise-prompt", "99999999999999999999999"], "a seed below 2**63"),
        (["--frames", "FRAMES"], "already holds frames (frame-00001.png, ...) from another run"),
        (["--frames", "TEXT"], "is a file, not a folder"),
        (["-p", "a ^ b ^ c", "--steps", "2"], "The story has 3 phases but only 2 steps"),
        (
            ["-p", "a ^ b", "--steps", "4", "--change-prompt-every", "100"],
            "the last phase ('b') would start at step 101",
        ),
    ],
)
def test_bad_values_are_exit_2_before_any_model_loads(tmp_path, vq, args, message):
    _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "frame-00001.png").write_text("an earlier run's frame")
    paths = {"BOMB": "bomb.png", "TEXT": "notes.png", "FRAMES": "frames"}
    args = [str(tmp_path / paths[a]) if a in paths else a.replace("BOMB", str(tmp_path / "bomb.png")) for a in args]
    prompt = [] if "-p" in args else ["a cat"]
    # --offline and no weights in the cache: anything that got as far as loading would be exit 3
    r = vq(*prompt, *args, "--offline", cwd=tmp_path)
    assert r.returncode == 2, r.stderr.decode()
    assert message in r.stderr.decode() and "Traceback" not in r.stderr.decode()


@pytest.mark.parametrize("prompt", ["|||", "^^^", ":1", ":0.5", " | ^ "])
def test_a_prompt_of_only_separators_is_exit_2(tmp_path, vq, prompt):
    r = vq(prompt, "--offline", cwd=tmp_path)
    assert r.returncode == 2 and "has no text" in r.stderr.decode(), r.stderr.decode()


def test_a_prompt_that_is_not_utf8_is_exit_2_before_loading(tmp_path):
    # bytes the shell could not decode reach Python as surrogates; they cannot go into the PNG
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONUTF8": "1"}
    code = "import sys; from vqclip.cli import main; sys.argv[1:] = [b'caf\\xe9'.decode('utf-8', 'surrogateescape'), '--offline']; main()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr.decode()
    assert b"not UTF-8 text" in r.stderr and not list(tmp_path.iterdir())


def test_a_failed_write_keeps_the_image_in_the_fallback_folder(f16, tiny_clip, tmp_path, vq, monkeypatch):
    import vqclip.output
    import vqclip.pipeline.write

    real = vqclip.output.save_png
    monkeypatch.setattr(vqclip.pipeline.write, "fallback_dir", lambda: tmp_path / "rescued")

    def full_disk(image, path, *args, **kwargs):
        if "out" in str(path):
            raise OSError(28, "No space left on device")
        return real(image, path, *args, **kwargs)

    monkeypatch.setattr(vqclip.pipeline.write, "save_png", full_disk)
    (tmp_path / "out").mkdir()
    r = vq("a cat", *tiny_args(f16, tiny_clip), "--steps", "2", "-o", tmp_path / "out" / "cat.png", "-q")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "No space left on device" in err and str(tmp_path / "rescued" / "cat.png") in err
    with Image.open(tmp_path / "rescued" / "cat.png") as im:
        assert json.loads(im.text["vqclip"])["steps_done"] == 2
    assert r.stdout.decode().strip() == str(tmp_path / "rescued" / "cat.png")


def test_frames_into_a_full_device_never_cost_the_png(f16, tiny_clip, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    args = [*tiny_args(f16, tiny_clip), "--steps", "3", "--frames", "-", "-o", str(tmp_path / "cat.png"), "-q"]
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "vqclip", "a cat", *args], stdout=full, stderr=subprocess.PIPE)
    assert r.returncode == 1 and b"Writing the frames failed" in r.stderr, r.stderr.decode()
    with Image.open(tmp_path / "cat.png") as im:
        assert json.loads(im.text["vqclip"])["complete"] is True


def test_output_files_follow_the_umask(f16, tiny_clip, tmp_path, vq, ffmpeg):
    """The PNG and the video get the user's umask, as any file the user makes (their temporary files start as
    mkstemp's 0600: a video written through one was left 0600)."""
    old = os.umask(0o002)
    try:
        args = (*tiny_args(f16, tiny_clip), "--steps", "2", "--frames-every", "1", "--video", tmp_path / "cat.mp4")
        r = vq("a cat", *args, "-o", tmp_path / "cat.png", "-q")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "cat.png").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "cat.mp4").stat().st_mode & 0o777 == 0o664


def test_temporary_files_of_a_killed_writer_are_removed(tmp_path):
    from vqclip.output import save_png

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".vqclip-{dead.stdout.strip()}-abc123.png"
    stale.write_bytes(b"half a png")
    save_png(Image.new("RGB", (8, 8)), tmp_path / "new.png")
    assert not stale.exists() and (tmp_path / "new.png").exists()


@pytest.fixture
def cat(f16, tiny_clip):
    """A 50-step run's settings and its models, for the tests that interrupt it."""
    from vqclip.pipeline.load import load_models

    cfg = GenerationConfig("a cat", vqgan=f16, clip=(tiny_clip,), size=(64, 64), steps=50, cutn=2, seed=9)
    return cfg, load_models(cfg)


def render_to(cfg, models, out, ctrl_c_at=None):
    """Render `cfg` into `out` (OutputOptions); with `ctrl_c_at`, Ctrl-C at that step and return the error."""
    from vqclip.errors import Interrupted
    from vqclip.pipeline.prepare import prepare
    from vqclip.pipeline.validate import validate
    from vqclip.pipeline.write import write

    def progress(event):
        if event.done == ctrl_c_at:
            raise KeyboardInterrupt

    if ctrl_c_at is None:
        return write(prepare(validate(cfg), models), models, out)
    with pytest.raises(Interrupted) as err:
        write(prepare(validate(cfg), models), models, out, progress=progress)
    return err.value


def test_an_interrupted_image_replays_to_the_same_pixels(cat, tmp_path, vq):
    from vqclip.output import OutputOptions

    error = render_to(*cat, OutputOptions(tmp_path / "cat.png"), ctrl_c_at=3)
    partial = error.saved
    assert partial == tmp_path / "cat.partial.png" and error.exit_code == 130
    with Image.open(partial) as im:
        assert "Steps: 3 of 50 (interrupted)" in im.text["parameters"]
        pixels = im.convert("RGB").tobytes()
    r = vq("replay", partial, "-o", tmp_path / "again.png", "-q")
    assert r.returncode == 0, r.stderr.decode()
    with Image.open(tmp_path / "again.png") as im:
        assert im.convert("RGB").tobytes() == pixels


def test_replay_names_a_changed_or_missing_input(f16, tiny_clip, tmp_path, vq):
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    r = vq(
        "a cat",
        *tiny_args(f16, tiny_clip),
        "--steps",
        "1",
        "--init-image",
        tmp_path / "red.png",
        "-o",
        tmp_path / "c.png",
    )
    assert r.returncode == 0, r.stderr.decode()
    Image.new("RGB", (40, 40), (20, 30, 200)).save(tmp_path / "red.png")
    changed = vq("replay", tmp_path / "c.png", "-q")
    assert changed.returncode == 2 and "has changed since" in changed.stderr.decode()
    (tmp_path / "red.png").unlink()
    missing = vq("replay", tmp_path / "c.png", "-q")
    assert missing.returncode == 2 and "no longer exists" in missing.stderr.decode()


def test_a_record_that_is_not_json_is_one_sentence(tmp_path, vq):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("vqclip", "{not json")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png", pnginfo=info)
    r = vq("replay", tmp_path / "x.png")
    assert r.returncode == 2 and "not a valid record" in r.stderr.decode()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_runs_keep_fp32_pixels_and_record_what_ran(f16, tiny_clip, precision):
    import vqclip
    from vqclip.images import to_pil
    from vqclip.metadata import record
    from vqclip.optimize import decode_image

    cfg = GenerationConfig("a cat", vqgan=f16, clip=(tiny_clip,), size=(64, 64), steps=2, cutn=2, seed=1)
    result = vqclip.generate(replace(cfg, precision=precision))
    vqgan = vqclip.load_vqgan(f16)
    vqgan.use_channels_last()  # the layout a run decodes in (a layout, not a precision)
    fp32 = to_pil(decode_image(vqgan, result.latent))
    assert result.image.tobytes() == fp32.tobytes()  # the final PNG is the fp32 decode of the latent
    meta = record(result)
    assert meta["precision"] == precision and meta["device"] == "cpu"  # what ran, also fp16 on a CPU


def test_a_toml_clip_entry_can_name_a_local_config_json(f16, tiny_clip, tmp_path, isolated, vq):
    config, weights = tiny_clip.rsplit(":", 1)
    (isolated / "config.toml").write_text(f'[models.my-clip]\nkind = "clip"\npath = "{weights}"\nconfig = "{config}"\n')
    args = ["--vqgan", f16, "--clip", "my-clip", "--size", "32", "--cutn", "2", "--steps", "1"]
    r = vq("a cat", *args, "-o", tmp_path / "c.png", "-q")
    assert r.returncode == 0, r.stderr.decode()
    with Image.open(tmp_path / "c.png") as im:
        assert json.loads(im.text["vqclip"])["models"]["clip"][0]["name"] == "my-clip"


def test_a_toml_vqgan_entry_with_only_a_path_uses_the_yaml_beside_it(f16, tiny_clip, tmp_path, isolated, vq):
    (isolated / "config.toml").write_text(f'[models.my-vq]\nkind = "vqgan"\npath = "{f16}"\n')
    args = ["--vqgan", "my-vq", "--clip", tiny_clip, "--size", "32", "--cutn", "2", "--steps", "1", "-q"]
    r = vq("a cat", *args, "-o", tmp_path / "c.png")
    assert r.returncode == 0, r.stderr.decode()
    alone = tmp_path / "alone.ckpt"
    alone.symlink_to(f16)  # no yaml beside this one
    (isolated / "config.toml").write_text(f'[models.my-vq]\nkind = "vqgan"\npath = "{alone}"\n')
    r = vq("a cat", *args, "-o", tmp_path / "d.png")
    assert r.returncode == 2 and "No config found beside" in r.stderr.decode(), r.stderr.decode()
    r = vq("a cat", *args, "--vqgan-config", str(f16).replace(".ckpt", ".yaml"), "-o", tmp_path / "e.png")
    assert r.returncode == 0, r.stderr.decode()


def test_validation_needs_no_torch(f16, tiny_clip):
    code = (
        "import sys; from vqclip.pipeline.validate import validate; from vqclip.config import GenerationConfig; "
        f"validate(GenerationConfig('a cat', vqgan={f16!r}, clip=({tiny_clip!r}, 'ViT-B-32/openai'))); "
        "assert 'torch' not in sys.modules, 'validation imported torch'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()


@pytest.mark.parametrize(
    "args, message",
    [
        (["a cat", "--device", "cuda"], "no CUDA device is available"),
        (["a cat", "--video", "out.mp4"], "--video needs ffmpeg"),
        (["a cat", "-p", "a dog"], "Give the prompt once"),
        (["-p", "a dog", "-s", "512", "384"], "--size takes one value, WIDTHxHEIGHT (e.g. -s 512x384)"),
    ],
)
def test_unusable_requests_fail_before_any_weights_are_read(tmp_path, vq, monkeypatch, args, message):
    import shutil

    if "--device" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no ffmpeg, whatever this machine has
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # nor imageio-ffmpeg's
    r = vq(*args, "--offline", cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr.decode(), r.stderr.decode()
    assert "not in the cache" not in r.stderr.decode()  # nothing was looked up


def test_reference_spellings_and_help_texts(f16, tiny_clip, tmp_path, vq):
    r = vq("-p", "a cat", *tiny_args(f16, tiny_clip), "--iterations", "1", "-o", tmp_path / "c.png", "-q")
    assert r.returncode == 0, r.stderr.decode()
    with Image.open(tmp_path / "c.png") as im:
        assert im.text["parameters"].startswith("a cat\nSteps: 1,")
    batch_help = vq("batch", "--help").stdout.decode()
    seed_help = " ".join(batch_help.split()).partition("--seed INTEGER")[2].partition(" --")[0]
    assert "[default: 0]" in seed_help and "random" not in seed_help, seed_help
    for command in ("replay", "upscale"):
        text = vq(command, "--help").stdout.decode()
        for option in ("--overwrite", "--quiet", "--offline"):
            line = next(x for x in text.splitlines() if option in x)
            assert len(line.split(option, 1)[1].strip()) > 3, (command, line)  # the option says what it does


def test_main_in_process_leaves_the_callers_signal_handlers_alone(vq):
    import signal

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    assert vq("--version").returncode == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


def test_files_named_like_a_runs_own_are_kept(f16, tiny_clip, tmp_path, vq, ffmpeg):
    """A preview, a partial or a video of the name a run would use, but not written by vqclip for this image,
    survives the run: the run's own go to the next free name, and the preview is removed at the end."""
    for name in ("cat.progress.png", "cat.partial.png", "v.mp4"):
        (tmp_path / name).write_text("mine")
    args = [*tiny_args(f16, tiny_clip), "--steps", "4", "--save-every", "2", "--frames-every", "1", "-o", "cat.png"]
    r = vq("a cat", *args, "--video", "v.mp4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().splitlines() == ["cat.png", "v-1.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cat.png", "v-1.mp4", "cat.progress.png", "cat.partial.png", "v.mp4"]
    )
    assert all((tmp_path / n).read_text() == "mine" for n in ("cat.progress.png", "cat.partial.png", "v.mp4"))
    assert (tmp_path / "v-1.mp4").stat().st_size > 0


def test_an_interrupted_run_keeps_a_partial_it_did_not_write(cat, tmp_path):
    from vqclip.output import OutputOptions

    cfg, models = cat
    (tmp_path / "cat.partial.png").write_text("mine")
    error = render_to(cfg, models, OutputOptions(tmp_path / "cat.png"), ctrl_c_at=2)
    assert error.saved == tmp_path / "cat.partial-1.png" and (tmp_path / "cat.partial.png").read_text() == "mine"
    # a partial that vqclip wrote for another image is kept as well
    render_to(replace(cfg, seed=10), models, OutputOptions(tmp_path / "dog.png"), ctrl_c_at=2)
    (tmp_path / "dog.partial.png").rename(tmp_path / "cat.partial.png")
    render_to(cfg, models, OutputOptions(tmp_path / "cat.png"))
    with Image.open(tmp_path / "cat.partial.png") as im:
        assert json.loads(im.text["vqclip"])["seed"] == 10


def test_a_video_is_left_only_when_finished(cat, f16, tiny_clip, tmp_path, vq, ffmpeg, monkeypatch):
    """Interrupted: no video and no temporary file. ffmpeg dying mid-run: the run and its PNG go on, and
    the error says so. A folder that does not exist yet is made."""
    from vqclip.output import OutputOptions

    cfg, models = cat
    out = OutputOptions(tmp_path / "cat.png", video=str(tmp_path / "new" / "v.mp4"))
    render_to(cfg, models, out, ctrl_c_at=3)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cat.partial.png", "new"]
    result = render_to(replace(cfg, steps=3), models, out)
    assert result.video == tmp_path / "new" / "v.mp4" and result.video.stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["v.mp4"]

    broken = tmp_path / "bin" / "ffmpeg"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\nexit 7\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", f"{broken.parent}{os.pathsep}{os.environ['PATH']}")
    args = [*tiny_args(f16, tiny_clip), "--steps", "30", "--frames-every", "1", "-o", "dog.png"]
    r = vq("a cat", *args, "--video", "d.mp4", cwd=tmp_path)
    assert r.returncode == 1 and "ffmpeg stopped with exit code 7" in r.stderr.decode(), r.stderr.decode()
    assert r.stdout.decode().strip() == "dog.png" and not (tmp_path / "d.mp4").exists()
    with Image.open(tmp_path / "dog.png") as im:
        assert json.loads(im.text["vqclip"])["complete"] is True


def test_replaying_a_partial_under_its_own_name_keeps_it(cat, tmp_path, vq):
    from vqclip.output import OutputOptions

    render_to(*cat, OutputOptions(tmp_path / "cat.png"), ctrl_c_at=2)
    r = vq("replay", tmp_path / "cat.partial.png", "-o", tmp_path / "cat.png", "-q")
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "cat.partial.png").exists() and (tmp_path / "cat.png").exists()


def test_video_is_encoded_and_its_path_printed_after_the_png(f16, tiny_clip, tmp_path, vq, ffmpeg):
    r = vq("a cat", *tiny_args(f16, tiny_clip), "--steps", "3", "--frames-every", "1", "--video", "v.mp4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    png, video = r.stdout.decode().splitlines()
    assert Image.open(png).size == (64, 64) and video == "v.mp4"
    decoded = subprocess.run(
        [ffmpeg, "-loglevel", "error", "-i", tmp_path / "v.mp4", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
    )
    assert decoded.returncode == 0 and len(decoded.stdout) == 3 * 64 * 64 * 3  # one frame per step


def test_batch_paths_go_above_the_live_bar_in_a_terminal(f16, tiny_clip, tmp_path):
    """stdout and stderr on one terminal: each output path is a line of its own, never glued to a bar."""
    import pty
    import re

    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    args = ["batch", "prompts.txt", "-d", "out", *tiny_args(f16, tiny_clip), "--steps", "4"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout and stderr are the terminal
        os.chdir(tmp_path)
        os.execv(sys.executable, [sys.executable, "-m", "vqclip", *args])
    screen = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, screen.decode(errors="replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode())  # colours and cursor moves
    pieces = [p.strip() for p in re.split(r"[\r\n]", text)]
    paths = sorted(str(p) for p in (tmp_path / "out").glob("*.png"))
    assert len(paths) == 2
    for path in paths:  # the whole path, alone on its line; a bar drawn over it would share the line
        assert any(p == path or p == os.path.relpath(path, tmp_path) for p in pieces), text
    assert "━" in text  # the bar was live
