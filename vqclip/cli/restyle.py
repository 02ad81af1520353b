"""`vqclip restyle INPUT PROMPT`: a video (a file, a folder of frames or a glob) restyled frame by frame
(the loop is vqclip.pipeline.restyle.restyle), every check done before the models load."""

import shlex
import sys
from pathlib import Path

import click

from vqclip.cli.app import STDOUT, cli
from vqclip.cli.generate import load
from vqclip.cli.options import CONFIG_FIELDS, build_config, generation_options
from vqclip.cli.progress import Reporter
from vqclip.config import default
from vqclip.errors import UsageError
from vqclip.pipeline.restyle import DEFAULT_BLEND, DEFAULT_INIT_WEIGHT, DEFAULT_LR, DEFAULT_STEPS

# generate's options that a frame-by-frame restyle has no use for: the frame is the init, there is no large
# canvas, no upscaling, no animation of its own, and one frame at a time (each starts from the last)
NOT_FOR_RESTYLE = {
    "n",
    "init",
    "init_image",
    "transformer",
    "base_size",
    "anchor",
    "temperature",
    "top_k",
    "top_p",
    "refine_steps",
    "upscale",
    "frames_every",
    "zoom",
    "rotate",
    "shift",
}
FLAGS = {"image_prompts": "--image-prompt", "noise_prompts": "--noise-prompt", "regions": "--region"}


# Where restyle's defaults differ from generate's: the options' defaults, and what a frame's command leaves out.
RESTYLE_DEFAULTS = {"steps": DEFAULT_STEPS, "lr": DEFAULT_LR, "init_weight": DEFAULT_INIT_WEIGHT}
RESTYLE_HELP = {
    "steps": "Optimisation steps per frame.",
    "lr": "Adam learning rate (twice a still's: each frame's run is short).",
    "init_weight": "Pull towards each frame's own codes (follows the input).",
}


def restyle_options(f):
    """generate's options that make sense per frame, with a restyle's defaults: few steps (each frame starts
    close to its result) at twice a still's learning rate, no pull towards the frame, and seed 0 (a resumed
    run needs the same seed)."""

    def probe():
        pass

    generation_options(probe, seed_help="Seed of the whole video; each frame's comes from it [default: 0].")
    params = [p for p in probe.__click_params__ if p.name not in NOT_FOR_RESTYLE]
    for p in params:
        if p.name == "size":
            p.help = "512 or WIDTHxHEIGHT [default: the input's shape, its longer side at most 512 on CUDA, 256 else]"
        elif p.name in RESTYLE_DEFAULTS:
            p.default, p.help = RESTYLE_DEFAULTS[p.name], RESTYLE_HELP[p.name]
        elif p.name == "change_prompt_every":
            p.help = "Frames per story phase ('^'); 0 splits the frames evenly."
    f.__click_params__ = getattr(f, "__click_params__", []) + params
    return f


RESTYLE_EXAMPLES = """Examples:

\b
  vqclip restyle clip.mp4 "an oil painting" --video painted.mp4
  vqclip restyle frames/ "a charcoal drawing" --frames out/ --steps 30 --size 384x216
  vqclip restyle 'shots/*.png' "dawn ^ dusk" --video story.mp4 --fps 24
  vqclip restyle clip.mp4 "an oil painting" --video painted.mp4 --skip-existing   # resume
"""


