"""`vqclip generate` (also `vqclip "PROMPT"`), `vqclip replay`, `vqclip batch` and `vqclip upscale`."""

import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import click

from vqclip.cli.app import cli, info
from vqclip.cli.options import build_config, generation_options
from vqclip.cli.progress import StepReporter
from vqclip.config import GenerationConfig
from vqclip.errors import UsageError, VqclipError


def output_path(output: str | None, cfg: GenerationConfig) -> Path:
    from vqclip.output import default_name
    from vqclip.prompts import parse_prompt

    base = cfg.prompt or (Path(parse_prompt(cfg.image_prompts[0]).text).stem if cfg.image_prompts else "noise")
    name = default_name(base, cfg.seed)
    if output is None:
        return Path(name)
    path = Path(output).expanduser()
    if path.is_dir() or output.endswith(("/", os.sep)):
        return path / name
    return path


def with_seed(cfg: GenerationConfig) -> GenerationConfig:
    """Fix the seed now, so that the file name and the metadata carry it."""
    return cfg if cfg.seed is not None else replace(cfg, seed=random.SystemRandom().randrange(2**32))


def output_options(f):
    options = [
        click.option("-o", "--output", help="Output PNG path or folder [default: PROMPT-SLUG_sSEED.png]."),
        click.option("--overwrite", is_flag=True, help="Replace an existing output file instead of adding a suffix."),
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


@cli.command()
@click.argument("prompt", required=False, default="")
@generation_options
@output_options
def generate(prompt, output, overwrite, save_every, frames, video, offline, quiet, progress, **params):
    """Generate an image from PROMPT ("text:weight:stop", "|" several, "^" story phases)."""
    cfg = with_seed(build_config(prompt, params))
    run_generation(cfg, output, overwrite, save_every, frames, video, offline, quiet, progress)


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", help="Output path [default: next to the original, with a suffix].")
@click.option("--overwrite", is_flag=True)
@click.option("--offline", is_flag=True, help="Never use the network.")
@click.option("--quiet", "-q", is_flag=True)
@click.option("--progress", type=click.Choice(["bar", "json", "none"]), default="bar")
def replay(image, output, overwrite, offline, quiet, progress):
    """Regenerate an image from the settings stored in a PNG that vqclip wrote."""
    from vqclip.memory import Plan
    from vqclip.output import read_record

    record = read_record(image)
    cfg = GenerationConfig.from_dict(record["config"])
    recorded = record.get("plan")  # the same CLIP chunks draw the same augmentations
    plan = Plan(recorded["checkpointing"], recorded["clip_chunk"], 0, 0) if recorded else None
    out = output if output is not None else str(Path(image))
    run_generation(cfg, out, overwrite, 0, None, None, offline, quiet, progress, plan=plan)


def prepare(cfg: GenerationConfig, offline: bool, quiet: bool):
    """Validate (before anything heavy), then load the models once."""
    from vqclip.pipeline import check_inputs, load_models

    check_inputs(cfg)
    if offline:
        os.environ["VQCLIP_OFFLINE"] = "1"
    info("Loading models ...", quiet)
    return load_models(cfg, offline=offline or None, quiet=quiet)


def run_generation(cfg, output, overwrite, save_every, frames, video, offline, quiet, progress, plan=None):
    """Validate, load, optimise, write; print the output path on stdout (unless frames stream there)."""
    from vqclip.output import FrameSink, check_writable

    path = output_path(output, cfg)
    check_writable(path.parent)
    models = prepare(cfg, offline, quiet)
    sink = FrameSink(frames or "-", video) if (frames or video) else None
    try:
        saved = run_one(cfg, models, path, overwrite, save_every, "none" if quiet else progress, quiet, plan, sink)
    finally:
        if sink is not None:
            sink.close()
    if saved is not None and frames != "-":
        click.echo(str(saved))


def run_one(cfg, models, path, overwrite, save_every, mode, quiet, plan=None, sink=None, reporter=None):
    """One image with loaded models: plan, optimise with progress, write. Returns the path written, or
    None when the frame pipe was closed (the latest image is still saved)."""
    from vqclip.memory import make_plan
    from vqclip.output import png_info, save_png
    from vqclip.pipeline import Result, generate, model_record, resolve_config

    cfg, notes = resolve_config(cfg, models)
    for note in notes:
        info(note, quiet)
    plan = plan or make_plan(models, cfg.size, cfg.cutn, max_memory=cfg.max_memory)
    info(
        f"{cfg.size[0]}x{cfg.size[1]}, seed {cfg.seed}, {cfg.steps} steps on {models.device.type}"
        f"{' (bf16)' if models.dtype is not None else ''}",
        quiet,
    )
    if plan.checkpointing or plan.clip_chunk < cfg.cutn:
        info(
            f"Memory plan: about {plan.estimate / 2**30:.1f} of {plan.budget / 2**30:.1f} GiB, with decoder "
            f"checkpointing {'on' if plan.checkpointing else 'off'} and CLIP chunks of {plan.clip_chunk}.",
            quiet,
        )
    progress_path = path.with_name(path.stem + ".progress.png")

    def save(result):
        return save_png(result.image, path, png_info(result.parameters(), result.record()), overwrite)

    def partial(state):
        return Result(state["image"](), cfg, state["loss"], 0.0, state["i"], model_record(cfg, models), plan)

    own_reporter = reporter is None
    reporter = reporter or StepReporter(mode, cfg.steps)
    if own_reporter:
        reporter.__enter__()
    try:

        def callback(state):
            reporter(state)
            i = state["i"]
            if save_every and i % save_every == 0 and i < cfg.steps:
                save_png(state["image"](), progress_path, overwrite=True)
            if sink is not None and i % cfg.frames_every == 0:
                sink.write(state["image"]())

        try:
            result = generate(cfg, models=models, callback=callback, plan=plan)
        except BrokenPipeError:  # the reader of --frames - went away: keep the latest image, end quietly
            _silence_stdout()
            if reporter.latest is not None:
                save(partial(reporter.latest))
            return None
        except KeyboardInterrupt:
            if reporter.latest is not None:
                saved = save(partial(reporter.latest))
                if sink is None:
                    click.echo(str(saved))
                print(
                    f"Interrupted after {reporter.latest['i']} steps; the latest image is in {saved}.", file=sys.stderr
                )
            raise
    finally:
        if own_reporter:
            reporter.__exit__(None, None, None)
    if progress_path.exists():
        progress_path.unlink()
    if cfg.upscale > 1:
        apply_upscale(result, models, cfg.upscale, reporter)
    return save(result)


def apply_upscale(result, models, factor: int, reporter=None, tile: int = 256) -> None:
    """Upscale a result in place with the registry's Real-ESRGAN (loaded once per process)."""
    from vqclip.download import sha256_file
    from vqclip.pretrained import DEFAULT_UPSCALER
    from vqclip.upscale import load_upscaler, resolve_upscaler, upscale_image

    if getattr(models, "upscaler", None) is None:
        path = resolve_upscaler(DEFAULT_UPSCALER)
        models.upscaler = load_upscaler(path, models.device)
        models.upscaler_record = {"model": DEFAULT_UPSCALER, "sha256": sha256_file(path)}
    result.image = upscale_image(models.upscaler, result.image, factor, tile, callback=reporter)
    result.upscale = {**models.upscaler_record, "factor": factor, "tile": tile}


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


@cli.command()
@click.argument("prompts", metavar="FILE|-")
@generation_options
@click.option("--outdir", "-d", default=".", show_default=True, help="Folder for the images and the manifest.")
@click.option("--skip-existing", is_flag=True, help="Skip prompts whose image is already there (resume).")
@click.option("--shard", metavar="K/N", help="Take every N-th prompt starting at K [default: from torchrun/Slurm].")
@click.option("--overwrite", is_flag=True, help="Replace existing images instead of adding a suffix.")
def batch(prompts, outdir, skip_existing, shard, overwrite, offline, quiet, progress, **params):
    """Generate one image per line of FILE ('-' for stdin), loading the models once.

    Seeds are derived from --seed (default 0) and each prompt's line, so a rerun reproduces every image;
    each image gets a line in manifest.jsonl (one manifest per shard).
    """
    from vqclip.batch import (
        append_manifest,
        derive_seed,
        image_name,
        local_rank,
        manifest_path,
        read_prompts,
        resolve_shard,
        shard_items,
    )
    from vqclip.output import check_writable

    text = sys.stdin.read() if prompts == "-" else _read_text(prompts)
    k, n = resolve_shard(shard)
    items = shard_items(read_prompts(text), k, n)
    base_seed = params["seed"] if params["seed"] is not None else 0
    template = build_config("batch", {**params, "seed": base_seed})  # validates the shared options now
    outdir = Path(outdir).expanduser()
    check_writable(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    manifest = manifest_path(outdir, k, n)
    if n > 1:
        info(f"Shard {k}/{n}: {len(items)} prompts.", quiet)
    rank = local_rank()
    if rank is not None and template.device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(rank % torch.cuda.device_count())
    models = None
    failed = 0
    mode = "none" if quiet else progress
    with StepReporter(mode, template.steps, images=len(items)) as reporter:
        for item in items:
            seed = derive_seed(base_seed, item.line)
            record = {"line": item.line, "prompt": item.prompt, "seed": seed}
            start = time.perf_counter()
            try:
                cfg = replace(template, prompt=item.prompt, seed=seed)
                path = outdir / image_name(item, seed)
                if skip_existing and path.exists():
                    reporter.image_done()
                    continue
                from vqclip.pipeline import check_inputs

                check_inputs(cfg)
                models = models or prepare(cfg, offline, quiet)
                reporter.next_image(item.prompt)
                saved = run_one(cfg, models, path, overwrite, 0, mode, True, reporter=reporter)
                record.update(path=str(saved), loss=reporter.latest["loss"], status="ok")
                click.echo(str(saved))
            except UsageError as err:
                failed += 1
                record.update(status="error", error=err.message)
                info(f"Line {item.line}: {err.message} (skipped)")
            record["seconds"] = round(time.perf_counter() - start, 3)
            append_manifest(manifest, record)
            reporter.image_done()
    if failed:
        raise VqclipError(f"{failed} of {len(items)} prompts failed; see {manifest}.")


def _read_text(path: str) -> str:
    try:
        return Path(path).expanduser().read_text()
    except OSError as err:
        raise UsageError(f"Cannot read the prompt file {path}: {err.strerror}.") from None


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--scale", default=4, show_default=True, type=click.Choice([2, 4]), help="Upscaling factor.")
@click.option("--model", default=None, help="Registry name or weights file [default: realesrgan_x4plus].")
@click.option("--tile", default=256, show_default=True, type=click.IntRange(0), help="Tile size (0 = whole image).")
@click.option("-o", "--output", help="Output file (one image) or folder [default: IMAGE_xSCALE.png beside it].")
@click.option("--overwrite", is_flag=True)
@click.option("--device", type=click.Choice(["auto", "cuda", "mps", "cpu"]), default="auto", show_default=True)
@click.option("--offline", is_flag=True, help="Never use the network.")
@click.option("--quiet", "-q", is_flag=True)
def upscale(images, scale, model, tile, output, overwrite, device, offline, quiet):
    """Upscale existing images with Real-ESRGAN; vqclip metadata is carried over and records the upscale."""
    import json

    from vqclip.download import sha256_file
    from vqclip.images import open_image
    from vqclip.output import png_info, save_png
    from vqclip.pretrained import DEFAULT_UPSCALER

    pictures = [open_image(p) for p in images]  # every input is checked before the model loads
    if output and len(images) > 1 and not (Path(output).is_dir() or output.endswith(("/", os.sep))):
        raise UsageError("-o must be a folder when several images are given.")
    from vqclip.device import resolve_device
    from vqclip.upscale import load_upscaler, resolve_upscaler, upscale_image

    name = model or DEFAULT_UPSCALER
    path = resolve_upscaler(name, offline=offline or None, quiet=quiet)
    upscaler = load_upscaler(path, resolve_device(device))
    record = {"model": name, "sha256": sha256_file(path), "factor": scale, "tile": tile}
    mode = "none" if quiet else "bar"
    for source, picture in zip(images, pictures, strict=True):
        with StepReporter(mode, 1) as reporter:
            big = upscale_image(upscaler, picture, scale, tile, callback=reporter)
        texts = _png_texts(source)
        meta = json.loads(texts["vqclip"]) if "vqclip" in texts else {}
        meta["upscale"] = record
        parameters = texts.get("parameters", "") + f"\nUpscale: x{scale} ({name})"
        target = Path(output) if output else Path(source).with_name(f"{Path(source).stem}_x{scale}.png")
        if target.is_dir() or (output or "").endswith(("/", os.sep)):
            target = target / f"{Path(source).stem}_x{scale}.png"
        click.echo(str(save_png(big, target, png_info(parameters.strip(), meta), overwrite)))


def _png_texts(path) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        return dict(getattr(im, "text", {}) or {})
