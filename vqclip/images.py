"""Reading images into tensors and back: [0, 1] float tensors (1, 3, H, W) <-> PIL images."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vqclip.errors import UsageError


def open_image(path: str | Path) -> Image.Image:
    """An RGB PIL image, or one clear error for a missing or unreadable file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"Image {path} does not exist.")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError(f"{path} is not an image Pillow can read ({err}).") from err


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height, then centre-crop to exactly that size."""
    scale = max(width / image.width, height / image.height)
    w, h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    image = image.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - width) // 2, (h - height) // 2
    return image.crop((left, top, left + width, top + height))


def to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pil(x: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> 8-bit RGB image."""
    x = x.detach().float().cpu().clamp(0, 1)
    if x.dim() == 4:
        x = x[0]
    array = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def load_image(path: str | Path, width: int, height: int) -> torch.Tensor:
    """An image file as a (1, 3, height, width) tensor in [0, 1], covering and centre-cropped."""
    return to_tensor(fit(open_image(path), width, height))
