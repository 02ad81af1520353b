"""The command line: the only place that prints, draws progress, picks the device and exits.

Exit codes: 0 ok, 1 unexpected failure, 2 bad input, 3 weights missing or not downloadable,
4 out of memory, 130 interrupted. torch is imported inside the commands, never at import time.
"""

import json
import os
import sys
import time
from pathlib import Path

import click

from vqclip import __version__
from vqclip.config import AUGMENTS, DEFAULT_AUGMENTS, DEVICES, INITS, PRECISIONS, GenerationConfig, parse_size
from vqclip.errors import UsageError, VqclipError
from vqclip.pretrained import DEFAULT_CLIP, DEFAULT_VQGAN

EXIT_INTERRUPTED = 130
EXIT_OOM = 4


def err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def info(message: str, quiet: bool = False) -> None:
    if not quiet:
        err_console().print(message)


class DefaultGroup(click.Group):
    """`vqclip "PROMPT" ...` is `vqclip generate "PROMPT" ...`."""

    def parse_args(self, ctx, args):
        group_options = {"--help", "-h", "--version", "--debug"}
        first = next((a for a in args if a not in group_options), None)
        if first is not None and first not in self.commands:
            args.insert(args.index(first), "generate")
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vqclip")
@click.option("--debug", is_flag=True, help="Show full tracebacks for unexpected errors.")
@click.pass_context
def cli(ctx, debug):
    """Text to image with VQGAN+CLIP.

    \b
      vqclip "city during a rainy night" --size 512
      vqclip models list
    """
    ctx.obj = {"debug": debug}


# ---- generate ----------------------------------------------------------------------------------


