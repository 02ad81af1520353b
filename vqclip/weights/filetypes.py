"""What a weights or config file is, judged from its bytes alone (no torch, nothing unpickled).

Dead file hosts answer with a web page where the model should be, and a download cut short leaves half a
file; these checks tell such files from real ones before they are cached as verified, and give the
checkpoint reader the list of Python globals a pickle refers to.

Formats:
    torch-zip      torch.save since 1.6: a zip holding `<name>/data.pkl` and the tensor data
    torch-legacy   torch.save before 1.6: several pickles in a row, the first one torch's magic number
    safetensors    an 8-byte header length, a JSON header, then raw tensor data
    torchscript    a torch.jit archive (code, not a state dict), e.g. OpenAI's original CLIP `.pt` files
"""

import _compat_pickle
import json
import pickletools
import struct
import zipfile
from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"
# pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2): the first record of a legacy torch file
LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
_LEGACY_PREFIX_PICKLES = 3  # magic number, protocol version, sys info; then the object itself

_WEB_PAGE_STARTS = (b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"<!--", b"<title", b"<meta", b"<script")
WEB_PAGE_TYPES = ("text/html", "application/xhtml+xml", "text/xml", "application/xml")


def looks_like_web_page(head: bytes) -> bool:
    """True when the first bytes of a body are HTML or XML markup (an error page, a login page)."""
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(_WEB_PAGE_STARTS)


def describe_start(head: bytes) -> str:
    """How a file starts, for a message: "a web page (HTML)" or its first bytes."""
    return "a web page (HTML)" if looks_like_web_page(head) else f"bytes {head[:16]!r}"


def _head(path: Path, n: int = 64) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def weights_format(path: Path) -> str:
    """'torch-zip', 'torch-legacy', 'safetensors' or 'torchscript'; ValueError says what the file is instead."""
    head = _head(path)
    if head.startswith(ZIP_MAGIC):
        return _zip_format(path)
    if head.startswith(LEGACY_MAGIC):
        return "torch-legacy"
    if _safetensors_header_fits(path, head):
        return "safetensors"
    if not head:
        raise ValueError("it is empty")
    raise ValueError(f"it starts with {describe_start(head)}, not with a torch or safetensors header")


def _zip_format(path: Path) -> str:
    if not zipfile.is_zipfile(path):
        raise ValueError("its zip archive is incomplete (truncated)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if _data_pkl(names) is None:
        raise ValueError("it is a zip archive but not a torch checkpoint (no data.pkl)")
    return "torch-zip"


def _data_pkl(names: list[str]) -> str | None:
    return next((n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")), None)


def _safetensors_header_fits(path: Path, head: bytes) -> bool:
    """A JSON header whose tensors end exactly at the end of the file (so a truncated file fails)."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", head[:8])
    size = path.stat().st_size
    if length > size - 8:
        return False
    with open(path, "rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return False
    try:
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (AttributeError, KeyError, IndexError, TypeError):  # JSON, but not a safetensors header
        return False
    return 8 + length + max(ends, default=0) == size


# ---- the globals a pickle refers to -------------------------------------------------------------


def pickle_globals(path: Path, fmt: str) -> list[str]:
    """The `module.name` globals the object pickle of a torch file refers to, in order, without unpickling.

    Only GLOBAL opcodes are listed: torch's restricted unpickler reads protocol 2, which names every
    global that way (it refuses later protocols' STACK_GLOBAL outright).
    """
    if fmt == "torch-zip":
        with zipfile.ZipFile(path) as archive, archive.open(_data_pkl(archive.namelist())) as f:
            return _globals(f)
    with open(path, "rb") as f:
        for _ in range(_LEGACY_PREFIX_PICKLES):
            for _op in pickletools.genops(f):
                pass
        return _globals(f)


def _globals(f) -> list[str]:
    found = []
    for opcode, arg, _pos in pickletools.genops(f):
        if opcode.name == "GLOBAL":
            module, name = arg.split(" ", 1)
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # Python 2 names, as pickle maps them
            if f"{module}.{name}" not in found:
                found.append(f"{module}.{name}")
    return found


# ---- is a downloaded file what it claims to be ------------------------------------------------------


def content_problem(path: Path, content: str) -> str | None:
    """None when `path` holds what `content` claims, else what it holds instead (for files without a sha256).

    checkpoint: a torch checkpoint (a taming `.ckpt`); weights: a torch or safetensors file (CLIP,
    Real-ESRGAN); taming-config: a yaml with a top-level `model:` mapping.
    """
    if content == "taming-config":
        return _taming_config_problem(path)
    try:
        fmt = weights_format(path)
    except ValueError as err:
        return f"not a weights file: {err}"
    if fmt == "torchscript":
        return "a TorchScript archive, not a checkpoint"
    if content == "checkpoint" and fmt == "safetensors":
        return "a safetensors file, not a taming checkpoint"
    return None


def _taming_config_problem(path: Path) -> str | None:
    import yaml

    head = _head(path)
    if looks_like_web_page(head):
        return "a web page (HTML), not a model config"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        return f"not a yaml file (it starts with {describe_start(head)})"
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        return "not a taming model config (no top-level 'model:' mapping)"
    return None
