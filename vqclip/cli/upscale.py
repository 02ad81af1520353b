"""`vqclip upscale IMAGE...`: Real-ESRGAN on existing images; vqclip metadata is carried over."""

import os
from pathlib import Path

import click

from vqclip.cli.app import cli
from vqclip.cli.progress import Reporter
from vqclip.config import DEVICES, PRECISIONS
from vqclip.errors import UsageError


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--scale", default=4, show_default=True, type=click.Choice([2, 4]), help="Upscaling factor.")
@click.option("--model", default=None, help="Registry name or weights file [default: realesrgan_x4plus].")
@click.option("--tile", default=256, show_default=True, type=click.IntRange(0), help="Tile size (0 = whole image).")
@click.option("-o", "--output", help="Output file (one image) or folder [default: IMAGE_xSCALE.png beside it].")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file instead of adding a suffix.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, help="Where to run.")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="auto: bf16 on GPUs from compute capability 8.0, fp16 on older GPUs, fp32 elsewhere.",
)
@click.option("--offline", is_flag=True, help="Never use the network.")
@click.option("--quiet", "-q", is_flag=True, help="No progress or messages on stderr.")
def upscale(images, scale, model, tile, output, overwrite, device, precision, offline, quiet):
    """Upscale existing images with Real-ESRGAN; vqclip metadata is carried over and records the upscale."""
    import sys

    from vqclip.output import check_output_file, png_info, save_png, send_to_stdout, stdout_folder, to_stdout
    from vqclip.pipeline.validate import check_image, check_writable

    for path in images:  # every input is checked before the model loads
        check_image(path)
    piped = to_stdout(output)  # -o -: the PNG on stdout (one image)
    if piped and len(images) > 1:
        raise UsageError("-o - writes one PNG to standard output; give a folder for several images.")
    if output and len(images) > 1 and not (piped or Path(output).is_dir() or output.endswith(("/", os.sep))):
        raise UsageError("-o must be a folder when several images are given.")
    targets = [_target(source, str(stdout_folder()) + "/" if piped else output, scale) for source in images]
    for target in targets:  # the places outputs go, checked before the model loads too
        check_output_file(target, sys.stdout.isatty(), piped)
        check_writable(target.parent)
    from vqclip.device import resolve_device
    from vqclip.images import read_image
    from vqclip.metadata import upscaled_record
    from vqclip.pipeline.run import upscale_image
    from vqclip.weights.loading import fetch_upscaler
    from vqclip.weights.pretrained import DEFAULT_UPSCALER

    target_device = resolve_device(device)
    with Reporter("none" if quiet else "bar") as reporter:
        upscaler, record = fetch_upscaler(
            model or DEFAULT_UPSCALER, target_device, offline or None, reporter, precision
        )
        for source, target in zip(images, targets, strict=True):
            image, texts = read_image(source)
            big, done = upscale_image(upscaler, record, image, scale, tile, reporter)
            parameters, meta = upscaled_record(texts, done)
            saved = save_png(big, target, png_info(parameters, meta), overwrite)
            if piped:
                send_to_stdout(saved)
            else:
                reporter.output(str(saved))


def _target(source: str, output: str | None, scale: int) -> Path:
    """-o as a file or a folder, else IMAGE_xSCALE.png beside the image."""
    target = Path(output) if output else Path(source).with_name(f"{Path(source).stem}_x{scale}.png")
    if target.is_dir() or (output or "").endswith(("/", os.sep)):
        target = target / f"{Path(source).stem}_x{scale}.png"
    return target
