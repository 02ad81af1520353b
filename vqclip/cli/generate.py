"""`vqclip generate` (also `vqclip "PROMPT"`) and `vqclip replay`: parse, then validate -> load -> prepare ->
write (vqclip.pipeline), printing the notes and the output path."""

import os
import sys
from contextlib import contextmanager
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


def run_command(
    cfg, output, overwrite, save_every, frames, video, offline, progress_mode, stop_after=None, inputs=None
):
    """The one pass for a single image: validate, load, prepare, write; print the path (or, with -o -, send
    the PNG itself to stdout). `inputs`: the {path: sha256} a replayed image was made from, which the input
    images must still match."""
    from vqclip.output import OutputOptions, check_output_file, default_name, output_path, stdout_folder, to_stdout
    from vqclip.pipeline.validate import check_outputs, validate

    if inputs:
        check_inputs_exist(inputs)
    request = validate(cfg)  # the seed is fixed here: the file name and the metadata carry it
    for path, digest in (request.inputs or {}).items():
        if inputs and inputs.get(path, digest) != digest:
            raise UsageError(f"The image was made from {path}, which has changed since (its sha256 differs).")
    piped = to_stdout(output)  # -o -: the PNG goes to stdout, written first in stdout_folder()
    if request.cfg.n > 1:
        check_many(request.cfg.n, output, piped, save_every, frames, video)
    names = [default_name(request.name_stem, c.seed) for c in request.cfg.images()]  # --n: one per seed
    paths = [output_path(str(stdout_folder()) + "/" if piped else output, name) for name in names]
    for path in paths:
        check_output_file(path, sys.stdout.isatty(), piped)
    if piped and frames == "-":
        raise UsageError("-o - and --frames - both write to standard output; give one of them a file or folder.")
    frame_sink = sys.stdout.buffer if frames == "-" else frames
    outs = [OutputOptions(path, overwrite, save_every, frame_sink, video) for path in paths]
    for out in outs:
        check_outputs(out)
    if frames == "-" or piped:
        STDOUT["taken"] = True
    with Reporter(progress_mode) as reporter:
        # loaded for this image only: no more than it needs (a canvas keeps the text towers for its class)
        models = load(request, offline, reporter, encoder=request.encodes_images, text_towers=bool(cfg.transformer))
        from vqclip.pipeline.prepare import prepare, split
        from vqclip.pipeline.write import write_many

        job = prepare(request, models, stop_after=stop_after)
        for note in job.notes:
            reporter.message(note)
        results = write_many(split(job), models, outs, progress=reporter)
    result = results[-1]
    if piped:
        from vqclip.output import send_to_stdout

        send_to_stdout(result.path)
    elif frames != "-":
        for each in results:
            click.echo(str(each.path))
    else:
        reporter.message(f"The final image is in {result.path}.")
    if result.video is not None:
        click.echo(str(result.video), err=piped)  # an output like the PNG: its path on stdout, after the PNG's


def check_many(n: int, output, piped: bool, save_every: int, frames, video) -> None:
    """--n N writes N images, each named for its seed: -o may name their folder, not one file or stdout, and what
    follows one image's steps (frames, a video, a preview) is refused; before any model loads."""
    one = [
        ("-o -", piped),
        ("--frames", frames is not None),
        ("--video", video is not None),
        ("--save-every", bool(save_every)),
    ]
    refused = ", ".join(name for name, on in one if on)
    if refused:
        raise UsageError(f"--n {n} writes {n} images, so it cannot be combined with {refused}, which follow one image.")
    if output is not None and not Path(output).expanduser().is_dir() and not output.endswith(("/", os.sep)):
        raise UsageError(
            f"--n {n} writes {n} images, each named PROMPT-SLUG_sSEED.png: -o {output} names one file.",
            "Give -o a folder (ending in / if it does not exist yet), or leave -o out.",
        )


def load(request, offline: bool, reporter: Reporter, **keep):
    """The models of a validated request; `keep` says what they hold (vqclip.pipeline.load.load_models)."""
    from vqclip.errors import DownloadError, OfflineError
    from vqclip.pipeline.load import load_models

    reporter.message("Loading models ...")
    try:
        return load_models(request, offline or None, reporter, **keep)
    except (OfflineError, DownloadError) as err:
        if isinstance(err, OfflineError) or "network" in err.causes:  # no network, not a bad file
            err.hint = f"{err.hint}\n{NO_NETWORK}" if err.hint else NO_NETWORK
        raise


NO_NETWORK = (
    "No network? `make demo`, or --vqgan shapes_f8 --clip shapes-a --size 128, runs offline: "
    "the shapes world's small models ship inside vqclip."
)


GENERATE_EXAMPLES = """Examples:

\b
  vqclip "city during a rainy night" --size 512
  vqclip "a lighthouse at dusk:1 | fog:0.5" --size 640x360 --seed 7
  vqclip "dawn ^ noon ^ dusk" --steps 300 --frames frames/ --video story.mp4
  vqclip "portrait" --init-image me.jpg --init-weight 0.5
  vqclip "a red star on a white background" --vqgan shapes_f8 --clip shapes-a --size 128   # offline
"""


@cli.command(epilog=GENERATE_EXAMPLES)
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
    if record.get("restyle"):  # a frame's start came from the frame before it: only the whole restyle remakes it
        raise UsageError(
            f"{image} is a frame of `vqclip restyle`, which replay cannot remake alone.",
            f"Rerun the restyle: {record['restyle'].get('command') or 'vqclip restyle ...'}",
        )
    try:
        cfg = GenerationConfig.from_dict(record["config"])
    except (TypeError, ValueError) as err:
        raise UsageError(f"{image} has vqclip metadata this version cannot replay ({err}).") from None
    stop_after = None if record.get("complete", True) else record.get("steps_done")
    if record.get("upscale"):
        cfg = replace(cfg, upscale=record["upscale"]["factor"])
    out = output if output is not None else str(Path(image))
    mode = "none" if quiet else progress
    with recorded_threads(record.get("threads"), quiet):
        run_command(
            cfg, out, overwrite, 0, None, None, offline, mode, stop_after=stop_after, inputs=record.get("inputs")
        )


@contextmanager
def recorded_threads(threads, quiet: bool):
    """Replay with the CPU thread count the image was made with: matrix sums are split by thread, so another
    count gives other pixels (up to 217 levels apart). Said in one line on stderr when it differs."""
    import torch

    now = torch.get_num_threads()
    if not isinstance(threads, int) or threads < 1 or threads == now:
        yield
        return
    if not quiet:
        click.echo(
            f"Replaying with {threads} CPU thread{'s' if threads > 1 else ''} as recorded (this process had {now}): "
            "another count gives other pixels.",
            err=True,
        )
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(now)


def check_inputs_exist(inputs: dict) -> None:
    """The input images a record names are where it says."""
    for path in inputs:
        if not Path(path).is_file():
            raise UsageError(f"The image was made from {path}, which no longer exists.")
