"""Batches over prompt files: reading prompts, per-line seeds, shards (explicit, torchrun or Slurm arrays)
and the manifest. Pure logic; `cli.py` runs the images."""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vqclip.errors import UsageError


@dataclass(frozen=True)
class Item:
    line: int  # 1-based line number in the prompt file
    prompt: str


def read_prompts(text: str) -> list[Item]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    items = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            items.append(Item(number, line))
    return items


def derive_seed(base: int, line: int) -> int:
    """A per-prompt seed from the batch seed and the prompt's line: reruns reproduce every image."""
    digest = hashlib.sha256(f"vqclip:{base}:{line}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r} should be K/N, e.g. 0/4.") from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard {text!r}: K must be between 0 and N-1.")
    return k, n


def resolve_shard(shard: str | None, env=os.environ) -> tuple[int, int]:
    """The shard of this process: --shard, else torchrun's RANK/WORLD_SIZE, else a Slurm array task."""
    if shard:
        return parse_shard(shard)
    if "WORLD_SIZE" in env and "RANK" in env:
        return parse_shard(f"{env['RANK']}/{env['WORLD_SIZE']}")
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return parse_shard(f"{int(env['SLURM_ARRAY_TASK_ID']) - first}/{env['SLURM_ARRAY_TASK_COUNT']}")
    return 0, 1


def local_rank(env=os.environ) -> int | None:
    """The GPU index of this process under torchrun (LOCAL_RANK) or Slurm (SLURM_LOCALID)."""
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if key in env:
            return int(env[key])
    return None


def shard_items(items: list[Item], k: int, n: int) -> list[Item]:
    return items[k::n]


def manifest_path(outdir: Path, k: int, n: int) -> Path:
    """One manifest per shard, so concurrent shards never write the same file."""
    return outdir / ("manifest.jsonl" if n == 1 else f"manifest.shard-{k}-of-{n}.jsonl")


def append_manifest(path: Path, record: dict) -> None:
    """Append one JSON line with a single write (O_APPEND): lines never interleave or clobber."""
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def image_name(item: Item, seed: int) -> str:
    from vqclip.output import slug

    return f"{item.line:04d}-{slug(item.prompt, 50)}_s{seed}.png"
