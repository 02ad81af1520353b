"""Model lookup: the built-in registry plus the user's TOML entries, and fetching an entry into the cache.

User entries live in `$VQCLIP_CONFIG`, else `<platform config dir>/vqclip/config.toml`:

    [models.my_vqgan]
    kind = "vqgan"                                   # vqgan | transformer | clip | upscaler
    urls = ["https://example.org/my_vqgan.ckpt"]     # mirrors, tried in order (or: path = "/local/file.ckpt")
    sha256 = "..."                                   # optional; recorded at the first download if absent
    size = 980092370                                 # optional, bytes
    config_urls = ["https://example.org/my_vqgan.yaml"]   # or: config = "/local/model.yaml"
"""

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from vqclip.download import Target, cache_dir, fetch, is_verified
from vqclip.errors import UsageError
from vqclip.pretrained import PRETRAINED, FileSpec, WeightSpec

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


def _user_spec(name: str, entry: dict, source: Path) -> WeightSpec:
    kind = entry.get("kind", "vqgan")
    if kind not in KINDS:
        raise UsageError(f"Model {name!r} in {source} has kind {kind!r}; expected one of {', '.join(KINDS)}.")
    urls = tuple(entry.get("urls", ()))
    if isinstance(entry.get("url"), str):
        urls = (entry["url"], *urls)
    path = entry.get("path")
    if kind != "clip" and not urls and not path:
        raise UsageError(f"Model {name!r} in {source} needs `urls` or a local `path`.")
    checkpoint = FileSpec(entry.get("filename", "model.ckpt"), urls, entry.get("size"), entry.get("sha256"))
    config = None
    config_urls = tuple(entry.get("config_urls", ()))
    if config_urls:
        config = FileSpec(entry.get("config_filename", "model.yaml"), config_urls, None, entry.get("config_sha256"))
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
        local_config=str(Path(entry["config"]).expanduser()) if isinstance(entry.get("config"), str) else None,
    )


def user_specs() -> dict[str, WeightSpec]:
    path = user_config_path()
    if not path.is_file():
        return {}
    models = _toml_load(path).get("models", {})
    return {name: _user_spec(name, entry, path) for name, entry in models.items()}


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


def targets(spec: WeightSpec) -> list[Target]:
    """The files to download for an entry (checkpoint, then config), with their cache paths."""
    out = []
    for file in (spec.checkpoint, spec.config):
        if file is None or (file is spec.checkpoint and spec.path):
            continue
        out.append(
            Target(
                path=model_dir(spec) / file.filename,
                urls=file.urls,
                size=file.size,
                sha256=file.sha256,
                label=f"{spec.name} ({file.filename})",
                fetch_command=f"vqclip models download {spec.name}",
            )
        )
    return out


@dataclass(frozen=True)
class LocalModel:
    """An entry's files on disk: the checkpoint and its config (a path or inline taming yaml data)."""

    spec: WeightSpec
    checkpoint: Path
    config: Path | dict | None


def fetch_model(name: str, kind: str | None = None, offline: bool | None = None, quiet: bool = False) -> LocalModel:
    """Resolve a registry name to local files, downloading and verifying them on first use."""
    spec = get_spec(name)
    accepted = {"vqgan": ("vqgan", "transformer")}.get(kind, (kind,)) if kind else KINDS
    if spec.kind not in accepted:
        raise UsageError(f"{name} is a {spec.kind} model, not a {kind} model.")
    if spec.kind == "clip" and spec.checkpoint is None:
        raise UsageError(f"{name} is fetched by open_clip; load it with vqclip.clip_loading.load_clip.")
    paths = {t.path.name: fetch(t, offline=offline, quiet=quiet) for t in targets(spec)}
    checkpoint = Path(spec.path) if spec.path else paths[spec.checkpoint.filename]
    if spec.local_config:
        config = Path(spec.local_config)
    elif spec.config is not None:
        config = paths[spec.config.filename]
    else:
        config = spec.config_data
    return LocalModel(spec, checkpoint, config)


def status(spec: WeightSpec) -> tuple[bool, bool]:
    """(cached, verified) for an entry's downloadable files; CLIP entries are asked of open_clip's cache."""
    if spec.path:
        return Path(spec.path).is_file(), Path(spec.path).is_file()
    if spec.kind == "clip" and spec.checkpoint is None:
        from vqclip.clip_loading import clip_cached

        cached = clip_cached(spec)
        return cached, cached
    files = targets(spec)
    cached = all(t.path.is_file() for t in files)
    return cached, cached and all(is_verified(t.path, t.sha256) for t in files)


def looks_like_path(name: str) -> bool:
    """A model argument that names a file rather than a registry entry."""
    suffixes = (".ckpt", ".pt", ".pth", ".safetensors", ".bin", ".yaml", ".json")
    return name.startswith((".", "~", os.sep)) or name.endswith(suffixes) or os.path.exists(name)
