"""What a PNG says about how it was made: the `vqclip` JSON record (everything `vqclip replay` needs) and
the `parameters` text (the convention other text-to-image tools read), and reading the record back."""

import json
from pathlib import Path

from vqclip import __version__
from vqclip.errors import UsageError


def record(result) -> dict:
    """The `vqclip` PNG metadata: every setting, the seed, the models, what ran, and the version."""
    import torch

    plan = result.plan
    return {
        "version": __version__,
        "config": result.config.to_dict(),
        "seed": result.config.seed,
        "models": result.model_names,
        "device": result.device,  # as resolved: the device and the precision that ran
        "precision": result.precision,
        "threads": torch.get_num_threads(),  # CPU sums are split by thread: `vqclip replay` uses the same count
        "loss": result.loss,
        "steps_done": result.steps_done,
        "complete": result.complete,
        "inputs": result.inputs,  # resolved paths and sha256 of the input images
        "canvas": result.canvas,
        "upscale": result.upscale,
        "tracker": result.tracker,  # --keep best / --auto-stop: the step kept (best_step), where it stopped
        # --n / batch --pack: made in a batched step of `images`, as image `index` (replay runs it alone)
        "batch": getattr(result, "batch", None),
        # what decides the pixels (not the memory figures, which vary from run to run)
        "plan": {"checkpointing": plan.checkpointing, "clip_chunk": plan.clip_chunk} if plan is not None else None,
    }


def parameters(result) -> str:
    """The `parameters` text chunk: the prompt, then `Key: value` pairs."""
    c = result.config
    w, h = result.image.size
    pairs = [
        ("Steps", result.steps_done if result.complete else f"{result.steps_done} of {c.steps} (interrupted)"),
        ("Seed", c.seed),
        ("Size", f"{w}x{h}"),
        ("Model", Path(c.transformer or c.vqgan).name),
        ("CLIP", ", ".join(c.clip)),
        ("Cutouts", c.cutn),
        ("Cut power", c.cut_pow),
        ("Learning rate", c.lr),
        ("Cut method", c.cut_method),
        ("Augmentations", ",".join(c.augmentations) or "none"),
        ("Noise", c.noise_fac),
    ]
    if c.init_image:
        pairs += [("Init image", Path(c.init_image).name), ("Init weight", c.init_weight)]
    if c.image_prompts:
        pairs.append(("Image prompts", ", ".join(Path(p).name for p in c.image_prompts)))
    if c.noise_prompts:
        pairs.append(("Noise prompts", ", ".join(c.noise_prompts)))
    pairs += controls(c, result)
    if result.upscale:
        base = c.size
        pairs.append(("Upscale", f"x{result.upscale['factor']} from {base[0]}x{base[1]}"))
    pairs += [("Precision", result.precision), ("Version", f"vqclip {__version__}")]
    return f"{c.prompt}\n" + ", ".join(f"{k}: {v}" for k, v in pairs)


def controls(c, result) -> list[tuple[str, object]]:
    """The `parameters` pairs of the settings issue 26 added, where they differ from their defaults."""
    pairs = []
    if c.init not in ("tokens",):
        pairs.append(("Init", c.init))
    if c.optimizer != "adam":
        pairs.append(("Optimizer", c.optimizer))
    if c.lr_schedule != "constant":
        pairs.append(("LR schedule", c.lr_schedule))
    for key, label in (("tv", "TV"), ("saturation", "Saturation"), ("symmetry", "Symmetry")):
        if getattr(c, key):
            pairs.append((label, getattr(c, key)))
    if c.palette:
        pairs.append(("Palette", f"{' '.join(c.palette)} (weight {c.palette_weight})"))
    if c.regions:
        pairs.append(("Regions", " | ".join(c.regions)))
    if c.tile:
        pairs.append(("Tile", "on"))
    tracker = result.tracker or {}
    if c.auto_stop:
        stopped = tracker.get("stopped_at")
        pairs.append(("Auto stop", f"{c.auto_stop} (stopped at step {stopped})" if stopped else c.auto_stop))
    if c.keep == "best":
        pairs.append(("Kept", f"best, step {tracker.get('best_step')}"))
    return pairs


def read_record(path: str | Path) -> dict:
    """The `vqclip` JSON chunk of a PNG written by vqclip; one clear error for anything else."""
    text = png_texts(path).get("vqclip")  # one clear error for a missing, unreadable or hostile file
    if not text:
        raise UsageError(f"{path} has no vqclip metadata (it was not written by vqclip, or it was re-saved).")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise UsageError(f"{path} has a vqclip metadata chunk that is not a valid record (it was edited or damaged).")
    return data


def png_texts(path: str | Path) -> dict:
    """The text chunks of an image (a PNG's tEXt/iTXt/zTXt), {} for a format without them; a missing,
    unreadable or hostile file (a decompression bomb) is one UsageError."""
    from vqclip.images import read_image

    return read_image(path)[1]  # one clear error for a missing, unreadable or hostile file


def upscaled_record(texts: dict, upscale: dict) -> tuple[str, dict]:
    """(parameters, vqclip record) for an upscaled copy of an image whose text chunks are `texts`: its own,
    with the upscale added (an image vqclip did not write gets only the parameters line)."""
    try:
        data = json.loads(texts["vqclip"]) if texts.get("vqclip") else {}
    except ValueError:
        data = {}
    data = {**data, "upscale": upscale} if isinstance(data, dict) and data else {}
    name = upscale.get("model", "")
    return (texts.get("parameters", "") + f"\nUpscale: x{upscale['factor']} ({name})").strip(), data


def finished_image(path: str | Path, prompt: str, seed: int) -> bool:
    """Whether `path` is a complete PNG (every byte of it readable) whose vqclip record says it is the finished
    image of this prompt and seed: what `batch --skip-existing` accepts as done. An empty, truncated or
    foreign file, or an interrupted image, is not."""
    try:
        data = read_record(path)
    except UsageError:
        return False
    config = data["config"]
    return data.get("complete", True) is True and config.get("prompt") == prompt and config.get("seed") == seed


def partial_image(path: str | Path, prompt: str, seed: int) -> bool:
    """Whether `path` is an interrupted run's latest image (OUTPUT.partial.png) of this prompt and seed."""
    try:
        data = read_record(path)
    except UsageError:
        return False
    config = data["config"]
    return data.get("complete") is False and config.get("prompt") == prompt and config.get("seed") == seed
