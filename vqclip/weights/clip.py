"""CLIP weights: parse a --clip name, find the weights (the Hugging Face cache, vqclip's cache, local files),
download them when missing, and load them into a frozen `ClipModel`.

Accepted model names:
    "ViT-B-32/openai"              a registry entry or any open_clip architecture/tag: the tag's weights file
                                   on the Hugging Face Hub, used from the Hugging Face cache (HF_HOME) when it
                                   is there, else downloaded into vqclip's cache like every other model
    "ARCH:WEIGHTS" "CFG.json:WEIGHTS"   an open_clip architecture or config file plus a local weights file

The caches are looked at first, so a missing model is one message at once when offline. vqclip downloads
Hub files with its own downloader (verified, resumable, locked, with progress events), so the Hugging Face
client's retries and log lines never reach the user, and no environment variable is touched. Every weights
file is read with vqclip's safe reader (`vqclip.weights.checkpoint.read_checkpoint`).
"""

import json
import logging
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vqclip.errors import DownloadError, OfflineError, OutOfMemoryError, UsageError, WeightsError
from vqclip.events import ProgressFn, ignore

HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's order


@dataclass(frozen=True)
class ClipSource:
    """Where a CLIP model comes from: an open_clip arch plus a tag or a local weights file."""

    name: str
    arch: str
    tag: str | None = None
    weights: str | None = None
    config_file: str | None = None


def known_archs() -> set[str]:
    """open_clip's architecture names, read from its model_configs folder without importing it (no torch),
    plus any configs added to an already imported open_clip."""
    import importlib.util
    import sys

    found = importlib.util.find_spec("open_clip")
    names = {p.stem for p in (Path(found.origin).parent / "model_configs").glob("*.json")} if found else set()
    if "open_clip" in sys.modules:
        names |= set(sys.modules["open_clip"].list_models())
    return names


def _local_source(name: str, config: str, weights: str) -> ClipSource:
    """Local files: an open_clip architecture name or a model-config JSON, and a weights file."""
    weights_path = Path(weights).expanduser()
    if not weights_path.is_file():
        raise UsageError(f"CLIP weights file {weights} does not exist.")
    if config.endswith(".json"):
        config_path = Path(config).expanduser()
        if not config_path.is_file():
            raise UsageError(f"CLIP config file {config} does not exist.")
        check_clip_config(config_path)
        return ClipSource(name, config_path.stem, weights=str(weights_path), config_file=str(config_path))
    return ClipSource(name, config, weights=str(weights_path))


# openai/CLIP's model names (`clip.available_models()`, as nerdyrodent's --clip_model and the notebooks type
# them) -> open_clip's architecture for the same weights, whose tag is "openai".
OPENAI_CLIP_NAMES = {
    "RN50": "RN50",
    "RN101": "RN101",
    "RN50x4": "RN50x4",
    "RN50x16": "RN50x16",
    "RN50x64": "RN50x64",
    "ViT-B/32": "ViT-B-32",
    "ViT-B/16": "ViT-B-16",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
}


# ---- a local model-config JSON, checked before anything is built -------------------------------------

