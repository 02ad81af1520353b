"""Model lookup: the built-in registry plus the user's TOML entries, and fetching an entry into the cache.

User entries live in `$VQCLIP_CONFIG`, else `<platform config dir>/vqclip/config.toml`:

    [models.my_vqgan]
    kind = "vqgan"                                   # vqgan | transformer | clip | upscaler
    urls = ["https://example.org/my_vqgan.ckpt"]     # mirrors, tried in order (or: path = "/local/file.ckpt")
    sha256 = "..."                                   # optional; recorded at the first download if absent
    size = 980092370                                 # optional, bytes
    config_urls = ["https://example.org/my_vqgan.yaml"]   # or: config = "/local/model.yaml"

A local `path` with no config uses the yaml beside the checkpoint (vqclip.weights.loading.find_config), unless a
config is given with the request (--vqgan-config).
"""

import difflib
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vqclip.errors import UsageError
from vqclip.events import ProgressFn, ignore
from vqclip.weights.cache import (
    Escape,
    FileTarget,
    cache_dir,
    confine,
    is_verified,
    plain_name,
    read_stamp,
    sha256_file,
)
from vqclip.weights.download import fetch
from vqclip.weights.pretrained import PRETRAINED, FileSpec, WeightSpec

KINDS = ("vqgan", "transformer", "clip", "upscaler")


def user_config_path() -> Path:
    env = os.environ.get("VQCLIP_CONFIG")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("vqclip", appauthor=False)) / "config.toml"


def _toml_load(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"Cannot read the model config file {path}: {err}.") from err


_STR, _STRS, _INT = "a string", "a list of strings", "a whole number"
# The keys of a user entry and what each must hold.
FIELDS = {
    "kind": _STR,
    "description": _STR,
    "license": _STR,
    "url": _STR,
    "urls": _STRS,
    "path": _STR,
    "filename": _STR,
    "size": _INT,
    "sha256": _STR,
    "config": _STR,
    "config_urls": _STRS,
    "config_filename": _STR,
    "config_sha256": _STR,
    "arch": _STR,
    "tag": _STR,
}


def _holds(value, expected: str) -> bool:
    if expected == _STR:
        return isinstance(value, str)
    if expected == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _type_name(value) -> str:
    names = {bool: "true/false", int: "a whole number", float: "a number", str: "a string", list: "a list"}
    return names.get(type(value), "a table" if isinstance(value, dict) else type(value).__name__)


def _check_entry(name: str, entry, source: Path) -> None:
    """Every key known and of the right type, so a typo or `urls = 5` is named instead of failing later."""
    where = f"Model {name!r} in {source}"
    if not isinstance(entry, dict):
        raise UsageError(f"{where} must be a table of settings, not {_type_name(entry)}.")
    for key, value in entry.items():
        expected = FIELDS.get(key)
        if expected is None:
            close = difflib.get_close_matches(key, list(FIELDS), n=1)
            hint = f"Did you mean `{close[0]}`? " if close else ""
            raise UsageError(f"{where} has an unknown key `{key}`.", hint + "Known keys: " + ", ".join(FIELDS) + ".")
        if not _holds(value, expected):
            raise UsageError(f"{where}: `{key}` must be {expected}, not {_type_name(value)} ({value!r}).")
    for key in ("filename", "config_filename"):  # a file in the model's cache folder, never anywhere else
        why = plain_name(entry[key]) if key in entry else None
        if why:
            raise UsageError(
                f"{where}: `{key}` must be a plain file name inside the model's cache folder, not {entry[key]!r} ({why})."
            )
    for key in ("sha256", "config_sha256"):
        digest = entry.get(key)
        if digest is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise UsageError(f"{where}: `{key}` must be 64 hexadecimal digits, not {digest!r}.")


