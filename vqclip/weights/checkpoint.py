"""Safe reading of weights files (no pickled code ever runs) and strict state-dict loading with named mismatches.

Every weights file vqclip reads goes through `read_checkpoint`, whatever option named it (--vqgan,
--transformer, --clip CONFIG.json:WEIGHTS, the Hub's CLIP files, upscale --model), so each gets the same
checks and the same messages. safetensors files hold tensors only. Torch files are pickles: before
torch's restricted unpickler (`weights_only=True`) reads one, the globals its pickle names are listed
(`vqclip.weights.filetypes`, without unpickling) and sorted:

- torch's own (tensors, storages, dtypes, OrderedDict): left to torch's allowlist;
- plain data that real checkpoints hold (Lightning metadata with numpy scalars and dtypes, omegaconf
  hyper-parameters with `typing.Any`, `builtins.dict`, `collections.defaultdict`): allowed;
- classes of training libraries (pytorch_lightning, lightning, omegaconf): empty stand-ins, since we never
  need their contents and these libraries need not be installed;
- anything else (`os.system`, `builtins.eval`, `subprocess.Popen`, a class of someone's training script):
  refused before unpickling, naming the global.
"""

import pickle
import re
import typing
from pathlib import Path

import torch

from vqclip.errors import CheckpointError, ModelLoadError
from vqclip.weights.filetypes import pickle_globals, weights_format

# Modules whose classes a training checkpoint may mention (callbacks, hyper-parameter containers) and
# which are safe to replace by empty classes: we never need their contents.
STAND_IN_MODULES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.")

# Globals torch's own allowlist decides on (besides everything under `torch.`).
_TORCH_DECIDES = ("collections.OrderedDict", "collections.Counter", "_codecs.encode", "builtins.set")

_BUILTIN_DATA = (dict, list, tuple, frozenset, bytearray, complex, int, float, str, bytes, bool)


def _plain_dict(*_factory) -> dict:
    """Stands in for `collections.defaultdict`: torch's unpickler fills plain dicts only, and the default
    factory of a checkpoint's metadata is never used."""
    return {}


def _keep_args(self, *args, **kwargs) -> None:
    """The constructor of a stand-in class: called with an enum's value or a class's arguments, keeps them."""
    self.args, self.kwargs = args, kwargs


def data_globals() -> dict[str, object]:
    """Plain data types that real checkpoints refer to, by pickled name: safe to rebuild, nothing runs."""
    table = {f"builtins.{t.__name__}": t for t in _BUILTIN_DATA}
    table["collections.defaultdict"] = _plain_dict
    table["typing.Any"] = typing.Any
    table.update(_numpy_globals())
    return table


def _numpy_globals() -> dict[str, object]:
    """numpy scalars, dtypes and arrays: data only (Lightning stores `best_model_score` and friends so)."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    table = {"numpy.dtype": np.dtype, "numpy.ndarray": np.ndarray}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1 and 2 write different names
        table[f"{module}.scalar"] = multiarray.scalar
        table[f"{module}._reconstruct"] = multiarray._reconstruct
    for code in np.typecodes["All"]:  # a dtype is rebuilt as an instance of its own class, which BUILD checks
        cls = type(np.dtype(code))
        table[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return table


def _stand_in(qualified_name: str):
    module, _, name = qualified_name.rpartition(".")
    if name == "AttributeDict":  # Lightning's dict of hyper-parameters: torch fills plain dicts only
        return dict
    return type(name, (), {"__module__": module, "__init__": _keep_args})


def _sort_globals(names: list[str]) -> tuple[list[tuple[object, str]], list[str]]:
    """(the globals to allow, as (object, name) pairs for torch.serialization.safe_globals; the refused names)."""
    data = data_globals()
    allowed = [(obj, name) for name, obj in data.items()]
    refused = []
    for name in names:
        if name in data or name.startswith("torch.") or name in _TORCH_DECIDES:
            continue
        if name.startswith(STAND_IN_MODULES):
            allowed.append((_stand_in(name), name))
        else:
            refused.append(name)
    return allowed, refused


# ---- messages ----------------------------------------------------------------------------------------


def _short(err: Exception) -> str:
    """The gist of a library's exception: no terminal escape codes, one line, at most 200 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    gist = re.search(r"WeightsUnpickler error: (.*)", text)
    line = gist.group(1) if gist else (text.splitlines() or [type(err).__name__])[0]
    return line[:200]