_COUNT = "a whole number of at least 1"
_RATIO = "a finite number above 0"
_FLAG = "true or false"
# The fields of open_clip's CLIPVisionCfg / CLIPTextCfg / CLIP that size the model, and what each must be.
_TOP = {"embed_dim": _COUNT, "quick_gelu": _FLAG, "custom_text": _FLAG}
_VISION = {"width": _COUNT, "head_width": _COUNT, "patch_size": _COUNT, "mlp_ratio": _RATIO}
_VISION |= {"attn_pooler_queries": _COUNT, "attn_pooler_heads": _COUNT, "attentional_pool": _FLAG}
_TEXT = {"context_length": _COUNT, "vocab_size": _COUNT, "width": _COUNT, "heads": _COUNT, "layers": _COUNT}
_TEXT |= {"mlp_ratio": _RATIO}
_LAYERS = "a whole number of at least 1 (a ViT), or a list of four (a ResNet)"
_IMAGE_SIZE = "a whole number of at least 1, or a list of two (height, width)"


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_ratio(value) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _counts(value, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(map(_is_count, value))


_CHECKS = {_COUNT: _is_count, _RATIO: _is_ratio, _FLAG: lambda v: isinstance(v, bool)}
_CHECKS |= {_LAYERS: lambda v: _is_count(v) or _counts(v, 4), _IMAGE_SIZE: lambda v: _is_count(v) or _counts(v, 2)}


def _not_finite(value, key: str) -> str | None:
    """The first key (dotted) under `key` whose number is NaN or infinite."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return key
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _not_finite(v, f"{key}.{k}" if key else str(k))
        if found:
            return found
    return None


def check_clip_config(path: Path) -> dict:
    """A model-config JSON whose sizes open_clip can build from: every field that sizes the model is a positive
    whole number (or list of them) or a finite ratio, and no number anywhere is NaN or infinite. Returns the
    config; otherwise one UsageError naming the file, the key and the value (exit 2, before anything loads)."""
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UsageError(f"CLIP config {path} is not a JSON file that can be read ({err}).") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"CLIP config {path} must be a JSON object of settings, not {type(cfg).__name__}.")
    if "model_cfg" in cfg:
        raise UsageError(f"{path} is a hub config; pass its model_cfg as a plain JSON file.")
    bad = _not_finite(cfg, "")
    if bad:
        value = cfg
        for part in bad.split("."):
            value = value[int(part) if isinstance(value, list) else part]
        raise UsageError(f"CLIP config {path}: `{bad}` is {value!r}; it must be a finite number.")
    expected = [(key, kind, cfg) for key, kind in _TOP.items()]
    for tower, fields in (("vision_cfg", _VISION), ("text_cfg", _TEXT)):
        section = cfg.get(tower)
        if not isinstance(section, dict):
            raise UsageError(f"CLIP config {path}: `{tower}` must be an object of settings, not {section!r}.")
        expected += [(f"{tower}.{key}", kind, section) for key, kind in fields.items()]
    expected += [
        ("vision_cfg.layers", _LAYERS, cfg["vision_cfg"]),
        ("vision_cfg.image_size", _IMAGE_SIZE, cfg["vision_cfg"]),
    ]
    if "embed_dim" not in cfg:
        raise UsageError(f"CLIP config {path} has no `embed_dim` (the size of the joint embedding).")
    for key, kind, section in expected:
        field = key.rpartition(".")[2]
        if field in section and not _CHECKS[kind](section[field]):
            raise UsageError(f"CLIP config {path}: `{key}` is {section[field]!r}; it must be {kind}.")
    text = cfg["text_cfg"]
    if text.get("width", 512) % text.get("heads", 8):
        raise UsageError(
            f"CLIP config {path}: `text_cfg.width` ({text.get('width', 512)}) must be a multiple of "
            f"`text_cfg.heads` ({text.get('heads', 8)})."
        )
    return cfg


def canonical_clip_name(name: str) -> str:
    """The name vqclip records for a --clip value: openai/CLIP's names ("ViT-B/32", "RN50", "ViT-L/14@336px",
    any case) become open_clip's ARCH/openai ("ViT-B-32/openai"); every other value is kept as typed."""
    lookup = {key.lower(): arch for key, arch in OPENAI_CLIP_NAMES.items()}
    arch = lookup.get(name.strip().lower())
    return f"{arch}/openai" if arch else name


def _is_drive_colon(name: str, i: int) -> bool:
    """Whether the colon at `name[i]` is a Windows drive's ("C:\\..." or "C:/..."), at the start of the value or
    of the part after a separating colon."""
    return i >= 1 and name[i - 1].isalpha() and (i == 1 or name[i - 2] == ":") and name[i + 1 : i + 2] in ("\\", "/")


def split_local(name: str) -> tuple[str, str] | None:
    """(CONFIG or ARCH, WEIGHTS) of a local --clip value, or None. It splits at a colon that is not a Windows
    drive's, so that `C:\\m\\cfg.json:C:\\m\\w.safetensors` splits between the two paths: the last such colon
    whose right side is an existing file, else the last whose right side names a weights file."""
    colons = [
        i for i, char in enumerate(name) if char == ":" and 0 < i < len(name) - 1 and not _is_drive_colon(name, i)
    ]
    for looks_right in (
        lambda right: Path(right).expanduser().is_file(),
        lambda right: right.endswith(WEIGHT_SUFFIXES),
    ):
        for i in reversed(colons):
            if looks_right(name[i + 1 :]):
                return name[:i], name[i + 1 :]
    return None


WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def parse_clip_name(name: str) -> ClipSource:
    """Resolve a --clip value without loading anything (so bad names fail before heavy work; no torch).
    openai/CLIP's names are the OpenAI weights of open_clip's architecture, named canonically."""
    from vqclip.weights.pretrained import clip_arch

    local = split_local(name)
    if local is not None:
        return _local_source(name, *local)
    name = canonical_clip_name(name)
    from vqclip.weights.registry import all_specs

    spec = all_specs().get(name)
    if spec is not None and spec.kind == "clip":
        if spec.path:  # a user's entry for local files: `config` may be a model-config JSON
            return _local_source(name, spec.local_config or spec.clip_arch, spec.path)
        return ClipSource(name, spec.clip_arch, tag=spec.clip_tag)
    arch, sep, tag = name.partition("/")
    if sep and arch and tag:
        if arch not in known_archs():
            raise UsageError(f"Unknown CLIP architecture {arch!r}.", "`vqclip models list` shows common choices.")
        return ClipSource(name, clip_arch(arch, tag), tag=tag)
    raise UsageError(
        f"Unknown CLIP model {name!r}.",
        "Use ARCH/TAG (e.g. ViT-B-32/openai), a registry name, or CONFIG.json:WEIGHTS for local files.",
    )


# ---- where a tag's weights are ------------------------------------------------------------------


def _pretrained_cfg(source: ClipSource) -> dict:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(source.arch, source.tag) if source.tag else None
    if not cfg:
        raise UsageError(f"open_clip has no weights tagged {source.tag!r} for {source.arch}.")
    return cfg


def _registry_hub(source: ClipSource) -> str | None:
    """The `hf_hub` of a registry entry's tag, as the registry holds it: no open_clip import (`models list`)."""
    from vqclip.weights.pretrained import PRETRAINED

    for spec in PRETRAINED.values():
        if spec.kind == "clip" and (spec.clip_arch, spec.clip_tag) == (source.arch, source.tag) and spec.clip_hub:
            return spec.clip_hub
    return None


def _hub_files(source: ClipSource) -> tuple[str, tuple[str, ...]]:
    """(Hub repo id, weights file names) from open_clip's `hf_hub` entry ("org/repo/" or "org/repo/file")."""
    hub = _registry_hub(source)
    repo, filename = posixpath.split(hub if hub is not None else _pretrained_cfg(source).get("hf_hub", ""))
    return repo, (filename,) if filename else HF_WEIGHT_FILES


def hub_targets(source: ClipSource) -> list:
    """The files a tag's weights may be downloaded as (vqclip.weights.cache.FileTarget), in the order to try them:
    open_clip's Hub repo (safetensors, else the pickle), or the tag's own URL."""
    import huggingface_hub.constants as hf

    from vqclip.weights.cache import FileTarget, cache_dir

    repo, names = _hub_files(source)
    cfg = _pretrained_cfg(source) if not repo else {}
    if repo:
        folder = cache_dir() / "clip" / repo.replace("/", "--")
        files = [(f, f"{hf.ENDPOINT}/{repo}/resolve/main/{f}") for f in names]
    elif cfg.get("url"):
        folder = cache_dir() / "clip" / f"{source.arch}--{source.tag}"
        files = [(cfg["url"].rsplit("/", 1)[-1], cfg["url"])]
    else:
        return []
    return [
        FileTarget(
            _in_cache(source, folder / name),
            (url,),
            label=f"{source.name} ({name})",
            fetch_command=f"vqclip models download {source.name}",
            content="weights",
        )
        for name, url in files
    ]


def _in_cache(source: ClipSource, path: Path) -> Path:
    """A Hub file's place in vqclip's cache, refused (exit 2) when a link there leads out of the cache."""
    from vqclip.weights.cache import Escape, confine

    try:
        return confine(path)
    except Escape as err:
        raise UsageError(
            f"CLIP {source.name} cannot use {err.path}: {err.why}, and vqclip reads, writes and removes model "
            "files only inside their cache folder."
        ) from None