def _user_spec(name: str, entry: dict, source: Path) -> WeightSpec:
    _check_entry(name, entry, source)
    kind = entry.get("kind", "vqgan")
    if kind not in KINDS:
        raise UsageError(f"Model {name!r} in {source} has kind {kind!r}; expected one of {', '.join(KINDS)}.")
    urls = tuple(entry.get("urls", ()))
    if "url" in entry:
        urls = (entry["url"], *urls)
    path = entry.get("path")
    if kind != "clip" and not urls and not path:
        raise UsageError(f"Model {name!r} in {source} needs `urls` or a local `path`.")
    sha256 = entry.get("sha256")
    checkpoint = FileSpec(entry.get("filename", "model.ckpt"), urls, entry.get("size"), sha256 and sha256.lower())
    config = None
    config_urls = tuple(entry.get("config_urls", ()))
    if config_urls:
        config_sha256 = entry.get("config_sha256")
        config = FileSpec(
            entry.get("config_filename", "model.yaml"), config_urls, None, config_sha256 and config_sha256.lower()
        )
    return WeightSpec(
        name=name,
        kind=kind,
        description=entry.get("description", f"user model from {source}"),
        checkpoint=None if kind == "clip" and not urls else checkpoint,
        config=config,
        clip_arch=entry.get("arch"),
        clip_tag=entry.get("tag"),
        license=entry.get("license", ""),
        path=str(Path(path).expanduser()) if path else None,
        local_config=str(Path(entry["config"]).expanduser()) if "config" in entry else None,
    )


