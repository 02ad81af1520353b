"""Reading images (safely: no bombs) and turning them into tensors and back: [0, 1] float tensors
(1, 3, H, W) <-> PIL images. Reading imports no torch, so validation can read its inputs without it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from vqclip.errors import UsageError

if TYPE_CHECKING:
    import torch

MAX_PIXELS = 64_000_000  # an image larger than this (e.g. 8000x8000) is refused from its header, before decoding


def read_image(path: str | Path, what: str = "Image") -> tuple[Image.Image, dict]:
    """An image file's RGB pixels and its text chunks (PNG metadata), read whole, or one UsageError for a
    file that is missing, unreadable or truncated, larger than MAX_PIXELS, or a decompression bomb (a text
    chunk that inflates beyond Pillow's limits, a header that declares billions of pixels)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist.")
    too_large = UsageError(
        f"{what} {path} has more than {MAX_PIXELS // 1_000_000} megapixels, the limit for images vqclip reads.",
        "Scale it down first (vqclip resizes every input to the canvas anyway).",
    )
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise too_large
            im.load()  # every chunk, also those after the pixels: a truncated file fails here
            texts = dict(getattr(im, "text", None) or {})
            return im.convert("RGB"), texts
    except Image.DecompressionBombError:
        raise too_large from None
    except ValueError as err:  # Pillow's limits on text chunks (MAX_TEXT_CHUNK, MAX_TEXT_MEMORY)
        raise UsageError(
            f"{what} {path} is refused: a text chunk in it inflates beyond Pillow's limits ({err}).",
            "A file like this is a decompression bomb, made to exhaust memory; vqclip never writes one.",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as err:
        raise UsageError(f"{what} {path} is not an image that can be read ({err}).") from None


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height, then centre-crop to exactly that size."""
    scale = max(width / image.width, height / image.height)
    w, h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    image = image.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - width) // 2, (h - height) // 2
    return image.crop((left, top, left + width, top + height))


def to_tensor(image: Image.Image) -> torch.Tensor:
    import torch

    array = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pil(x: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> 8-bit RGB image."""
    x = x.detach().float().cpu().clamp(0, 1)
    if x.dim() == 4:
        x = x[0]
    array = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)
