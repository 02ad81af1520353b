"""`vqclip models`: list, download, verify and locate model weights."""

import json

import click

from vqclip.cli.app import cli, info
from vqclip.errors import VqclipError


@cli.group()
def models():
    """List, download, verify and locate model weights."""


def _human(size: int | None, about: str = "") -> str:
    if size is None:
        return "?"
    if about:
        return about + _human(size)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" or size >= 100 else f"{size:.1f} {unit}"
        size /= 1000
    return "?"


def _size(spec) -> tuple[int | None, str]:
    """(bytes, "" when exact, else "~" or "≥"): the published size, the shipped file's, or an approximate
    one with its source (vqclip.weights.pretrained)."""
    from pathlib import Path

    if spec.checkpoint is not None and spec.checkpoint.size:
        return spec.checkpoint.size, ""
    if spec.path and Path(spec.path).is_file():
        return Path(spec.path).stat().st_size, ""
    if spec.approx_size:
        return spec.approx_size, "≥" if spec.size_source.startswith("at least") else "~"
    return None, ""


def _local_files(spec) -> list[tuple]:
    """(path, expected sha256 or None) for an entry whose files are local (the shapes world's, shipped with
    their SHA256SUMS; a user's `path = ...` entry, with its `sha256` if given)."""
    from pathlib import Path

    files = [Path(spec.path)] + ([Path(spec.local_config)] if spec.local_config else [])
    sums = {}
    listing = Path(spec.path).parent / "SHA256SUMS"
    if listing.is_file():
        for line in listing.read_text().splitlines():
            digest, _, name = line.partition("  ")
            sums[name.strip()] = digest.strip()
    declared = spec.checkpoint.sha256 if spec.checkpoint is not None else None
    return [(f, sums.get(f.name) or (declared if f == files[0] else None)) for f in files]


def _local_problem(path, expected) -> str | None:
    """Why a local model file is not what it should be, or None."""
    from vqclip.weights.cache import sha256_file

    if not path.is_file():
        return "missing"
    if expected and sha256_file(path) != expected:
        return "its sha256 differs from the one listed for it"
    return None


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
        if spec.path:  # local files: present, and matching their listed sha256
            local = _local_files(spec)
            cached = all(path.is_file() for path, _ in local)
            verified = cached and all(_local_problem(path, digest) is None for path, digest in local)
        else:
            cached, verified = entry_status(spec)
        size, about = _size(spec)
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "size": size,
                "size_exact": size is not None and not about,
                "size_about": about,
                "cached": cached,
                "verified": verified,
                "description": spec.description,
            }
        )
    if as_json:
        for row in rows:
            click.echo(json.dumps({k: v for k, v in row.items() if k != "size_about"}))
        return
    table = Table("name", "kind", "size", "cache", "description", box=None, pad_edge=False)
    for r in rows:
        cache = "verified" if r["verified"] else "yes" if r["cached"] else "no"
        table.add_row(r["name"], r["kind"], _human(r["size"], r["size_about"]), cache, r["description"])
    import shutil

    from rich.console import Console

    Console(width=min(100, shutil.get_terminal_size((100, 24)).columns)).print(table)  # descriptions wrap


@models.command("download")
@click.argument("names", nargs=-1, required=True)
@click.option("--quiet", "-q", is_flag=True)
@click.option("--offline", is_flag=True, help="Never use the network: print the paths of models already there.")
def models_download(names, quiet, offline):
    """Download models into the cache (verified); prints each local path."""
    from vqclip.cli.progress import Reporter
    from vqclip.weights.catalog import fetch_entry
    from vqclip.weights.registry import get_spec

    specs = [get_spec(n) for n in names]  # unknown names fail before any download
    with Reporter("none" if quiet else "bar") as reporter:
        for spec in specs:
            reporter.output(str(fetch_entry(spec, offline=offline or None, progress=reporter)))


@models.command("verify")
@click.argument("names", nargs=-1)
def models_verify(names):
    """Re-check cached files (sha256, and what they hold); remove bad ones (fetched again on next use)."""
    from vqclip.weights.cache import cache_dir, check_file, remove_cached, stamp_path
    from vqclip.weights.catalog import entry_files
    from vqclip.weights.registry import get_spec, list_specs

    specs = [get_spec(n) for n in names] if names else list_specs()
    present = []
    bad = kept = 0
    for spec in specs:
        if spec.path:  # local files (the shapes world's, a user's): checked when named, never removed
            for path, digest in _local_files(spec) if names else ():
                problem = _local_problem(path, digest)
                if problem is None:
                    click.echo(f"ok       {path}")
                else:
                    kept += 1
                    click.echo(f"corrupt  {path} ({problem}); not removed: it is not a download")
            continue
        for target in entry_files(spec):
            if target.path.is_file():
                present.append(target)
            elif names:
                info(f"{target.name}: not downloaded")
    if not present and not (names and any(spec.path for spec in specs)):
        info(f"Nothing to verify: no model files in {cache_dir()}." if not names else "Nothing to verify.")
        return
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
