"""CLIP weights: parse a --clip name, find the weights (the Hugging Face cache, a registry entry, local
files) and load them into a frozen `ClipModel`.

Accepted model names:
    "ViT-B-32/openai"              a registry entry or any open_clip architecture/tag (weights via the
                                   Hugging Face cache: HF_HOME, HF_HUB_OFFLINE are honoured)
    "ARCH:WEIGHTS" "CFG.json:WEIGHTS"   an open_clip architecture or config file plus a local weights file
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from vqclip.errors import OfflineError, UsageError, WeightsError

HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class ClipSource:
    """Where a CLIP model comes from: an open_clip arch plus a tag or a local weights file."""

    name: str
    arch: str
    tag: str | None = None
    weights: str | None = None
    config_file: str | None = None


def parse_clip_name(name: str) -> ClipSource:
    """Resolve a --clip value without loading anything (so bad names fail before heavy work)."""
    left, sep, right = name.rpartition(":")
    if (
        sep
        and right
        and (Path(right).expanduser().is_file() or right.endswith((".pt", ".pth", ".bin", ".safetensors")))
    ):
        weights = Path(right).expanduser()
        if not weights.is_file():
            raise UsageError(f"CLIP weights file {right} does not exist.")
        if left.endswith(".json"):
            if not Path(left).expanduser().is_file():
                raise UsageError(f"CLIP config file {left} does not exist.")
            return ClipSource(name, Path(left).stem, weights=str(weights), config_file=str(Path(left).expanduser()))
        return ClipSource(name, left, weights=str(weights))
    from vqclip.registry import all_specs

    spec = all_specs().get(name)
    if spec is not None and spec.kind == "clip":
        if spec.path:  # local weights, with their open_clip model config when the arch is not built in
            return ClipSource(name, spec.clip_arch, weights=spec.path, config_file=spec.local_config)
        return ClipSource(name, spec.clip_arch, tag=spec.clip_tag)
    arch, sep, tag = name.partition("/")
    if sep and arch and tag:
        import open_clip

        if arch not in open_clip.list_models():
            raise UsageError(f"Unknown CLIP architecture {arch!r}.", "`vqclip models list` shows common choices.")
        if tag == "openai" and not arch.endswith("-quickgelu") and f"{arch}-quickgelu" in open_clip.list_models():
            arch = f"{arch}-quickgelu"  # OpenAI weights were trained with QuickGELU
        return ClipSource(name, arch, tag=tag)
    raise UsageError(
        f"Unknown CLIP model {name!r}.",
        "Use ARCH/TAG (e.g. ViT-B-32/openai), a registry name, or CONFIG.json:WEIGHTS for local files.",
    )


def _set_hf_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hf_constants

        hf_constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def _hf_cached_file(arch: str, tag: str) -> Path | None:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    repo = (cfg or {}).get("hf_hub", "").strip("/")
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in HF_WEIGHT_FILES:
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str):
            return Path(hit)
    return None


def clip_cached(spec) -> bool:
    return _hf_cached_file(spec.clip_arch, spec.clip_tag) is not None


def download_clip(name: str) -> Path:
    """Fetch a CLIP model's weights into the Hugging Face cache (for `vqclip models download`)."""
    source = parse_clip_name(name)
    if source.weights:
        return Path(source.weights)
    import open_clip

    cfg = open_clip.get_pretrained_cfg(source.arch, source.tag)
    if not cfg:
        raise UsageError(f"open_clip has no weights tagged {source.tag!r} for {source.arch}.")
    try:
        return Path(open_clip.download_pretrained(cfg))
    except Exception as err:
        raise WeightsError(f"Could not download CLIP {name}: {err}") from err


def _weights_sha256(source: ClipSource) -> str | None:
    from vqclip.download import sha256_file

    if source.weights:
        return sha256_file(Path(source.weights))
    cached = _hf_cached_file(source.arch, source.tag)
    if cached is None:
        return None
    blob = cached.resolve().name  # the HF cache names LFS blobs by their sha256
    return blob if len(blob) == 64 else sha256_file(cached)


def load_clip(name: str, device="cpu", offline: bool | None = None):
    """Build an open_clip model with its weights, frozen, in eval mode: a `vqclip.models.clip.ClipModel`."""
    import open_clip

    from vqclip.download import offline_mode
    from vqclip.models.clip import wrap_clip

    source = parse_clip_name(name)
    if source.config_file:
        cfg = json.loads(Path(source.config_file).read_text())
        if "model_cfg" in cfg:
            raise UsageError(f"{source.config_file} is a hub config; pass its model_cfg as a plain JSON file.")
        open_clip.add_model_config(source.config_file)
    if offline_mode(offline):
        _set_hf_offline()
    try:
        model = open_clip.create_model(
            source.arch, pretrained=source.weights or source.tag, device="cpu", require_pretrained=True
        )
    except RuntimeError as err:
        if source.tag and ("download" in str(err).lower() or offline_mode(offline)):
            cls = OfflineError if offline_mode(offline) else WeightsError
            raise cls(
                f"CLIP weights {name} are not available ({str(err).splitlines()[0]}).",
                f"Run `vqclip models download {name}` while online (HF_HOME decides where they go).",
            ) from err
        raise WeightsError(f"Could not load CLIP {name}: {err}") from err
    model.eval().requires_grad_(False)
    return wrap_clip(name, model, open_clip.get_tokenizer(source.arch), _weights_sha256(source)).to(device)