def hf_cached_weights(source: ClipSource) -> Path | None:
    """The tag's weights in the Hugging Face cache (HF_HOME, HF_HUB_CACHE), looked up without the network."""
    from huggingface_hub import try_to_load_from_cache

    repo, names = _hub_files(source)
    if not repo:
        return None
    for name in names:
        hit = try_to_load_from_cache(repo, name)
        if isinstance(hit, str):
            return Path(hit)
    return None


def fetch_clip_weights(source: ClipSource, offline: bool | None = None, progress: ProgressFn = ignore) -> Path:
    """The weights file of a --clip name: local, in a cache, or downloaded into vqclip's cache now."""
    from vqclip.weights.cache import cache_dir
    from vqclip.weights.download import fetch, offline_reason, online_again

    if source.weights:
        return Path(source.weights)
    hit = hf_cached_weights(source)
    if hit is not None:
        return hit
    targets = hub_targets(source)
    if not targets:
        raise WeightsError(f"open_clip names no download for CLIP {source.name}.", "Pass --clip CONFIG.json:WEIGHTS.")
    for target in targets:
        try:
            return fetch(target, offline=offline, progress=progress)
        except OfflineError:
            continue  # perhaps the next file is there; the message below names both caches
        except DownloadError as err:
            if err.causes != {"missing"} or target is targets[-1]:
                raise
    import huggingface_hub.constants as hf

    reason = offline_reason(offline)
    raise OfflineError(
        f"CLIP {source.name} is not in the Hugging Face cache ({hf.HF_HUB_CACHE}) nor in vqclip's "
        f"({cache_dir() / 'clip'}) and the network is off ({reason}).",
        f"Run `vqclip models download {source.name}` {online_again(reason)}, or pass local files as "
        "--clip CONFIG.json:WEIGHTS.",
    )


def _source(spec) -> ClipSource:
    return ClipSource(spec.name, spec.clip_arch, tag=spec.clip_tag)


def clip_files(spec) -> list:
    """The files of a CLIP registry entry in vqclip's cache (for `vqclip models verify`)."""
    return hub_targets(_source(spec))


def clip_status(spec) -> tuple[bool, bool]:
    """(cached, verified) of a CLIP registry entry, without the network."""
    from vqclip.weights.cache import is_verified

    if hf_cached_weights(_source(spec)) is not None:
        return True, True
    files = clip_files(spec)
    return any(t.path.is_file() for t in files), any(is_verified(t.path) for t in files)


def clip_path(spec) -> Path:
    """Where a CLIP entry's weights are, or where `vqclip models download` will put them."""
    files = clip_files(spec)
    present = [t.path for t in files if t.path.is_file()]
    return hf_cached_weights(_source(spec)) or (present or [t.path for t in files])[0]


def download_clip(name: str, progress: ProgressFn = ignore, offline: bool | None = None) -> Path:
    """Fetch a CLIP model's weights (for `vqclip models download`); returns their path."""
    return fetch_clip_weights(parse_clip_name(name), offline=offline, progress=progress)


# ---- loading ----------------------------------------------------------------------------------------


def _weights_sha256(path: Path) -> str:
    """The Hugging Face cache names its blobs by sha256; vqclip's cache records it; others are hashed."""
    from vqclip.weights.cache import read_stamp, sha256_file

    blob = path.resolve().name
    if len(blob) == 64 and all(c in "0123456789abcdef" for c in blob):
        return blob
    return (read_stamp(path) or {}).get("sha256") or sha256_file(path)


def _state_dict(path: Path) -> dict:
    """The tensors of a CLIP weights file, read safely; a training run's `state_dict` and DDP's `module.`
    prefix are unwrapped, as open_clip does."""
    from vqclip.weights.checkpoint import read_checkpoint, state_dict_of

    sd = state_dict_of(read_checkpoint(path))
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