def damaged_hint(path: Path) -> str:
    """What to do about a damaged weights file: re-fetch it if vqclip downloaded it, else replace it."""
    from vqclip.weights.cache import in_cache

    if in_cache(path):
        return "Run `vqclip models verify` (or delete the file) to fetch a fresh copy."
    return "Copy or download the file again, or check that the path names the right file."


def _refusal(path: Path, names: list[str]) -> CheckpointError:
    listed = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    which = "it is" if len(names) == 1 else "they are"
    return CheckpointError(
        f"{path} cannot be loaded safely: it refers to {listed}; {which} not plain data, loading the file "
        "would call code, and vqclip never runs code from a weights file.",
        "If you made this file, save just its tensors (torch.save(model.state_dict(), PATH)) and load that.",
    )


# ---- reading -------------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> dict:
    """Any weights file (torch zip or legacy, safetensors) as a dict, on the CPU, without running pickled
    code; zip checkpoints are memory-mapped. Every problem is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Weights file {path} does not exist.")
    try:
        fmt = weights_format(path)
    except ValueError as err:
        raise CheckpointError(f"{path} is not a weights file: {err}.", damaged_hint(path)) from err
    if fmt == "torchscript":
        raise CheckpointError(
            f"{path} is a TorchScript archive (code and weights together), not a state dict.",
            "vqclip reads state dicts; for OpenAI's CLIP files use the open_clip name, e.g. --clip ViT-B-32/openai.",
        )
    if fmt == "safetensors":
        return _read_safetensors(path)
    return _read_pickle(path, fmt)


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as err:  # safetensors raises its own error type for a damaged header or data
        raise CheckpointError(f"{path} is truncated or corrupt ({_short(err)}).", damaged_hint(path)) from err


def _read_pickle(path: Path, fmt: str) -> dict:
    try:
        names = pickle_globals(path, fmt)
    except Exception as err:  # pickletools raises ValueError on a damaged pickle, zipfile BadZipFile, ...
        raise CheckpointError(f"{path} is truncated or corrupt ({_short(err)}).", damaged_hint(path)) from err
    allowed, refused = _sort_globals(names)
    if refused:
        raise _refusal(path, refused)
    from vqclip.versions import require_torch

    require_torch()  # safe_globals below is torch 2.5's; an older torch is not a damaged file
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=fmt == "torch-zip")
    except pickle.UnpicklingError as err:  # torch's allowlist refused something our scan let through
        named = re.search(r"GLOBAL (\S+)", str(err))
        if named:
            raise _refusal(path, [named.group(1)]) from err
        raise CheckpointError(f"{path} cannot be read safely ({_short(err)}).", damaged_hint(path)) from err
    except Exception as err:
        raise CheckpointError(f"{path} is truncated or corrupt ({_short(err)}).", damaged_hint(path)) from err


# ---- state dicts ---------------------------------------------------------------------------------------


def state_dict_of(ckpt: dict) -> dict:
    """The tensors of a checkpoint: Lightning keeps them under 'state_dict'; plain saves are the dict."""
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError("The checkpoint holds no state dict.")
    return sd


def load_strict(
    model: torch.nn.Module,
    state_dict: dict,
    source: str,
    limit: int = 8,
    hint: str = "Check that the config (yaml) belongs to this checkpoint.",
) -> None:
    """Load every tensor of `state_dict` into `model`, naming missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} (model expects {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
            problems.append(f"{label}: {', '.join(keys[:limit])}{more}")
    if problems:
        raise ModelLoadError(f"{source} does not match the model configuration; " + "; ".join(problems) + ".", hint)
    model.load_state_dict(state_dict, strict=True)
