"""Batches over prompt files: reading prompts, per-line seeds, shards (explicit, torchrun or Slurm arrays),
the manifest, and the loop that runs them with the models loaded once."""

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from vqclip.errors import Interrupted, OutOfMemoryError, UsageError, VqclipError
from vqclip.events import Progress, ProgressFn, ignore


@dataclass(frozen=True)
class Item:
    line: int  # 1-based line number in the prompt file
    prompt: str


def decode_prompts(data: bytes, source: str) -> str:
    """A prompt file's bytes as text: UTF-8 (with or without a BOM), or one clear error."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UsageError(
            f"{source} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}).",
            "Save the prompt file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).",
        ) from None


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


def image_name(line: int, stem: str, seed: int) -> str:
    """LINE-PROMPT-SLUG_sSEED.png, from a validated request's `name_stem` (its first prompt's text)."""
    from vqclip.output import slug

    return f"{line:04d}-{slug(stem, 50)}_s{seed}.png"


def already_done(path: Path, cfg) -> Path | None:
    """--skip-existing: where the image is, complete (every byte readable), with a vqclip record of its prompt
    and seed: under its name or, when a file that is not it holds the name (kept: never overwritten), under
    the `-1`, `-2`, ... name the redone image took. None for an empty or truncated file, an interrupted image,
    or nothing."""
    from vqclip.metadata import finished_image

    for n in range(10_000):
        candidate = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return None
        if finished_image(candidate, cfg.prompt, cfg.seed):
            return candidate
    return None


def settle(done: Path, entry: dict, manifest: Path, partial: Path) -> None:
    """A finished image that a resumed batch skips: what a process killed between saving it and recording it
    left is completed. Its manifest line is written if the manifest has none (from the image's record), and an
    interrupted attempt's OUTPUT.partial.png of the same image is removed."""
    from vqclip.metadata import partial_image, read_record

    if not _recorded(manifest, entry["line"]):
        record = read_record(done)
        append_manifest(manifest, {**entry, "path": str(done), "loss": record.get("loss"), "status": "ok"})
    if partial_image(partial, entry["prompt"], entry["seed"]):
        partial.unlink(missing_ok=True)


def _recorded(manifest: Path, line: int) -> bool:
    """Whether the manifest has an "ok" line for this prompt line."""
    try:
        text = manifest.read_text()
    except FileNotFoundError:
        return False
    for row in text.splitlines():
        try:
            record = json.loads(row)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("line") == line and record.get("status") == "ok":
            return True
    return False


@dataclass(frozen=True)
class BatchOptions:
    """How a batch runs: where its files go and which of its prompts this process takes."""

    outdir: Path
    shard: tuple[int, int] = (0, 1)  # (K, N): this process takes every N-th prompt starting at K
    skip_existing: bool = False  # resume: a prompt whose finished image exists is skipped (already_done)
    overwrite: bool = False
    pack: int = 1  # prompts optimised together in one batched step (--pack), each as it would be alone


@dataclass
class BatchSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0  # bad prompts and out-of-memory images
    oom: int = 0  # of those, out of memory (planned or met)
    manifest: Path | None = None


@dataclass
class _Waiting:
    """A validated prompt waiting for its pack: its manifest entry, its request and where its image goes."""

    entry: dict
    request: object
    path: Path


def run_batch(
    items: list[Item],
    template,
    options: BatchOptions,
    load: Callable,
    *,
    progress: ProgressFn = ignore,
    on_saved: Callable[[Path], None] = lambda path: None,
    on_error: Callable[[int, VqclipError], None] = lambda line, err: None,
    on_skipped: Callable[[int, Path], None] = lambda line, path: None,
) -> BatchSummary:
    """Generate one image per prompt with the models loaded once (by `load(request)`, on the first image that
    runs). Each line is validated, prepared and written like a single image; its seed comes from the batch
    seed (0 unless the template has one) and its line. With `options.pack` N, N prompts at a time (in file
    order, once the bad and the skipped are set aside) run in one batched step, each image what it is alone
    up to float rounding. Bad prompts are recorded in the manifest and skipped; so is an image (a pack: each
    of its images) that does not fit in memory (`status: oom`, whether the plan refused it or the device ran
    out), after which the memory it held is given back and the batch goes on; an interrupted image is
    recorded as such (its latest image in NAME.partial.png) and the interruption goes on to the caller."""
    from vqclip.output import OutputOptions, remove_stale_temps
    from vqclip.pipeline.validate import validate

    k, n = options.shard
    items = shard_items(items, k, n)
    summary = BatchSummary(manifest=manifest_path(options.outdir, k, n))
    base_seed = template.seed if template.seed is not None else 0
    models = None
    waiting: list[_Waiting] = []
    remove_stale_temps(options.outdir)  # what writers killed mid-write left (never a live writer's, vqclip.output)
    run = lambda models: _run_pack(waiting, models, load, options, summary, progress, on_saved, on_error)  # noqa: E731
    for number, item in enumerate(items, start=1):
        seed = derive_seed(base_seed, item.line)
        progress(Progress("batch", number - 1, len(items), unit="image", stage=item.prompt))
        entry = {"line": item.line, "prompt": item.prompt, "seed": seed}
        start = time.perf_counter()
        try:
            request = validate(replace(template, prompt=item.prompt, seed=seed))
            path = options.outdir / image_name(item.line, request.name_stem, request.cfg.seed)
            done = already_done(path, request.cfg) if options.skip_existing else None
        except UsageError as err:
            summary.failed += 1
            entry.update(status="error", error=err.message, seconds=round(time.perf_counter() - start, 3))
            append_manifest(summary.manifest, entry)
            on_error(item.line, err)
            continue
        if done is not None:
            summary.skipped += 1
            settle(done, entry, summary.manifest, OutputOptions(path).partial_path)
            on_skipped(item.line, done)  # still one of the batch's images
            continue
        waiting.append(_Waiting(entry, request, path))
        if len(waiting) == options.pack:
            models = run(models)
            waiting.clear()
    if waiting:
        models = run(models)
    progress(Progress("batch", len(items), len(items), unit="image"))
    return summary


def _run_pack(waiting: list[_Waiting], models, load, options, summary, progress, on_saved, on_error):
    """Prepare and write the waiting prompts in one batched step (one prompt: a single image's run) and record
    each in the manifest; returns the models (loaded for the first that runs)."""
    import torch

    from vqclip.output import OutputOptions
    from vqclip.pipeline.prepare import pack, prepare
    from vqclip.pipeline.write import write_many

    device_oom = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), MemoryError)
    start, ran_out = time.perf_counter(), False
    try:
        models = models or load(waiting[0].request)
        jobs = pack([prepare(w.request, models) for w in waiting], models)
        outs = [OutputOptions(w.path, options.overwrite) for w in waiting]
        for w, result in zip(waiting, write_many(jobs, models, outs, progress=progress), strict=True):
            w.entry.update(path=str(result.path), loss=result.loss, status="ok")
            summary.done += 1
            on_saved(result.path)
    except UsageError as err:
        for w in waiting:
            summary.failed += 1
            w.entry.update(status="error", error=err.message)
            on_error(w.entry["line"], err)
    except (OutOfMemoryError, *device_oom) as err:
        oom = err if isinstance(err, OutOfMemoryError) else _device_oom(err, waiting[0].request.cfg)
        ran_out = True
        for w in waiting:
            summary.failed += 1
            summary.oom += 1
            w.entry.update(status="oom", error=oom.message)
            on_error(w.entry["line"], oom)
    except (Interrupted, KeyboardInterrupt) as err:
        saved = getattr(err, "saved_each", None) or []
        for w, kept in zip(waiting, saved if len(saved) == len(waiting) else [None] * len(waiting), strict=True):
            w.entry.update(status="interrupted", path=str(kept) if kept else None)
            w.entry["steps_done"] = getattr(err, "steps_done", None)
        raise
    finally:
        for w in waiting:
            if "status" in w.entry:
                w.entry["seconds"] = round(time.perf_counter() - start, 3)  # a pack's: the whole step's time
                if len(waiting) > 1:
                    w.entry["pack"] = len(waiting)
                append_manifest(summary.manifest, w.entry)
    if ran_out:  # here, where the failed step's tensors (held by the traceback) are gone
        _release_memory(models)
    return models


def _device_oom(err: BaseException, cfg) -> OutOfMemoryError:
    """The device's own out-of-memory error (one outside the run, e.g. loading or planning) as vqclip's."""
    size = f"{cfg.size[0]}x{cfg.size[1]}" if cfg.size else "this size"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return OutOfMemoryError(f"Out of memory at {size} with {cfg.cutn} cutouts ({first[:200]}).")


def _release_memory(models) -> None:
    """Give back what a failed image left cached, so the next prompt plans with the memory really free."""
    import gc

    import torch

    gc.collect()
    device = getattr(models, "device", None)
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
    elif device is not None and device.type == "mps":
        torch.mps.empty_cache()
