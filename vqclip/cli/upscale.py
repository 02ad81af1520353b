"""`vqclip upscale IMAGE...`: Real-ESRGAN on existing images; vqclip metadata is carried over."""

import json
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
    from vqclip.validate import check_image

    for path in images:  # every input is checked before the model loads
        check_image(path)
    if output and len(images) > 1 and not (Path(output).is_dir() or output.endswith(("/", os.sep))):
        raise UsageError("-o must be a folder when several images are given.")
    from vqclip.device import resolve_device
    from vqclip.images import open_image
    from vqclip.loading import resolve_upscaler
    from vqclip.output import png_info, save_png
    from vqclip.pretrained import DEFAULT_UPSCALER
    from vqclip.upscale import load_upscaler, upscale_image

    name = model or DEFAULT_UPSCALER
    target_device = resolve_device(device)
    with Reporter("none" if quiet else "bar") as reporter:
        path, sha256 = resolve_upscaler(name, offline=offline or None, progress=reporter)
        upscaler = load_upscaler(path, target_device, precision)
        record = {"model": name, "sha256": sha256, "factor": scale, "tile": tile}
        for source in images:
            big = upscale_image(upscaler, open_image(source), scale, tile, progress=reporter)
            texts = _png_texts(source)
            meta = _record(texts.get("vqclip"))
            if meta is not None:
                meta["upscale"] = record
            parameters = texts.get("parameters", "") + f"\nUpscale: x{scale} ({name})"
            target = Path(output) if output else Path(source).with_name(f"{Path(source).stem}_x{scale}.png")
            if target.is_dir() or (output or "").endswith(("/", os.sep)):
                target = target / f"{Path(source).stem}_x{scale}.png"
            saved = save_png(big, target, png_info(parameters.strip(), meta or {}), overwrite)
            reporter.output(str(saved))


def _record(text: str | None) -> dict | None:
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _png_texts(path) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        return dict(getattr(im, "text", {}) or {})