def user_specs() -> dict[str, WeightSpec]:
    """The user's TOML entries, read once per process (again only if the file changes)."""
    path = user_config_path()
    try:
        stat = path.stat()
    except OSError:
        return {}
    if not path.is_file():
        return {}
    return dict(_read_user_specs(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _read_user_specs(path: str, mtime_ns: int, size: int) -> dict[str, WeightSpec]:
    source = Path(path)
    models = _toml_load(source).get("models", {})
    if not isinstance(models, dict):
        raise UsageError(f"`models` in {source} must be a table of [models.NAME] entries, not {_type_name(models)}.")
    for name in models:  # a name is the model's cache folder: it must stay inside the cache
        why = plain_name(name)
        if why and why != "it names a subfolder":
            raise UsageError(f"Model {name!r} in {source} cannot be used: its name is its cache folder and {why}.")
    return {name: _user_spec(name, entry, source) for name, entry in models.items()}


def all_specs() -> dict[str, WeightSpec]:
    """Built-in entries, then the user's (a user entry with a built-in name replaces it)."""
    return {**PRETRAINED, **user_specs()}


def list_specs(kind: str | None = None) -> list[WeightSpec]:
    return [s for s in all_specs().values() if kind is None or s.kind == kind]


def get_spec(name: str) -> WeightSpec:
    specs = all_specs()
    if name in specs:
        return specs[name]
    close = difflib.get_close_matches(name, list(specs), n=3, cutoff=0.5)
    hint = f"Did you mean {', '.join(close)}? " if close else ""
    raise UsageError(
        f"Unknown model {name!r}.",
        f"{hint}`vqclip models list` shows the known models; a path to a local file works too.",
    )


def model_dir(spec: WeightSpec) -> Path:
    return cache_dir() / spec.name


# What a downloaded file must be when no sha256 is published (vqclip.weights.filetypes.content_problem).
CHECKPOINT_CONTENT = {"vqgan": "checkpoint", "transformer": "checkpoint", "upscaler": "weights", "clip": "weights"}


def targets(spec: WeightSpec) -> list[FileTarget]:
    """The files to download for an entry (checkpoint, then config), with their cache paths.

    CLIP entries fetched through open_clip's Hub names have none here (vqclip.weights.clip.hub_targets).
    """
    files = [(spec.checkpoint, CHECKPOINT_CONTENT[spec.kind])] if spec.checkpoint and not spec.path else []
    if spec.config is not None:
        files.append((spec.config, "taming-config"))
    return [
        FileTarget(
            path=cache_file(spec, file.filename),
            urls=file.urls,
            size=file.size,
            sha256=file.sha256,
            label=f"{spec.name} ({file.filename})",
            fetch_command=f"vqclip models download {spec.name}",
            content=content,
        )
        for file, content in files
    ]


def cache_file(spec: WeightSpec, filename: str) -> Path:
    """`filename` in the entry's cache folder, or one sentence (exit 2) when it, or a link on the way, leads out."""
    try:
        return confine(model_dir(spec) / filename)
    except Escape as err:
        where = f" (check its entry in {user_config_path()})" if spec.name in user_specs() else ""
        raise UsageError(
            f"Model {spec.name!r} cannot use {err.path}: {err.why}, and vqclip reads, writes and removes model "
            f"files only inside their cache folder{where}."
        ) from None


@dataclass(frozen=True)
class LocalModel:
    """An entry's files on disk: the checkpoint and its config (a path or inline taming yaml data)."""

    spec: WeightSpec
    checkpoint: Path
    config: Path | dict | None

    @property
    def sha256(self) -> str:
        """The checkpoint's sha256: recorded when it was verified, or hashed (a user's local file)."""
        return (read_stamp(self.checkpoint) or {}).get("sha256") or sha256_file(self.checkpoint)


@dataclass(frozen=True)
class ModelSource:
    """A --vqgan, --transformer or upscaler value resolved once: a registry entry, or a local file."""

    name: str  # as the user gave it (recorded in the PNG)
    kind: str  # what it is used as: "vqgan", "transformer" or "upscaler"
    spec: WeightSpec | None = None  # the registry entry (None for a local file)
    path: Path | None = None  # the local file (None for a registry entry)


def resolve_model(name: str, kinds: tuple[str, ...], what: str) -> ModelSource:
    """A model argument as a ModelSource: a file that exists, or a registry entry of one of `kinds`."""
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UsageError(f"{what} {name} does not exist.")
        return ModelSource(name, kinds[0], path=path)
    spec = get_spec(name)
    if spec.kind not in kinds:
        raise UsageError(f"{name} is a {spec.kind} model, not a {' or '.join(kinds)} (see `vqclip models list`).")
    return ModelSource(name, kinds[0], spec=spec)


def fetch_model(
    name: "str | WeightSpec",
    kind: str | None = None,
    offline: bool | None = None,
    progress: ProgressFn = ignore,
) -> LocalModel:
    """Resolve a registry name (or an entry already looked up) to local files, downloading and verifying
    them on first use (progress as Progress events; nothing here prints)."""
    spec = name if isinstance(name, WeightSpec) else get_spec(name)
    name = spec.name
    accepted = {"vqgan": ("vqgan", "transformer")}.get(kind, (kind,)) if kind else KINDS
    if spec.kind not in accepted:
        raise UsageError(f"{name} is a {spec.kind} model, not a {kind} model.")
    if spec.kind == "clip" and spec.checkpoint is None:
        raise UsageError(f"{name} is fetched through open_clip; load it with vqclip.weights.clip.load_clip.")
    paths = {t.path.name: fetch(t, offline=offline, progress=progress) for t in targets(spec)}
    checkpoint = Path(spec.path) if spec.path else paths[spec.checkpoint.filename]
    if spec.local_config:
        config = Path(spec.local_config)
    elif spec.config is not None:
        config = paths[spec.config.filename]
    else:
        config = spec.config_data
    return LocalModel(spec, checkpoint, config)


def status(spec: WeightSpec) -> tuple[bool, bool]:
    """(cached, verified) for an entry with its own files (CLIP Hub entries: vqclip.weights.clip.clip_status)."""
    if spec.path:
        return Path(spec.path).is_file(), Path(spec.path).is_file()
    files = targets(spec)
    cached = all(t.path.is_file() for t in files)
    return cached, cached and all(is_verified(t.path, t.sha256) for t in files)


def looks_like_path(name: str) -> bool:
    """A model argument that names a file rather than a registry entry."""
    suffixes = (".ckpt", ".pt", ".pth", ".safetensors", ".bin", ".yaml", ".json")
    return name.startswith((".", "~", os.sep)) or name.endswith(suffixes) or os.path.exists(name)
