"""`vqclip restyle`: a video restyled frame by frame, each frame the init image of a short CLIP-guided run,
coherent from frame to frame.

Coherence (against the flicker of independent per-frame runs, nerdyrodent's `video_styler.sh`): frame k > 0
starts from the previous frame's result moved towards frame k's own codes, z0 = lerp(z_prev, codes_k, blend)
(pixray's `animation_alpha`), while --init-weight pulls towards codes_k, so the picture follows the input;
an optional EMA over the results' latents (--smooth, rkhamilton's `z_smoother`) evens them out further. One
seed for the whole video, each frame's generator derived from it and the frame's number.

Like a batch, the models load once, each frame is written as it is done (a PNG with its record), a signal
keeps the frames done and names their folder, and --skip-existing resumes from the frames on disk: the
latent of the last finished frame is kept beside them (STATE), so a resumed run gives the same frames as
an uninterrupted one.
"""

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vqclip.errors import Interrupted, OutputError, UsageError
from vqclip.events import Progress, ProgressFn, ignore
from vqclip.prompts import parse_story, phase_at

DEFAULT_STEPS = 40  # per frame after the first: each starts from a picture close to its result (a still takes 300)
FIRST_STEPS_FACTOR = 3  # the first frame has no previous result to start from: 3x the steps by default
DEFAULT_BLEND = 0.3  # each start 30 % of the way from the previous result to the new frame's codes
DEFAULT_LR = 0.2  # twice a still's: each frame's run is short (the shapes world: benchmarks/RESULTS.md, issue 27)
DEFAULT_INIT_WEIGHT = 0.0  # the pull towards the frame's own codes (the blend already moves each start there)
STATE = ".restyle-state.npz"  # beside the frames: the last finished frame's latent, for --skip-existing


@dataclass(frozen=True)
class Coherence:
    """How frames hang together (recorded in every frame)."""

    blend: float = DEFAULT_BLEND  # 0: start from the previous result; 1: from the frame alone (independent)
    smooth: float = 0.0  # EMA of the results' latents: z = smooth * z_prev + (1 - smooth) * z (0 = off)
    first_steps: int | None = None  # steps of the first frame (None: FIRST_STEPS_FACTOR x --steps)

    def __post_init__(self):
        if self.first_steps is not None and self.first_steps < 1:
            raise UsageError(f"--first-steps must be at least 1, not {self.first_steps}.")
        if not 0 <= self.blend <= 1:
            raise UsageError(f"--blend must be between 0 and 1, not {self.blend}.")
        if not 0 <= self.smooth < 1:
            raise UsageError(f"--smooth must be at least 0 and below 1, not {self.smooth}.")


@dataclass(frozen=True)
class RestyleOutputs:
    """Where a restyle's frames go."""

    folder: Path | None = None  # the frames as frame-00001.png, ... (--frames DIR, or the video's work folder)
    stream: object = None  # --frames -: a binary stream for the PNGs
    video: Path | None = None  # --video: encoded from the folder's frames once all are done
    fps: float | None = None  # the video's rate (default: the input's, else vqclip.video_io.DEFAULT_FPS)
    work_folder: bool = False  # the folder is the video's alone: removed once the video is written
    skip_existing: bool = False  # resume from the frames in the folder
    overwrite: bool = False  # replace an earlier run's frames in the folder, and an existing video
    command: str = ""  # the command, for the records and the video's metadata


@dataclass
class Restyled:
    """What a restyle made."""

    frames: int  # frames written by this run
    skipped: int  # frames found done on disk (--skip-existing)
    folder: Path | None
    video: Path | None
    seconds: float


def work_folder(video: Path) -> Path:
    """Where the frames of a --video without --frames DIR are kept until the video is written."""
    return video.with_name(video.name + ".frames")


def frame_path(folder: Path, k: int) -> Path:
    """The k-th frame (0-based) in a folder, named as zoom and story frames are."""
    return folder / f"frame-{k + 1:05d}.png"


def frame_seed(seed: int, k: int) -> int:
    """Frame k's generator seed, from the video's seed (as a batch derives a line's seed)."""
    from vqclip.pipeline.batch import derive_seed

    return derive_seed(seed, k + 1)


# ---- before any model loads --------------------------------------------------------------------


def check_story_frames(cfg, frames: int) -> None:
    """Story phases ('^') change across the frames: every phase gets at least one frame."""
    n, every = len(parse_story(cfg.prompt)), cfg.change_prompt_every
    if n > 1 and not every and n > frames:
        raise UsageError(f"The story has {n} phases but the input only {frames} frames.")
    if n > 1 and every and (n - 1) * every >= frames:
        raise UsageError(
            f"With --change-prompt-every {every} (frames), the last phase would start at frame "
            f"{(n - 1) * every + 1}, after the last of the {frames} frames."
        )


