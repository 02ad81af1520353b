"""The oldest library versions vqclip's code runs with, and one clear message for an older one.

pyproject.toml declares the same floors; these checks catch an environment that has older ones anyway (a
preinstalled torch, a notebook image), at the first use of the feature that needs them, instead of an
AttributeError deep inside a run (or a checkpoint taken for a damaged one).

- torch 2.5: `torch.serialization.safe_globals` as a context manager (pytorch#127939, merged 2024-07-12,
  after the 2.4 branch cut; 2.4 has only add/get/clear_safe_globals), used by `vqclip.weights.checkpoint`.
- open_clip_torch 2.32.0: `VisionTransformer._pool` (absent up to v2.31.0), used by vqclip's ViT forward;
  the Hugging Face Hub ids of the `openai` tags (`timm/..._clip_224.openai`) came in 2.29.0.
"""

import re

from vqclip.errors import VqclipError

MINIMUM = {"torch": (2, 5), "open_clip_torch": (2, 32, 0)}
WHAT_NEEDS = {
    "torch": "torch.serialization.safe_globals, with which vqclip reads weights safely",
    "open_clip_torch": "open_clip's VisionTransformer._pool and the Hub ids of the OpenAI CLIP weights",
}


class LibraryTooOld(VqclipError):
    """An installed library is older than the code needs."""


def parse_version(text: str) -> tuple[int, ...]:
    """'2.14.1+cu130' -> (2, 14, 1); '2.5.0a0' -> (2, 5, 0): the leading numbers of each dotted part."""
    parts = []
    for piece in str(text).split("+")[0].split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def require(package: str, installed: str) -> None:
    """LibraryTooOld when `installed` (the package's version) is below vqclip's floor for it."""
    floor = MINIMUM[package]
    if parse_version(installed) < floor:
        wanted = ".".join(map(str, floor))
        raise LibraryTooOld(
            f"vqclip needs {package} {wanted} or newer ({WHAT_NEEDS[package]}), but {installed} is installed.",
            f"Upgrade it: pip install -U '{package}>={wanted}'.",
        )


def require_torch() -> None:
    import torch

    require("torch", torch.__version__)


def require_open_clip() -> None:
    import open_clip

    require("open_clip_torch", getattr(open_clip, "__version__", "0"))
