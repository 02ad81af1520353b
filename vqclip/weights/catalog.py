"""Every registry entry through one face, wherever its bytes come from (vqclip's mirrors, the Hugging Face Hub
for open_clip's tags, a local file): its cache files, whether they are there and verified, where the
checkpoint lives, and fetching it. The `vqclip models` commands use only this."""

from pathlib import Path

from vqclip.events import ProgressFn, ignore
from vqclip.weights.pretrained import WeightSpec


def _from_hub(spec: WeightSpec) -> bool:
    """CLIP entries whose weights open_clip names on the Hugging Face Hub; not those with local files (a
    user's, or the shapes world's shipped inside the package)."""
    return spec.kind == "clip" and spec.checkpoint is None and not spec.path


def entry_files(spec: WeightSpec) -> list:
    """The cache files of an entry (vqclip.weights.cache.FileTarget), CLIP Hub files included."""
    if _from_hub(spec):
        from vqclip.weights.clip import clip_files

        return clip_files(spec)
    from vqclip.weights.registry import targets

    return targets(spec)


def entry_status(spec: WeightSpec) -> tuple[bool, bool]:
    """(cached, verified)."""
    if _from_hub(spec):
        from vqclip.weights.clip import clip_status

        return clip_status(spec)
    from vqclip.weights.registry import status

    return status(spec)


def entry_path(spec: WeightSpec) -> Path:
    """Where the entry's checkpoint lives, or will live once fetched."""
    if _from_hub(spec):
        from vqclip.weights.clip import clip_path

        return clip_path(spec)
    return Path(spec.path) if spec.path else entry_files(spec)[0].path


def fetch_entry(spec: WeightSpec, offline: bool | None = None, progress: ProgressFn = ignore) -> Path:
    """The entry's checkpoint on disk, downloaded and verified on first use."""
    if _from_hub(spec):
        from vqclip.weights.clip import download_clip

        return download_clip(spec.name, progress=progress, offline=offline)
    from vqclip.weights.registry import fetch_model

    return fetch_model(spec, offline=offline, progress=progress).checkpoint