def run_key(cfg, coherence: Coherence, source) -> str:
    """What decides a restyle's frames, as a digest: the settings, the coherence, the input. A folder's frames
    are resumed only by a run with the same key."""
    what = {
        "config": cfg.to_dict(),
        "coherence": [coherence.blend, coherence.smooth, coherence.first_steps],
        "source": [source.kind, source.count, source.sha256 or [str(p) for p in source.files]],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def read_state(folder: Path) -> tuple[str, int, np.ndarray] | None:
    """(key, frames done, latent of the last one) kept beside a folder's frames, or None."""
    try:
        with np.load(folder / STATE, allow_pickle=False) as data:
            return str(data["key"]), int(data["done"]), np.array(data["z"])
    except (OSError, ValueError, KeyError, EOFError):
        return None


def write_state(folder: Path, key: str, done: int, z) -> None:
    """Replace the state atomically: a signal mid-write leaves the previous one."""
    tmp = folder / f".restyle-state-{os.getpid()}.tmp.npz"
    np.savez(tmp, key=np.array(key), done=np.int64(done), z=z.detach().float().cpu().numpy())
    os.replace(tmp, folder / STATE)


def _ours(path: Path, key: str) -> bool:
    from vqclip.metadata import read_record

    try:
        return (read_record(path).get("restyle") or {}).get("run") == key
    except UsageError:
        return False


def resume_point(out: RestyleOutputs, key: str) -> int:
    """How many frames are done already: with --skip-existing, those the folder holds for this same run (its
    state and every frame up to it); 0 for an empty folder. A folder with frames is refused unless the run
    resumes them or --overwrite replaces them."""
    from vqclip.output import existing_frames

    folder = out.folder
    if folder is None:
        if out.skip_existing:
            raise UsageError("--skip-existing resumes from frames on disk: give --frames DIR or --video OUT.mp4.")
        return 0
    frames = existing_frames(folder) if folder.is_dir() else []
    if not frames or (out.overwrite and not out.skip_existing):
        return 0
    if not out.skip_existing:
        raise UsageError(
            f"{folder} already holds frames ({frames[0].name}, ...).",
            "Add --skip-existing to resume that restyle, --overwrite to start over, or choose another folder.",
        )
    state = read_state(folder)
    if state is None or state[0] != key:
        if out.overwrite:
            return 0
        raise UsageError(
            f"{folder} holds frames of another restyle (another input or other settings) or of another command.",
            "Resume with the same command, or add --overwrite to start over, or choose another folder.",
        )
    done = state[1]
    if all(_ours(frame_path(folder, k), key) for k in range(done)):
        return done
    return 0  # a finished frame went missing: its successors cannot be had without it


# ---- the run -------------------------------------------------------------------------------------


def fitted_size(request, source, models) -> tuple[int, int]:
    """--size, or the input's aspect ratio with its longer side at most the device's default size."""
    from vqclip.pipeline.prepare import base_size, default_size

    if request.cfg.size is not None:
        return request.cfg.size
    return base_size(source.size, max(default_size(models.device.type)), models.vqgan.factor)


def frame_job(job, phase: int):
    """The job of a frame in story phase `phase`: that phase's prompts alone, for all of its steps."""
    if len(job.request.story) <= 1:
        return job
    request = replace(job.request, story=(job.request.story[phase],))
    return replace(job, request=request, texts=tuple((per_clip[phase],) for per_clip in job.texts))


def encode_frame(models, image, size: tuple[int, int]):
    """A frame's own codes at the canvas size (the init image's path: fitted, then encode_codes)."""
    import torch

    from vqclip.images import fit, to_tensor

    pixels = to_tensor(fit(image, *size)).to(models.device)
    with torch.no_grad(), torch.autocast(models.device.type, enabled=False):
        return models.vqgan.encode_codes(pixels * 2 - 1).float()


def restyle(
    request,
    source,
    coherence: Coherence,
    out: RestyleOutputs,
    models,
    *,
    start: int = 0,
    progress: ProgressFn = ignore,
    on_frame: Callable[[int, Path | None], None] = lambda k, path: None,
    say: Callable[[str], None] = lambda text: None,
) -> Restyled:
    """Restyle every frame of `source` from frame `start` on (frames before it are on disk: resume_point),
    write each as it is done, then the video. A signal raises Interrupted naming the folder of the frames done.
    """
    import torch

    from vqclip.pipeline.guided import optimise
    from vqclip.pipeline.prepare import prepare

    began = time.perf_counter()
    key = run_key(request.cfg, coherence, source)  # as resume_point saw it: --size as given
    # 1. Fit the run to the models and the input: the size, the prompts encoded once, the memory plan.
    request = replace(request, cfg=replace(request.cfg, size=fitted_size(request, source, models)))
    job = prepare(request, models)
    cfg = job.cfg
    for note in job.notes:
        say(note.replace(" steps on ", " steps a frame on ").replace(" step on ", " step a frame on "))
    n, n_phases = source.count, max(1, len(request.story))
    if out.folder is not None:
        out.folder.mkdir(parents=True, exist_ok=True)
    # 2. Where a resumed run goes on from: the last finished frame's latent.
    prev = None
    if start:
        prev = torch.from_numpy(read_state(out.folder)[2]).to(models.device)
        if tuple(prev.shape[-2:]) != (cfg.size[1] // models.vqgan.factor, cfg.size[0] // models.vqgan.factor):
            raise UsageError(f"The frames in {out.folder} were made at another size; add --overwrite to start over.")
        say(f"Resuming after frame {start} of {n} ({out.folder}).")
    done = start
    try:
        # 3. Frame by frame: start near the previous result, pull towards this frame, optimise, write.
        for k, (image, what) in enumerate(source.frames(start), start=start):
            progress(Progress("restyle", k, n, unit="frame", stage=source.label))
            t0 = time.perf_counter()
            codes = encode_frame(models, image, cfg.size)
            z0 = codes if prev is None else torch.lerp(prev, codes, coherence.blend)
            phase = phase_at(k, n_phases, n, cfg.change_prompt_every)
            fjob = frame_job(job, phase)
            steps = (coherence.first_steps or FIRST_STEPS_FACTOR * cfg.steps) if k == 0 else cfg.steps
            fcfg = replace(cfg, seed=frame_seed(cfg.seed, k), change_prompt_every=0, steps=steps)
            stage = f"frame {k + 1}/{n}"
            res = optimise(fjob, models, fcfg, job.plan, z0, stage=stage, progress=progress, anchor=codes)
            z = res.z if prev is None or not coherence.smooth else torch.lerp(res.z, prev, coherence.smooth)
            path = _write_frame(fjob, models, z, res, k, n, what, coherence, out, key, time.perf_counter() - t0)
            prev, done = z, k + 1
            if out.folder is not None:  # after the frame: a resumed run goes on from here
                write_state(out.folder, key, done, z)
            on_frame(k, path)
        progress(Progress("restyle", n, n, unit="frame", stage=source.label))
    except (KeyboardInterrupt, Interrupted) as err:
        name, code = (err.signal_name, err.exit_code) if isinstance(err, Interrupted) else ("Ctrl-C", 130)
        stopped = Interrupted(name, code, out.folder if done else None)
        where = f"; the finished frames are in {out.folder} (resume with --skip-existing)" if out.folder else ""
        stopped.message = f"Interrupted ({name}) after {done} of {n} frames{where}."
        raise stopped from None
    # 4. The video, from the frames on disk (the resumed ones too), with the input's rate and audio.
    video = _video(source, out, n, say) if out.video is not None else None
    return Restyled(done - start, start, out.folder, video, time.perf_counter() - began)


def _write_frame(job, models, z, res, k: int, n: int, what: str, coherence: Coherence, out, key: str, seconds):
    """A finished frame as a PNG with its record (source frame, seeds, coherence, the command), in the folder
    and/or on the stream."""
    from vqclip.metadata import parameters, record
    from vqclip.output import png_info, save_png
    from vqclip.pipeline.run import make_result

    result = make_result(job, models, z, res.loss, res.steps_done, seconds, tracker=res.tracker)
    info = {
        "run": key,
        "frame": k + 1,
        "frames": n,
        "source": what,
        "seed": job.cfg.seed,
        "frame_seed": frame_seed(job.cfg.seed, k),
        "blend": coherence.blend,
        "smooth": coherence.smooth,
        "steps": res.steps_done,
        "command": out.command,
    }
    text = parameters(result) + f", Restyle: frame {k + 1} of {n} ({what}), blend {coherence.blend}"
    text += f", smooth {coherence.smooth}" if coherence.smooth else ""
    png = png_info(text, {**record(result), "restyle": info})
    path = None
    if out.folder is not None:
        path = save_png(result.image, frame_path(out.folder, k), png, overwrite=True)
    if out.stream is not None:
        result.image.save(out.stream, format="PNG", pnginfo=png)
        out.stream.flush()
    return path


def _video(source, out: RestyleOutputs, n: int, say) -> Path:
    """Encode the folder's frames; the input's audio is copied (re-encoded as AAC only where the container
    cannot hold it as it is). The video's work folder goes once the video is written."""
    from vqclip.video_io import DEFAULT_FPS, write_video

    frames = [frame_path(out.folder, k) for k in range(n)]
    fps = out.fps or source.fps or DEFAULT_FPS
    audio = source.path if source.audio else None
    common = {"comment": out.command, "overwrite": out.overwrite}
    try:
        video = write_video(frames, out.video, fps, audio_from=audio, **common)
    except OutputError:
        if audio is None:
            raise
        say(f"The input's audio ({source.audio}) cannot be copied into {out.video.suffix}; it is re-encoded as AAC.")
        video = write_video(frames, out.video, fps, audio_from=audio, audio_codec="aac", **common)
    if out.work_folder:
        for path in frames:
            path.unlink(missing_ok=True)
        (out.folder / STATE).unlink(missing_ok=True)
        try:
            out.folder.rmdir()
        except OSError:  # something else was put there: kept
            pass
    return video