def _size(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_size(value)
    except UsageError as err:
        raise click.BadParameter(err.message) from None


def _augment(ctx, param, value):
    if value is None:
        return DEFAULT_AUGMENTS
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if names == ("none",):
        return ()
    bad = [n for n in names if n not in AUGMENTS]
    if bad:
        raise click.BadParameter(f"{', '.join(bad)} not among {', '.join(AUGMENTS)} (or 'none').")
    return names


def generation_options(f):
    """The options that fill GenerationConfig (shared by generate and batch)."""
    options = [
        click.option("--size", "-s", callback=_size, help="512 or WIDTHxHEIGHT [default: 512 on CUDA, 256 else]"),
        click.option(
            "--steps", "-i", default=300, show_default=True, type=click.IntRange(1), help="Optimisation steps."
        ),
        click.option("--seed", type=click.IntRange(0, 2**63 - 1), help="Random seed [default: random, recorded]."),
        click.option("--cutn", default=32, show_default=True, type=click.IntRange(1), help="Cutouts per step."),
        click.option("--cut-pow", default=1.0, show_default=True, type=float, help="Cutout size power."),
        click.option("--lr", default=0.1, show_default=True, type=float, help="Adam learning rate."),
        click.option("--init", type=click.Choice(INITS), default="tokens", show_default=True, help="Initial latent."),
        click.option("--init-image", type=click.Path(dir_okay=False), help="Start from this image."),
        click.option("--init-weight", default=0.0, show_default=True, type=float, help="Pull towards the start."),
        click.option("--image-prompt", "image_prompts", multiple=True, metavar="PATH[:W]", help="Image prompt."),
        click.option("--noise-prompt", "noise_prompts", multiple=True, metavar="SEED[:W]", help="Noise prompt."),
        click.option(
            "--change-prompt-every",
            default=0,
            show_default=True,
            type=click.IntRange(0),
            help="Steps per story phase ('^'); 0 splits the steps evenly.",
        ),
        click.option("--vqgan", default=DEFAULT_VQGAN, show_default=True, help="VQGAN registry name or .ckpt path."),
        click.option("--vqgan-config", type=click.Path(dir_okay=False), help="The yaml of a .ckpt path."),
        click.option(
            "--clip",
            multiple=True,
            default=(DEFAULT_CLIP,),
            show_default=True,
            help="CLIP model: ARCH/TAG, registry name or CONFIG.json:WEIGHTS; repeat to combine.",
        ),
        click.option(
            "--augment",
            callback=_augment,
            metavar="LIST",
            help=f"Comma list of {', '.join(AUGMENTS)}, or none [default: {','.join(DEFAULT_AUGMENTS)}].",
        ),
        click.option("--noise-fac", default=0.1, show_default=True, type=float, help="Cutout noise."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            default="auto",
            show_default=True,
            help="auto: bf16 autocast where the hardware is fast at it.",
        ),
        click.option("--offline", is_flag=True, help="Never use the network (also VQCLIP_OFFLINE=1)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress or messages on stderr."),
        click.option(
            "--progress",
            type=click.Choice(["bar", "json", "none"]),
            default="bar",
            show_default=True,
            help="Progress on stderr: a bar, or one JSON object per step.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


CONFIG_FIELDS = (
    "size steps seed cutn cut_pow lr init init_image init_weight image_prompts noise_prompts "
    "change_prompt_every vqgan vqgan_config clip augment noise_fac device precision"
).split()


def build_config(prompt: str, params: dict) -> GenerationConfig:
    return GenerationConfig(prompt=prompt, **{k: params[k] for k in CONFIG_FIELDS})


class StepReporter:
    """Turns the optimiser's per-step callback into a rich bar, JSON lines, or nothing, on stderr."""

    def __init__(self, mode: str, total: int, label: str = "generating"):
        self.mode, self.total, self.label = mode, total, label
        self.start = time.perf_counter()
        self.progress = None
        self.latest = None

    def __enter__(self):
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                TextColumn("loss {task.fields[loss]}"),
                console=err_console(),
                transient=False,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task(self.label, total=self.total, rate="", loss="-")
        return self

    def __call__(self, state: dict) -> None:
        self.latest = state
        elapsed = time.perf_counter() - self.start
        i = state["i"]
        if self.mode == "bar":
            rate = i / elapsed if elapsed else 0.0
            rate_text = f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.2f} s/it" if rate else ""
            self.progress.update(self.task, completed=i, rate=rate_text, loss=f"{state['loss']:.4f}")
        elif self.mode == "json":
            eta = elapsed / i * (self.total - i)
            record = {
                "step": i,
                "steps": self.total,
                "loss": round(state["loss"], 6),
                "phase": state.get("phase", 0),
                "elapsed": round(elapsed, 3),
                "eta": round(eta, 3),
            }
            print(json.dumps(record), file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.progress:
            self.progress.__exit__(*exc)


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


@cli.command()
@click.argument("prompt", required=False, default="")
@generation_options
@click.option("-o", "--output", help="Output PNG path or folder [default: PROMPT-SLUG_sSEED.png].")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file instead of adding a suffix.")
@click.option("--save-every", default=0, type=click.IntRange(0), help="Update OUTPUT.progress.png every N steps.")
def generate(prompt, output, overwrite, save_every, offline, quiet, progress, **params):
    """Generate an image from PROMPT ("text:weight:stop", "|" several, "^" story phases)."""
    import random

    cfg = build_config(prompt, params)
    if cfg.seed is None:
        from dataclasses import replace

        cfg = replace(cfg, seed=random.SystemRandom().randrange(2**32))
    run_generation(cfg, output, overwrite, save_every, offline, quiet, progress)


def run_generation(cfg, output, overwrite, save_every, offline, quiet, progress):
    """Validate, load, optimise, write; print the output path on stdout."""
    from vqclip.output import check_writable
    from vqclip.pipeline import check_inputs

    check_inputs(cfg)
    path = output_path(output, cfg)
    check_writable(path.parent)
    if offline:
        os.environ["VQCLIP_OFFLINE"] = "1"
    mode = "none" if quiet else progress
    from vqclip.pipeline import load_models, resolve_config

    info("Loading models ...", quiet)
    models = load_models(cfg, offline=offline or None, quiet=quiet)
    cfg, notes = resolve_config(cfg, models)
    for note in notes:
        info(note, quiet)
    info(
        f"{cfg.size[0]}x{cfg.size[1]}, seed {cfg.seed}, {cfg.steps} steps on {models.device.type}"
        f"{' (bf16)' if models.dtype is not None else ''}",
        quiet,
    )
    saved = write_generation(cfg, models, path, overwrite, save_every, mode)
    click.echo(str(saved))


def write_generation(cfg, models, path: Path, overwrite: bool, save_every: int, mode: str) -> Path:
    from vqclip.output import png_info, save_png
    from vqclip.pipeline import Result, generate, model_record

    progress_path = path.with_name(path.stem + ".progress.png")

    with StepReporter(mode, cfg.steps) as reporter:

        def callback(state):
            reporter(state)
            if save_every and state["i"] % save_every == 0 and state["i"] < cfg.steps:
                save_png(state["image"](), progress_path, overwrite=True)

        try:
            result = generate(cfg, models=models, callback=callback)
        except KeyboardInterrupt:
            latest = reporter.latest
            if latest is not None:
                partial = Result(latest["image"](), cfg, latest["loss"], 0.0, latest["i"], model_record(cfg, models))
                saved = save_png(partial.image, path, png_info(partial.parameters(), partial.record()), overwrite)
                click.echo(str(saved))
                print(f"Interrupted after {latest['i']} steps; the latest image is in {saved}.", file=sys.stderr)
            raise
    if progress_path.exists():
        progress_path.unlink()
    return save_png(result.image, path, png_info(result.parameters(), result.record()), overwrite)


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", help="Output path [default: next to the original, with a suffix].")
@click.option("--overwrite", is_flag=True)
@click.option("--offline", is_flag=True, help="Never use the network.")
@click.option("--quiet", "-q", is_flag=True)
@click.option("--progress", type=click.Choice(["bar", "json", "none"]), default="bar")
def replay(image, output, overwrite, offline, quiet, progress):
    """Regenerate an image from the settings stored in a PNG that vqclip wrote."""
    from vqclip.output import read_record

    record = read_record(image)
    cfg = GenerationConfig.from_dict(record["config"])
    out = output if output is not None else str(Path(image))
    run_generation(cfg, out, overwrite, 0, offline, quiet, progress)


# ---- models ------------------------------------------------------------------------------------


@cli.group()
def models():
    """List, download, verify and locate model weights."""


def _human(size: int | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return "?"


@models.command("list")
@click.option("--kind", type=click.Choice(["vqgan", "transformer", "clip", "upscaler"]))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model on stdout.")
def models_list(kind, as_json):
    """The known models: name, kind, size, and whether they are cached and verified."""
    from rich.table import Table

    from vqclip.registry import list_specs, status

    rows = []
    for spec in list_specs(kind):
        cached, verified = status(spec)
        size = spec.checkpoint.size if spec.checkpoint else None
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "size": size,
                "cached": cached,
                "verified": verified,
                "description": spec.description,
            }
        )
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    table = Table("name", "kind", "size", "cached", "verified", "description", box=None)
    for r in rows:
        table.add_row(
            r["name"],
            r["kind"],
            _human(r["size"]),
            "yes" if r["cached"] else "no",
            "yes" if r["verified"] else "no",
            r["description"],
        )
    from rich.console import Console

    Console(width=200).print(table)


@models.command("download")
@click.argument("names", nargs=-1, required=True)
@click.option("--quiet", "-q", is_flag=True)
def models_download(names, quiet):
    """Download models into the cache (verified); prints each local path."""
    from vqclip.models.clip import download_clip
    from vqclip.registry import fetch_model, get_spec

    specs = [get_spec(n) for n in names]  # unknown names fail before any download
    for spec in specs:
        if spec.kind == "clip" and spec.checkpoint is None:
            click.echo(str(download_clip(spec.name)))
        else:
            click.echo(str(fetch_model(spec.name, quiet=quiet).checkpoint))


@models.command("verify")
@click.argument("names", nargs=-1)
def models_verify(names):
    """Re-hash cached files; remove the corrupt ones (they are downloaded again on next use)."""
    from vqclip.download import stamp_path, verify_file
    from vqclip.registry import get_spec, list_specs, targets

    specs = [get_spec(n) for n in names] if names else list_specs()
    bad = 0
    for spec in specs:
        for target in targets(spec):
            if not target.path.is_file():
                if names:
                    info(f"{target.label}: not downloaded")
                continue
            problem = verify_file(target.path, target.size, target.sha256)
            if problem is None:
                click.echo(f"ok       {target.path}")
            else:
                bad += 1
                target.path.unlink()
                stamp_path(target.path).unlink(missing_ok=True)
                click.echo(f"corrupt  {target.path} ({problem}); removed")
    if bad:
        raise VqclipError(f"{bad} corrupt file(s) removed; they will be downloaded again when needed.")


@models.command("path")
@click.argument("name")
def models_path(name):
    """Print where a model's checkpoint lives (or will live) in the cache."""
    from vqclip.registry import get_spec, targets

    spec = get_spec(name)
    if spec.kind == "clip" and spec.checkpoint is None:
        from vqclip.models.clip import _hf_cached_file

        cached = _hf_cached_file(spec.clip_arch, spec.clip_tag)
        if cached is None:
            raise UsageError(f"{name} is not downloaded yet.", f"Run `vqclip models download {name}`.")
        click.echo(str(cached))
        return
    click.echo(spec.path or str(targets(spec)[0].path))


# ---- entry point -------------------------------------------------------------------------------


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or "out of memory" in str(err).lower()


def main(argv=None) -> None:
    """Run the CLI and map every failure to one message on stderr and its exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or bool(os.environ.get("VQCLIP_DEBUG"))
    try:
        cli.main(args=argv, prog_name="vqclip", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except VqclipError as err:
        if debug:
            raise
        console = err_console()
        console.print(f"[bold red]Error:[/] {err.message}")
        if err.hint:
            console.print(err.hint)
        sys.exit(err.exit_code)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
    except Exception as err:
        if debug:
            raise
        if _is_oom(err):
            err_console().print(
                "[bold red]Error:[/] out of memory. Try a smaller --size or --cutn, or --precision bf16."
            )
            sys.exit(EXIT_OOM)
        err_console().print(f"[bold red]Error:[/] {type(err).__name__}: {err}\nRe-run with --debug for details.")
        sys.exit(1)


if __name__ == "__main__":
    main()
