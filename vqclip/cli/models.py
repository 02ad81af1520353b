"""`vqclip models`: list, download, verify and locate model weights."""

import json

import click

from vqclip.cli.app import cli, info
from vqclip.errors import VqclipError


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

    from vqclip.weights.catalog import entry_status
    from vqclip.weights.registry import list_specs

    rows = []
    for spec in list_specs(kind):
        cached, verified = entry_status(spec)
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
    from vqclip.cli.progress import Reporter
    from vqclip.weights.catalog import fetch_entry
    from vqclip.weights.registry import get_spec

    specs = [get_spec(n) for n in names]  # unknown names fail before any download
    with Reporter("none" if quiet else "bar") as reporter:
        for spec in specs:
            reporter.output(str(fetch_entry(spec, progress=reporter)))


@models.command("verify")
@click.argument("names", nargs=-1)
def models_verify(names):
    """Re-check cached files (sha256, and what they hold); remove bad ones (fetched again on next use)."""
    from vqclip.weights.cache import cache_dir, check_file, remove_cached, stamp_path
    from vqclip.weights.catalog import entry_files
    from vqclip.weights.registry import get_spec, list_specs

    specs = [get_spec(n) for n in names] if names else list_specs()
    present = []
    for spec in specs:
        for target in entry_files(spec):
            if target.path.is_file():
                present.append(target)
            elif names:
                info(f"{target.name}: not downloaded")
    if not present:
        info(f"Nothing to verify: no model files in {cache_dir()}." if not names else "Nothing to verify.")
        return
    bad = kept = 0
    for target in present:
        stamped = stamp_path(target.path).is_file()  # only a file the cache itself checked and stamped is removed
        problem = check_file(target)
        if problem is None:
            click.echo(f"ok       {target.path}")
        elif stamped:
            bad += 1
            remove_cached(target)
            click.echo(f"corrupt  {target.path} ({problem}); removed")
        else:
            kept += 1
            click.echo(f"corrupt  {target.path} ({problem}); kept: vqclip did not download it, replace it yourself")
    if bad or kept:
        removed = f"{bad} corrupt file(s) removed; they will be downloaded again when needed" if bad else ""
        left = f"{kept} corrupt file(s) that vqclip did not download left in place" if kept else ""
        raise VqclipError("; ".join(filter(None, (removed, left))) + ".")


@models.command("path")
@click.argument("name")
def models_path(name):
    """Print where a model's checkpoint lives (or will live) in the cache."""
    from vqclip.weights.catalog import entry_path
    from vqclip.weights.registry import get_spec

    click.echo(str(entry_path(get_spec(name))))
