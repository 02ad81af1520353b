"""`vqclip batch FILE|-`: one image per line, the models loaded once (the loop is vqclip.pipeline.batch.run_batch)."""

import sys
from pathlib import Path

import click

from vqclip.cli.app import cli
from vqclip.cli.generate import load
from vqclip.cli.options import build_config, generation_options
from vqclip.cli.progress import Reporter
from vqclip.errors import UsageError, VqclipError


def batch_options(f):
    return generation_options(f, seed_help="Base seed; each line's seed comes from it and the line [default: 0].")


@cli.command()
@click.argument("prompts", metavar="FILE|-")
@batch_options
@click.option("--outdir", "-d", default=".", show_default=True, help="Folder for the images and the manifest.")
@click.option("--skip-existing", is_flag=True, help="Skip prompts whose finished image is already there (resume).")
@click.option("--shard", metavar="K/N", help="Take every N-th prompt starting at K [default: from torchrun/Slurm].")
@click.option("--overwrite", is_flag=True, help="Replace existing images instead of adding a suffix.")
@click.option(
    "--pack",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    metavar="N",
    help="Optimise N prompts together in one batched step (each image as it is alone; fills a GPU).",
)
def batch(prompts, outdir, skip_existing, shard, overwrite, pack, offline, quiet, progress, **params):
    """Generate one image per line of FILE ('-' for stdin), loading the models once.

    Seeds are derived from --seed (default 0) and each prompt's line, so a rerun reproduces every image;
    each image gets a line in manifest.jsonl (one manifest per shard). A bad line is reported, marked in
    the manifest and skipped; the batch exits 1 at the end if any line failed. --pack N runs N lines at a
    time in one batched step: the same images, faster where one image leaves the GPU idle.
    """
    from vqclip.pipeline.batch import BatchOptions, decode_prompts, local_rank, read_prompts, resolve_shard, shard_items
    from vqclip.pipeline.validate import check_device, check_writable

    items = read_prompts(decode_prompts(_read_bytes(prompts), "stdin" if prompts == "-" else prompts))
    shard_k_n = resolve_shard(shard)
    template = build_config("batch", params)  # the batch seed defaults to 0 in run_batch
    check_pack(template, pack)
    check_device(template.device)  # before any prompt or model
    outdir = Path(outdir).expanduser()
    check_writable(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    _pick_gpu(template.device, local_rank())
    mode = "none" if quiet else progress
    mine = len(shard_items(items, *shard_k_n))
    options = BatchOptions(outdir, shard_k_n, skip_existing, overwrite, pack)
    with Reporter(mode) as reporter:
        if shard_k_n[1] > 1:
            reporter.message(f"Shard {shard_k_n[0]}/{shard_k_n[1]}: {_count(mine, 'prompt')}.")
        summary = _run(items, template, options, offline, reporter)
        if summary.skipped:
            reporter.message(f"Skipped {_count(summary.skipped, 'prompt')} whose image is already there.")
        if not mine:
            reporter.message("No prompts to run.")
    if summary.failed:
        raise VqclipError(f"{summary.failed} of {_count(mine, 'prompt')} failed; see {summary.manifest}.")


def check_pack(template, pack: int) -> None:
    """A batch makes one image per line (--n is generate's); --pack N runs N lines in one step, which what
    follows one image through its run cannot join. Before any prompt or model."""
    from vqclip.config import refused_with_n

    if template.n > 1:
        raise UsageError(
            f"vqclip batch makes one image per line, so it takes no --n {template.n}; "
            "--pack N runs N lines together in one step."
        )
    one_image = refused_with_n(template) if pack > 1 else ""
    if one_image:
        raise UsageError(f"--pack {pack} cannot be combined with {one_image}, which follows one image through its run.")


def _run(items, template, options, offline, reporter):
    from vqclip.pipeline.batch import run_batch

    def on_error(line: int, err: UsageError) -> None:
        reporter.message(f"Line {line}: {err.message} (skipped)")

    def on_skipped(line: int, path: Path) -> None:  # its path on stdout like a done image's, the why on stderr
        reporter.message(f"Line {line}: skipped, {path} is already there.")
        reporter.output(str(path))

    return run_batch(
        items,
        template,
        options,
        lambda request: load(request, offline, reporter, encoder=request.encodes_images),
        progress=reporter,
        on_saved=lambda path: reporter.output(str(path)),
        on_error=on_error,
        on_skipped=on_skipped,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _read_bytes(source: str) -> bytes:
    if source == "-":
        if sys.stdin is None or sys.stdin.closed:
            raise UsageError("Standard input is closed; give a prompt file or pipe the prompts in.")
        try:
            return sys.stdin.buffer.read()
        except (OSError, ValueError) as err:
            raise UsageError(f"Cannot read the prompts from standard input ({err}).") from None
    try:
        return Path(source).expanduser().read_bytes()
    except OSError as err:
        raise UsageError(f"Cannot read the prompt file {source}: {err.strerror}.") from None


def _pick_gpu(device: str, rank: int | None) -> None:
    """Under torchrun or Slurm each process takes its own GPU (LOCAL_RANK)."""
    if rank is None or device not in ("auto", "cuda"):
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
