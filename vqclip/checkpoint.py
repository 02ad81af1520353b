"""Safe checkpoint reading (no pickled code ever runs) and strict state-dict loading with named mismatches.

The public taming `.ckpt` files are Lightning pickles that mention `pytorch_lightning` classes (e.g. the
`ModelCheckpoint` callback used as a dict key). They are read with `torch.load(weights_only=True)`, with
empty stand-in classes registered for those names only; any other non-torch global (`os.system`,
`builtins.eval`, ...) means the file wants to run code, and it is refused before unpickling.
"""

import pickle
import zipfile
from pathlib import Path

import torch

from vqclip.errors import CheckpointError, ModelLoadError

# Modules whose classes a training checkpoint may mention (callbacks, hyper-parameter containers) and
# which are safe to replace by empty classes: we never need their contents.
STUB_MODULE_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.")

_VERIFY_HINT = "Run `vqclip models verify` (or delete the file) to fetch a fresh copy."


def _stub(qualified_name: str):
    module, _, name = qualified_name.rpartition(".")
    return type(name, (), {"__module__": module})


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:  # torch raises RuntimeError, pickle errors or EOFError on damaged files
        raise CheckpointError(f"{path} is truncated or corrupt ({_short(err)}).", _VERIFY_HINT) from err


def _short(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__


def read_checkpoint(path: str | Path) -> dict:
    """Load a torch checkpoint on the CPU without executing pickled code; memory-mapped when possible."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" and zipfile.is_zipfile(path):
        needed = _unsafe_globals(path)
    elif head[:1] == b"\x80":  # the legacy (pre-1.6) format: plain pickle; only torch globals allowed
        needed = []
    elif head == b"PK\x03\x04":
        raise CheckpointError(f"{path} is truncated or corrupt (its zip archive is incomplete).", _VERIFY_HINT)
    else:
        raise CheckpointError(
            f"{path} is not a torch checkpoint (it starts with {head!r}; perhaps an HTML error page).", _VERIFY_HINT
        )
    refused = [g for g in needed if not g.startswith(STUB_MODULE_PREFIXES)]
    if refused:
        raise CheckpointError(
            f"{path} asks to run code on load ({', '.join(refused)}); refusing to open it.",
            "Only load checkpoints from sources you trust; vqclip never executes pickled code.",
        )
    stubs = [_stub(g) for g in needed]
    try:
        with torch.serialization.safe_globals(stubs):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=head == b"PK\x03\x04")
    except pickle.UnpicklingError as err:  # a legacy file that names a non-torch global
        raise CheckpointError(f"{path} needs code that vqclip will not run to load ({_short(err)}).") from err
    except Exception as err:
        raise CheckpointError(f"{path} is truncated or corrupt ({_short(err)}).", _VERIFY_HINT) from err


def state_dict_of(ckpt: dict) -> dict:
    """The tensors of a checkpoint: Lightning keeps them under 'state_dict'; plain saves are the dict."""
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError("The checkpoint holds no state dict.")
    return sd


def load_strict(model: torch.nn.Module, state_dict: dict, source: str, limit: int = 8) -> None:
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
        raise ModelLoadError(
            f"{source} does not match the model configuration; " + "; ".join(problems) + ".",
            "Check that the config (yaml) belongs to this checkpoint.",
        )
    model.load_state_dict(state_dict, strict=True)
