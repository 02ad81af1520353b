"""Videos in the shapes world, to measure `vqclip restyle`: a shape moving across the frame, and the two
figures a restyle is judged by besides the judge's verdict, flicker and how well the shape follows the input.
"""

import numpy as np
from PIL import Image

from vqclip.shapes.scenes import Placement, Scene, render


def moving_shape(
    frames: int = 16, size: int = 64, shape="circle", colour="red", background="white", radius=0.22
) -> list[Image.Image]:
    """A shape moving left to right at constant speed, from touching the left edge to touching the right."""
    xs = np.linspace(radius + 0.02, 1 - radius - 0.02, frames)
    return [render(Scene(shape, colour, background, (Placement(float(x), 0.5, radius, 0.0),)), size) for x in xs]


def _array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def flicker(frames: list) -> float:
    """The mean absolute difference between consecutive frames, in 8-bit levels (0..255)."""
    arrays = [_array(f) for f in frames]
    return float(np.mean([np.abs(b - a).mean() for a, b in zip(arrays, arrays[1:], strict=False)]))


def relative_flicker(output: list, source: list) -> float:
    """Flicker of the output over the input's own (the input resized to the output's size): about 1 when the
    output changes as much as the input does from frame to frame, more when it flickers."""
    size = output[0].size
    return flicker(output) / flicker([s.convert("RGB").resize(size, Image.Resampling.LANCZOS) for s in source])


def centroid(image, threshold: float = 80.0) -> tuple[float, float] | None:
    """The centroid (x, y, in fractions of the width and height) of the pixels that differ from the background
    (the median colour of the border) by more than `threshold` in RGB distance; None if there are none."""
    a = _array(image)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    background = np.median(border, axis=0)
    mask = np.linalg.norm(a - background, axis=-1) > threshold
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return float(xs.mean() + 0.5) / a.shape[1], float(ys.mean() + 0.5) / a.shape[0]


def centroid_errors(output: list, source: list) -> list[float]:
    """Per frame, the distance between the output's and the input's centroids in fractions of the image side
    (1.0 where the output has no shape at all)."""
    errors = []
    for out, src in zip(output, source, strict=True):
        a, b = centroid(out), centroid(src)
        errors.append(1.0 if a is None or b is None else float(np.hypot(a[0] - b[0], a[1] - b[1])))
    return errors
