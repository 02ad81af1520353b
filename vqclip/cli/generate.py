"""`vqclip generate` (also `vqclip "PROMPT"`) and `vqclip replay`: parse, then validate -> load -> prepare ->
render (vqclip.pipeline), printing the notes and the output path."""

import sys
from dataclasses import replace
from pathlib import Path

import click

from vqclip.cli.app import STDOUT, cli
from vqclip.cli.options import build_config, generation_options
from vqclip.cli.progress import Reporter
from vqclip.config import GenerationConfig
from vqclip.errors import UsageError


def output_options(f):
    options = [
        click.option("-o", "--output", help="Output PNG path or folder [default: PROMPT-SLUG_sSEED.png]."),
        click.option(
            "--overwrite",
            is_flag=True,
            help="Replace an existing PNG or video instead of adding a suffix, and reuse a --frames folder.",
        ),
        click.option(
            "--save-every", default=0, type=click.IntRange(0), help="Update OUTPUT.progress.png every N steps."
        ),
        click.option(
            "--frames", metavar="-|DIR", help="Write a PNG every --frames-every steps: '-' streams to stdout."
        ),
        click.option("--video", type=click.Path(dir_okay=False), help="Encode the frames to a video with ffmpeg."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def default_stem(cfg: GenerationConfig) -> str:
    """What the default file name is made of: the prompt, else the first image prompt's name."""
    from vqclip.prompts import parse_prompt

    if cfg.prompt.strip():
        return cfg.prompt
    return Path(parse_prompt(cfg.image_prompts[0]).text).stem if cfg.image_prompts else "noise"


def run_command(cfg, output, overwrite, save_every, frames, video, offline, progress_mode, stop_after=None):
    """The one pass for a single image: validate, load, prepare, render; print the path."""
    from vqclip.output import (
        OutputOptions,
        check_output_file,
        default_name,
        output_path,
        send_to_stdout,
        stdout_folder,
        to_stdout,
    )
    from vqclip.validate import check_frames, check_video, check_writable, validate

    cfg = cfg.with_seed()  # fixed now: the file name and the metadata carry it
    piped = to_stdout(output)  # -o -: the PNG goes to stdout, written first in stdout_folder()
    path = output_path(str(stdout_folder()) + "/" if piped else output, default_name(default_stem(cfg), cfg.seed))
    checked = validate(cfg)
    check_output_file(path, sys.stdout.isatty(), piped)
    if piped and frames == "-":
        raise UsageError("-o - and --frames - both write to standard output; give one of them a file or folder.")
    check_writable(path.parent)
    check_video(video)
    check_frames(None if video else frames, overwrite)  # with --video the frames go to ffmpeg only
    if frames == "-" or piped:
        STDOUT["taken"] = True
    out = OutputOptions(path, overwrite, save_every, sys.stdout.buffer if frames == "-" else frames, video)
    with Reporter(progress_mode) as reporter:
        models = load(cfg, offline, reporter, checked)
        from vqclip.job import prepare
        from vqclip.render import render

        job = prepare(cfg, models, stop_after=stop_after, last_job=True)
        for note in job.notes:
            reporter.message(note)
        result = render(job, models, out, progress=reporter)
    if piped:
        send_to_stdout(result.path)
    elif frames != "-":
        click.echo(str(result.path))
    else:
        reporter.message(f"The final image is in {result.path}.")
    if result.video is not None:
        click.echo(str(result.video), err=piped)  # an output like the PNG: its path on stdout, after the PNG's


def load(cfg, offline: bool, reporter: Reporter, checked):
    from vqclip.loading import load_models

    reporter.message("Loading models ...")
    return load_models(cfg, offline=offline or None, progress=reporter, checked=checked)


@cli.command()
@click.argument("prompt", required=False, default="")
@click.option(
    "-p", "--prompts", "prompt_option", metavar="PROMPT", help="The prompt, as the reference scripts take it."
)
@generation_options
@output_options
def generate(prompt, prompt_option, output, overwrite, save_every, frames, video, offline, quiet, progress, **params):
    """Generate an image from PROMPT ("text:weight:stop", "|" several, "^" story phases)."""
    if prompt and prompt_option:
        if prompt.isdigit() and params["size"]:  # `-p TEXT -s 512 512`, as the reference scripts take a size
            raise UsageError(
                f"--size takes one value, WIDTHxHEIGHT (e.g. -s {params['size'][0]}x{prompt}), not two numbers."
            )
        raise UsageError("Give the prompt once: as an argument or with -p, not both.")
    cfg = build_config(prompt or prompt_option or "", params)
    run_command(cfg, output, overwrite, save_every, frames, video, offline, "none" if quiet else progress)


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", help="Output path [default: next to the original, with a suffix].")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file instead of adding a suffix.")
@click.option("--offline", is_flag=True, help="Never use the network.")
@click.option("--quiet", "-q", is_flag=True, help="No progress or messages on stderr.")
@click.option(
    "--progress",
    type=click.Choice(["bar", "json", "none"]),
    default="bar",
    show_default=True,
    help="Progress on stderr: a bar, or one JSON object per step.",
)
def replay(image, output, overwrite, offline, quiet, progress):
    """Regenerate an image from the settings stored in a PNG that vqclip wrote (the same pixels on the same
    device and precision). An interrupted image replays the steps it holds; an upscaled one is upscaled."""
    from vqclip.metadata import read_record

    record = read_record(image)
    try:
        cfg = GenerationConfig.from_dict(record["config"])
    except (TypeError, ValueError) as err:
        raise UsageError(f"{image} has vqclip metadata this version cannot replay ({err}).") from None
    check_inputs_unchanged(record)
    stop_after = None if record.get("complete", True) else record.get("steps_done")
    if record.get("upscale"):
        cfg = replace(cfg, upscale=record["upscale"]["factor"])
    out = output if output is not None else str(Path(image))
    run_command(cfg, out, overwrite, 0, None, None, offline, "none" if quiet else progress, stop_after=stop_after)


def check_inputs_unchanged(record: dict) -> None:
    """The input images a record names are where it says, with the same content."""
    from vqclip.cache import sha256_file

    for path, digest in (record.get("inputs") or {}).items():
        if not Path(path).is_file():
            raise UsageError(f"The image was made from {path}, which no longer exists.")
        if sha256_file(Path(path)) != digest:
            raise UsageError(f"The image was made from {path}, which has changed since (its sha256 differs).")
