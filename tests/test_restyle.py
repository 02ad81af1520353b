"""`vqclip restyle` (issue 27): each kind of input (a video file, a folder, a glob) in-process with the shapes
models; the video keeps the input's rate and audio with no ffmpeg on the PATH; a run stopped by SIGTERM keeps
its frames and resumes to the same pixels; bad input is exit 2 before any model loads; and the coherence
(each frame starting near the previous result) flickers less than independent per-frame runs."""

import json
import os
import signal
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqclip.shapes.video import moving_shape, relative_flicker

SHAPES = ["--vqgan", "shapes_f8", "--clip", "shapes-a", "--size", "32", "--steps", "2", "--cutn", "2"]
SHAPES += ["--precision", "fp32", "--device", "cpu", "--seed", "3"]


def _frames(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("frame-*.png"))]


def _record(path: Path) -> dict:
    return json.loads(Image.open(path).text["vqclip"])


def _wav(path: Path, seconds: float = 0.5, rate: int = 8000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def _video(path: Path, frames: list, fps: int = 12, audio: Path | None = None) -> Path:
    import imageio_ffmpeg

    size = frames[0].size
    extra = {"audio_path": str(audio), "audio_codec": "aac"} if audio else {}
    writer = imageio_ffmpeg.write_frames(str(path), size, fps=fps, macro_block_size=8, **extra)
    writer.send(None)
    for frame in frames:
        writer.send(np.asarray(frame.convert("RGB")).tobytes())
    writer.close()
    return path


@pytest.fixture
def no_ffmpeg_on_path(tmp_path, monkeypatch):
    """A PATH without any ffmpeg (and no IMAGEIO_FFMPEG_EXE): only imageio-ffmpeg's own binary is left."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("IMAGEIO_FFMPEG_EXE", raising=False)
    import shutil

    assert shutil.which("ffmpeg") is None


def test_a_video_file_becomes_a_video_with_its_rate_and_audio_without_ffmpeg_on_the_path(
    tmp_path, vq, no_ffmpeg_on_path
):
    import imageio_ffmpeg

    from vqclip.video_io import video_comment

    src = _video(tmp_path / "in.mp4", moving_shape(4, 32), fps=12, audio=_wav(tmp_path / "a.wav"))
    out = tmp_path / "out.mp4"
    result = vq("restyle", src, "a blue circle on a black background", *SHAPES, "--video", out)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == [str(out)]
    assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == 4
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    reader.close()
    assert meta["fps"] == 12 and tuple(meta["size"]) == (32, 32)
    assert meta.get("audio_codec") == "aac"  # copied from the input
    comment = video_comment(out)
    assert comment.startswith(f"vqclip restyle {src} ") and "--seed 3" in comment and "--steps 2" in comment
    assert not (tmp_path / "out.mp4.frames").exists()  # the work folder goes once the video is written


def test_a_folder_and_a_glob_give_the_same_frames_in_natural_order(tmp_path, vq):
    folder = tmp_path / "shots"
    folder.mkdir()
    frames = moving_shape(3, 32)
    names = ["f-1.png", "f-2.png", "f-10.png"]  # natural order: 1, 2, 10 (not 1, 10, 2)
    for name, frame in zip(names, frames, strict=True):
        frame.save(folder / name)
    (folder / "notes.txt").write_text("not a frame")
    a = vq("restyle", folder, "a blue circle on a black background", *SHAPES, "--frames", tmp_path / "a")
    assert a.returncode == 0, a.stderr.decode()
    assert a.stdout.decode().split() == [str(tmp_path / "a")]
    b = vq("restyle", str(folder / "f-*.png"), "a blue circle on a black background", *SHAPES, "--frames", "-")
    assert b.returncode == 0, b.stderr.decode()
    streamed = b.stdout.split(b"\x89PNG\r\n\x1a\n")[1:]
    assert len(streamed) == 3
    import io

    for k, (png, done) in enumerate(zip(streamed, _frames(tmp_path / "a"), strict=True)):
        image = Image.open(io.BytesIO(b"\x89PNG\r\n\x1a\n" + png))
        assert np.array_equal(np.asarray(image.convert("RGB")), done)  # the same input, the same pixels
        restyle = json.loads(image.text["vqclip"])["restyle"]
        assert restyle["source"] == str((folder / names[k]).resolve()) and restyle["frame"] == k + 1
        assert restyle["seed"] == 3 and restyle["blend"] == 0.3
    record = _record(tmp_path / "a" / "frame-00002.png")
    assert record["restyle"]["frame_seed"] != record["restyle"]["seed"]  # derived per frame
    replay = vq("replay", tmp_path / "a" / "frame-00002.png")
    assert replay.returncode == 2 and b"is a frame of `vqclip restyle`" in replay.stderr


def test_resume_after_sigterm_gives_the_same_frames_as_an_uninterrupted_run(tmp_path, vq, monkeypatch):
    import vqclip.pipeline.restyle as restyle

    src = _video(tmp_path / "in.mp4", moving_shape(4, 32))
    args = ["restyle", src, "a blue circle on a black background", *SHAPES, "--smooth", "0.3"]
    whole = vq(*args, "--frames", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr.decode()
    write_state = restyle.write_state

    def stop_after_two(folder, key, done, z):
        write_state(folder, key, done, z)
        if done == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the CLI's handler raises in this thread

    monkeypatch.setattr(restyle, "write_state", stop_after_two)
    stopped = vq(*args, "--frames", tmp_path / "cut")
    err = stopped.stderr.decode()
    assert stopped.returncode == 143, err
    assert f"Interrupted (SIGTERM) after 2 of 4 frames; the finished frames are in {tmp_path / 'cut'}" in err
    assert stopped.stdout.decode().split() == [str(tmp_path / "cut")]
    assert len(_frames(tmp_path / "cut")) == 2
    monkeypatch.setattr(restyle, "write_state", write_state)
    again = vq(*args, "--frames", tmp_path / "cut")
    assert again.returncode == 2 and b"--skip-existing" in again.stderr  # never over another run's frames
    resumed = vq(*args, "--frames", tmp_path / "cut", "--skip-existing")
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert "Resuming after frame 2 of 4" in resumed.stderr.decode()
    for a, b in zip(_frames(tmp_path / "whole"), _frames(tmp_path / "cut"), strict=True):
        assert np.array_equal(a, b)
    other = vq(*args[:-2], "--smooth", "0.5", "--frames", tmp_path / "cut", "--skip-existing")
    assert other.returncode == 2 and b"another restyle" in other.stderr


def _bad_inputs(tmp: Path) -> dict:
    (tmp / "empty").mkdir()
    (tmp / "broken").mkdir()
    (tmp / "broken" / "frame-1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp / "text.mp4").write_text("not a video")
    return {
        "missing": (tmp / "nowhere.mp4", "does not exist"),
        "empty folder": (tmp / "empty", "has no frames"),
        "glob": (str(tmp / "nothing-*.png"), "matches no files"),
        "unreadable frame": (tmp / "broken", "is not an image that can be read"),
        "unreadable video": (tmp / "text.mp4", "is not a video ffmpeg can read"),
    }


@pytest.mark.parametrize("case", ["missing", "empty folder", "glob", "unreadable frame", "unreadable video"])
def test_bad_input_is_one_sentence_and_exit_2_before_any_model_loads(case, tmp_path, vq):
    path, message = _bad_inputs(tmp_path)[case]
    result = vq("restyle", path, "a blue circle", *SHAPES, "--frames", tmp_path / "out")
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert message in err.replace("\n", " ")
    assert "Loading models" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_zero_frame_video_is_exit_2(tmp_path, vq):
    import subprocess

    import imageio_ffmpeg

    audio_only = tmp_path / "audio.m4a"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(_wav(tmp_path / "a.wav")), str(audio_only)]
    subprocess.run(cmd, check=True)
    result = vq("restyle", audio_only, "a blue circle", *SHAPES, "--frames", tmp_path / "out")
    assert result.returncode == 2 and b"Loading models" not in result.stderr
    assert b"no frames" in result.stderr or b"not a video ffmpeg can read" in result.stderr


def test_starting_from_the_previous_result_flickers_less_than_independent_frames(tmp_path, vq):
    """Relative flicker (the output's mean absolute difference between consecutive frames over the input's)
    of the default coherence against --blend 1 (each frame from its own codes, nerdyrodent's way), 6 frames
    of a moving red circle at 32 px, 6 steps per frame (the first 18), 4 cutouts, over 3 seeds. The default's
    over the independent runs' must be below 0.8 in every seed. Measured on kind C (one thread), restyle's
    defaults (--blend 0.3, lr 0.2): 0.22, 0.41, 0.36 natively, 0.22, 0.35, 0.36 with AVX2 kernels (at --blend
    0.5 and lr 0.1: 0.45, 0.44, 0.48); with every start taken from the frame alone (the blend broken on
    purpose) the two are equal, 1.0."""
    src = tmp_path / "in"
    src.mkdir()
    source = moving_shape(6, 32)
    for k, frame in enumerate(source):
        frame.save(src / f"{k:02d}.png")
    shapes = ["--vqgan", "shapes_f8", "--clip", "shapes-a", "--size", "32", "--steps", "6", "--cutn", "4"]
    shapes += ["--precision", "fp32", "--device", "cpu"]
    ratios = []
    for seed in ("0", "1", "2"):
        flicker = {}
        for name, extra in (("default", []), ("independent", ["--blend", "1"])):
            out = tmp_path / f"{name}-{seed}"
            result = vq(
                "restyle", src, "a blue circle on a black background", *shapes, "--seed", seed, "--frames", out, *extra
            )
            assert result.returncode == 0, (result.returncode, result.stderr.decode(), result.stdout[-300:])
            frames = [Image.open(p) for p in sorted(out.glob("frame-*.png"))]
            flicker[name] = relative_flicker(frames, source)
        ratios.append(flicker["default"] / flicker["independent"])
    print("score restyle_flicker", [round(r, 3) for r in ratios])
    assert max(ratios) < 0.8, ratios
