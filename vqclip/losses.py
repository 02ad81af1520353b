"""Pixel losses beside CLIP's (pixray's `smoothness`, `saturation`, `symmetry` and `palette`), each with a
weight, computed on the decoded image (1, 3, H, W) in [0, 1] and added to the step's loss:

- tv: total variation, the mean absolute difference between neighbouring pixels (smoothness); with --tile
  the differences wrap around, so the seams are smoothed too;
- saturation: 1 - the mean chroma (max - min of each pixel's RGB): a positive weight saturates, a negative
  one greys the image;
- symmetry: the mean absolute difference between the image and its left-right mirror;
- palette: the mean distance (RGB, 0..1) of each pixel to the nearest palette colour.

The measures the tests and benchmarks use (`mirror_error`, `total_variation`, `palette_fraction`,
`seam_error`) are here too, on PIL images or arrays. Parsing a palette needs neither torch nor a model.
"""

from dataclasses import dataclass

from vqclip.errors import UsageError


def parse_palette(colours) -> tuple[tuple[int, int, int], ...]:
    """Colour names or hex ("black", "#ff2200", "rgb(0,0,255)": whatever PIL's ImageColor reads) -> RGB."""
    from PIL import ImageColor

    items = colours.split(",") if isinstance(colours, str) else list(colours)
    out = []
    for item in items:
        name = str(item).strip()
        if not name:
            continue
        try:
            out.append(tuple(ImageColor.getrgb(name)[:3]))
        except ValueError:
            raise UsageError(
                f"--palette: {name!r} is not a colour (give names such as orange or hex such as #ff2200)."
            ) from None
    return tuple(out)


@dataclass(frozen=True)
class PixelLosses:
    """The weighted pixel losses of a run; `palette` holds RGB colours in 0..255."""

    tv: float = 0.0
    saturation: float = 0.0
    symmetry: float = 0.0
    palette: tuple = ()
    palette_weight: float = 0.0
    wrap: bool = False  # --tile: total variation across the seams too

    def __bool__(self) -> bool:
        return bool(self.tv or self.saturation or self.symmetry or (self.palette and self.palette_weight))

    def __call__(self, image):
        """The weighted losses (each a 0-dim tensor) of the image (1, 3, H, W) in [0, 1], in a fixed order."""
        import torch

        out = []
        if self.tv:
            if self.wrap:
                dx = image - image.roll(1, 3)
                dy = image - image.roll(1, 2)
            else:
                dx = image[..., :, 1:] - image[..., :, :-1]
                dy = image[..., 1:, :] - image[..., :-1, :]
            out.append(self.tv * (dx.abs().mean() + dy.abs().mean()))
        if self.saturation:
            chroma = image.max(1).values - image.min(1).values
            out.append(self.saturation * (1 - chroma.mean()))
        if self.symmetry:
            out.append(self.symmetry * (image - image.flip(3)).abs().mean())
        if self.palette and self.palette_weight:
            colours = torch.tensor(self.palette, dtype=image.dtype, device=image.device) / 255  # (K, 3)
            pixels = image.permute(0, 2, 3, 1).reshape(-1, 3)  # (N, 3)
            # the exact differences, not cdist's matmul form, whose cancellation gives the pixels already on a
            # colour a distance of rounding noise and a gradient in a random direction; a pixel exactly on one
            # (black or white, clamped) gets none
            squared = (pixels[:, None] - colours[None]).pow(2).sum(-1).min(1).values  # (N,)
            out.append(self.palette_weight * squared.clamp_min(1e-12).sqrt().mean())
        return out


# ---- measures (tests, benchmarks) ----------------------------------------------------------------------


def _array(image):
    import numpy as np

    if hasattr(image, "convert"):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    return np.asarray(image, dtype=np.float64)


def mirror_error(image) -> float:
    """Mean absolute difference (0..1) between an image and its left-right mirror."""
    x = _array(image)
    return float(abs(x - x[:, ::-1]).mean())


def total_variation(image) -> float:
    """Mean absolute difference (0..1) between horizontally and vertically neighbouring pixels, summed."""
    x = _array(image)
    return float(abs(x[:, 1:] - x[:, :-1]).mean() + abs(x[1:] - x[:-1]).mean())


def palette_fraction(image, palette, distance: float = 0.25) -> float:
    """The fraction of pixels within `distance` (Euclidean, RGB in 0..1) of a palette colour (RGB 0..255)."""
    import numpy as np

    x = _array(image).reshape(-1, 3)
    colours = np.asarray(palette, dtype=np.float64) / 255
    nearest = np.sqrt(((x[:, None] - colours[None]) ** 2).sum(-1)).min(1)
    return float((nearest <= distance).mean())


def seam_error(image) -> tuple[float, float]:
    """(seam, inner): the mean absolute difference across the wrap-around seams (last column against the
    first, last row against the first), and the largest such difference between two neighbouring columns or
    rows inside the image: a seam within it is no stronger an edge than the image already has."""
    x = _array(image)
    seam = (abs(x[:, -1] - x[:, 0]).mean() + abs(x[-1] - x[0]).mean()) / 2
    columns, rows = abs(x[:, 1:] - x[:, :-1]).mean((0, 2)), abs(x[1:] - x[:-1]).mean((1, 2))
    return float(seam), float(max(columns.max(), rows.max()))