@cli.command(epilog=RESTYLE_EXAMPLES)
@click.argument("source", metavar="INPUT")
@click.argument("prompt")
@restyle_options
@click.option(
    "--blend",
    default=DEFAULT_BLEND,
    show_default=True,
    type=float,
    help="Where each frame starts: 0 the previous frame's result, 1 its own codes (independent frames).",
)
@click.option(
    "--first-steps",
    type=click.IntRange(1),
    metavar="N",
    help="Steps of the first frame, which has no previous result to start from [default: 3 x --steps].",
)
@click.option(
    "--smooth", default=0.0, show_default=True, type=float, help="EMA of the frames' latents (0 = off, e.g. 0.3)."
)
@click.option(
    "--fps", type=click.FloatRange(min=0, min_open=True), help="Video frame rate [default: the input's, or 30]."
)
@click.option("--frames", metavar="-|DIR", help="Write the frames as PNGs into DIR, or '-' to stream them on stdout.")
@click.option(
    "--video", type=click.Path(dir_okay=False), help="Encode the frames into this video (H.264, audio copied)."
)
@click.option("--skip-existing", is_flag=True, help="Resume: keep the frames already in the folder and go on.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier run's frames and an existing video.")
def restyle(
    source,
    prompt,
    blend,
    first_steps,
    smooth,
    fps,
    frames,
    video,
    skip_existing,
    overwrite,
    offline,
    quiet,
    progress,
    **params,
):
    """Restyle a video frame by frame with PROMPT: INPUT is a video file, a folder of frames or a glob.

    Each frame is the init image of a short run (--steps, --init-weight); frames after the first start from
    the previous frame's result blended towards their own codes (--blend), with an optional latent EMA
    (--smooth), so the style does not jump. Outputs: --video OUT.mp4 (the input's rate and audio), --frames
    DIR, --frames - (PNGs on stdout).
    """
    from vqclip.pipeline.restyle import Coherence, check_story_frames, resume_point, run_key, work_folder
    from vqclip.pipeline.validate import check_device, check_video, check_writable, validate
    from vqclip.video_io import open_source

    # 1. Everything that needs no model: the settings, the input's frames, the outputs, a resumable folder.
    cfg = build_config(prompt, {**{k: default(k) for k in CONFIG_FIELDS}, **params})
    if cfg.seed is None:
        from dataclasses import replace

        cfg = replace(cfg, seed=0)
    coherence = Coherence(blend, smooth, first_steps)
    if video is None and frames is None:
        raise UsageError("restyle needs an output: --video OUT.mp4, --frames DIR or --frames - (or several).")
    check_device(cfg.device)
    clip = open_source(source)
    check_story_frames(cfg, clip.count)
    request = _validate(cfg, validate)
    check_video(video)
    folder = None
    if frames not in (None, "-"):
        folder = Path(frames).expanduser()
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--frames {frames} is a file, not a folder.")
        check_writable(folder)
    elif video is not None:
        folder = work_folder(Path(video).expanduser())
    out = _outputs(folder, frames, video, fps, skip_existing, overwrite)
    out = _with_command(out, source, request.cfg, coherence, fps)
    start = resume_point(out, run_key(request.cfg, coherence, clip))
    if frames == "-":
        STDOUT["taken"] = True
    # 2. Load once, then frame by frame.
    with Reporter("none" if quiet else progress) as reporter:
        models = load(request, offline, reporter, encoder=True)
        from vqclip.pipeline.restyle import restyle as run

        made = run(request, clip, coherence, out, models, start=start, progress=reporter, say=reporter.message)
        if made.skipped:
            reporter.message(f"Skipped {made.skipped} frames already in {made.folder}.")
    # 3. The outputs' paths on stdout (on stderr when stdout carries the frames).
    if made.folder is not None and not out.work_folder:
        click.echo(str(made.folder), err=frames == "-")
    if made.video is not None:
        click.echo(str(made.video), err=frames == "-")


def _validate(cfg, validate):
    """generate's validation, with story phases counted in frames (check_story_frames), not steps."""
    from dataclasses import replace

    from vqclip.prompts import parse_story

    steps = max(cfg.steps, len(parse_story(cfg.prompt)))
    request = validate(replace(cfg, steps=steps, change_prompt_every=0))
    return replace(request, cfg=replace(request.cfg, steps=cfg.steps, change_prompt_every=cfg.change_prompt_every))


def _outputs(folder, frames, video, fps, skip_existing, overwrite):
    from vqclip.pipeline.restyle import RestyleOutputs

    return RestyleOutputs(
        folder=folder,
        stream=sys.stdout.buffer if frames == "-" else None,
        video=Path(video).expanduser() if video is not None else None,
        fps=fps,
        work_folder=frames in (None, "-") and video is not None,
        skip_existing=skip_existing,
        overwrite=overwrite,
    )


def _with_command(out, source, cfg, coherence, fps):
    """The command that remakes these frames (its settings that differ from restyle's defaults, the seed
    always), for the frames' records and the video's metadata."""
    from dataclasses import replace

    defaults = {k: default(k) for k in CONFIG_FIELDS} | RESTYLE_DEFAULTS
    args = ["vqclip", "restyle", source, cfg.prompt, "--seed", str(cfg.seed)]
    for name in CONFIG_FIELDS:
        value = getattr(cfg, name)
        if name in NOT_FOR_RESTYLE or name == "seed" or value == defaults[name]:
            continue
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        if name == "size":
            args += [flag, f"{value[0]}x{value[1]}"]
        elif isinstance(value, bool):
            args.append(flag)
        elif name in ("augment", "palette"):
            args += [flag, ",".join(value) or "none"]
        elif isinstance(value, tuple):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    if coherence.blend != DEFAULT_BLEND:
        args += ["--blend", str(coherence.blend)]
    if coherence.smooth:
        args += ["--smooth", str(coherence.smooth)]
    if coherence.first_steps:
        args += ["--first-steps", str(coherence.first_steps)]
    if fps:
        args += ["--fps", str(fps)]
    return replace(out, command=" ".join(shlex.quote(a) for a in args))