class _Held(logging.Filter):
    """Keeps the records logged through the root logger instead of letting them through."""

    def __init__(self):
        super().__init__()
        self.records = []

    def filter(self, record) -> bool:
        self.records.append(record)
        return False


@contextmanager
def _root_logging_held() -> Iterator[list]:
    """open_clip logs through the root logger (`logging.warning(...)`, e.g. "No pretrained weights loaded"
    while we load them ourselves): unconfigured, that prints "WARNING:root:" lines and installs a handler
    for the rest of the process. Hold those records for the length of the call."""
    root = logging.getLogger()
    held, guard = _Held(), logging.NullHandler()  # a handler, so logging.warning() skips basicConfig()
    root.addFilter(held)
    root.addHandler(guard)
    try:
        yield held.records
    finally:
        root.removeFilter(held)
        root.removeHandler(guard)


def load_clip(name: "str | ClipSource", device="cpu", offline: bool | None = None, progress: ProgressFn = ignore):
    """Build an open_clip model with its weights, frozen, in eval mode: a `vqclip.models.clip.ClipModel`.
    `name` is a --clip value, or the ClipSource that validation already resolved from one."""
    import open_clip

    from vqclip.models.clip import wrap_clip
    from vqclip.weights.checkpoint import load_strict

    source = name if isinstance(name, ClipSource) else parse_clip_name(name)
    name = source.name
    if source.config_file:
        check_clip_sizes(source, check_clip_config(Path(source.config_file)))
        open_clip.add_model_config(source.config_file)
    weights = fetch_clip_weights(source, offline=offline, progress=progress)
    # the tag's normalisation (e.g. 0.5/0.5 for some LAION models); local files get open_clip's default
    norm = {k: v for k, v in _pretrained_cfg(source).items() if k in ("mean", "std")} if source.tag else {}
    with _allocation_failures(source), _root_logging_held():
        model = open_clip.create_model(source.arch, pretrained=None, device="cpu", force_preprocess_cfg=norm)
        tokenizer = open_clip.get_tokenizer(source.arch)
    with _allocation_failures(source):
        load_strict(
            model, _state_dict(weights), str(weights), hint="Check that the architecture (or CONFIG.json) fits them."
        )
        model.eval().requires_grad_(False)
        return wrap_clip(name, model, tokenizer, _weights_sha256(weights)).to(device)


def _too_big(source: ClipSource, what: str) -> OutOfMemoryError:
    config = f" (check the sizes in {source.config_file})" if source.config_file else ""
    return OutOfMemoryError(
        f"CLIP {source.name} does not fit in memory: {what}{config}.",
        "Close other programs or use a machine with more memory (the model is built in RAM, whatever --device).",
    )


def check_clip_sizes(source: ClipSource, cfg: dict) -> None:
    """Refuse, before building, a config whose transformer weights alone (about layers x 12 x width^2 floats per
    tower) exceed the memory that is free: building it would exhaust RAM instead of failing cleanly."""
    import torch

    from vqclip.memory import free_memory

    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    n = 0
    for tower in (vision, text):
        layers, width = tower.get("layers", 12), tower.get("width", 768)
        if isinstance(layers, int) and not tower.get("timm_model_name") and not tower.get("hf_model_name"):
            n += layers * (4 + 2 * tower.get("mlp_ratio", 4.0)) * width * width
    n += text.get("vocab_size", 49408) * text.get("width", 512)
    need, free = int(4 * n), free_memory(torch.device("cpu"))
    if need > free:
        raise _too_big(source, f"its weights take about {need / 2**30:.1f} GiB and {free / 2**30:.1f} GiB is free")


@contextmanager
def _allocation_failures(source: ClipSource) -> Iterator[None]:
    """An allocation that fails while building or loading (torch raises RuntimeError "can't allocate memory",
    or MemoryError) is the out-of-memory exit, not an unexpected failure."""
    import torch

    try:
        yield
    except (MemoryError, torch.OutOfMemoryError) as err:
        raise _too_big(source, str(err).splitlines()[0][:200] or "an allocation failed") from err
    except RuntimeError as err:
        text = str(err)
        if "allocate" not in text.lower() and "out of memory" not in text.lower():
            raise
        raise _too_big(source, text.splitlines()[0][:200]) from err
