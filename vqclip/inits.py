"""Pixel inits beside random tokens and `noise` (uniform noise per pixel, nerdyrodent's `-in pixels`), each
an image (1, 3, H, W) in [0, 1] drawn from the run's generator and then encoded by the VQGAN:

- gradient: nerdyrodent's random gradient: red ramps left to right from 0, green top to bottom from 0,
  blue top to bottom, each to a random level;
- pixels: coarse pixels, one random colour per `cell` x `cell` block (the VQGAN factor: one per token);
- perlin: pixray's default, fractal Perlin noise (4 octaves, each half the amplitude of the last), one
  field per channel, stretched to 0..1.
"""

import math

import torch


def gradient_image(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    r_end, g_end, b_start, b_end = torch.rand(4, generator=generator).tolist()
    x = torch.linspace(0, 1, width)[None, :].expand(height, width)
    y = torch.linspace(0, 1, height)[:, None].expand(height, width)
    red, green, blue = x * r_end, y * g_end, b_start + (b_end - b_start) * y
    return torch.stack([red, green, blue])[None]


def pixels_image(height: int, width: int, cell: int, generator: torch.Generator) -> torch.Tensor:
    rows, cols = math.ceil(height / cell), math.ceil(width / cell)
    colours = torch.rand(1, 3, rows, cols, generator=generator)
    return colours.repeat_interleave(cell, 2).repeat_interleave(cell, 3)[:, :, :height, :width]


def _perlin(height: int, width: int, cells: int, generator: torch.Generator) -> torch.Tensor:
    """One octave: gradients at a (cells + 1)^2 lattice over the image, interpolated with Perlin's fade."""
    angles = torch.rand(cells + 1, cells + 1, generator=generator) * 2 * math.pi
    grads = torch.stack([angles.cos(), angles.sin()], -1)  # (cells + 1, cells + 1, 2)
    y = torch.linspace(0, cells, height, dtype=torch.float64).clamp(max=cells - 1e-6)[:, None].expand(height, width)
    x = torch.linspace(0, cells, width, dtype=torch.float64).clamp(max=cells - 1e-6)[None, :].expand(height, width)
    y0, x0 = y.floor().long(), x.floor().long()
    fy, fx = (y - y0).float(), (x - x0).float()

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = grads[y0 + dy, x0 + dx]
        return g[..., 0] * (fx - dx) + g[..., 1] * (fy - dy)

    fade = lambda t: t * t * t * (t * (t * 6 - 15) + 10)  # noqa: E731
    u, v = fade(fx), fade(fy)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return top * (1 - v) + bottom * v


def perlin_image(height: int, width: int, generator: torch.Generator, octaves: int = 4) -> torch.Tensor:
    channels = []
    for _ in range(3):
        field = sum(_perlin(height, width, 2**k, generator) * 0.5**k for k in range(1, octaves + 1))
        field = field - field.min()
        channels.append(field / field.max().clamp(min=1e-8))
    return torch.stack(channels)[None]


def init_pixels(kind: str, height: int, width: int, cell: int, generator: torch.Generator) -> torch.Tensor:
    """The init image of `kind` ('gradient', 'pixels' or 'perlin')."""
    if kind == "gradient":
        return gradient_image(height, width, generator)
    if kind == "pixels":
        return pixels_image(height, width, cell, generator)
    if kind == "perlin":
        return perlin_image(height, width, generator)
    raise ValueError(f"no pixel init {kind!r}")
