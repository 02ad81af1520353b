"""`vqclip models`: list, download, verify and locate model weights."""

import json

import click

from vqclip.cli.app import cli, info
from vqclip.errors import UsageError, VqclipError

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
    from vqclip.clip_loading import download_clip
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
        from vqclip.clip_loading import _hf_cached_file

        cached = _hf_cached_file(spec.clip_arch, spec.clip_tag)
        if cached is None:
            raise UsageError(f"{name} is not downloaded yet.", f"Run `vqclip models download {name}`.")
        click.echo(str(cached))
        return
    click.echo(spec.path or str(targets(spec)[0].path))
