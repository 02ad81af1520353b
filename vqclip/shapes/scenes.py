"""The shapes world: one coloured shape on a plain background, rendered anti-aliased from a seed, and
the captions that describe it in several phrasings (some held out from training).

Every trained model of `vqclip.shapes` (the VQGAN, the two CLIPs, the judge) learns from these renders,
and the quality benchmark asks for them by caption, so this module is the world's single definition.
"""

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "hexagon")
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128)}

# Phrasings: the CLIPs train on TRAIN_TEMPLATES only; zero-shot accuracy is also measured on HELDOUT_TEMPLATES.
TRAIN_TEMPLATES = (
    "a {colour} {shape} on a {background} background",
    "{colour} {shape}, {background} background",
    "a {shape}, {colour}, against {background}",
    "a {background} background with a {colour} {shape}",
    "a picture of a {colour} {shape} on {background}",
    "{colour} {shape} over a {background} backdrop",
)
HELDOUT_TEMPLATES = (
    "an image of a {colour} {shape} on a plain {background} background",
    "{colour} {shape} on {background}",
    "a {shape} in {colour} set against {background}",
)
SUPERSAMPLE = 4  # draw at 4x and box-filter down: anti-aliased edges without an antialiasing rasteriser
ROTATION = 30  # degrees either way: enough to vary the pixels, little enough that a tiny ViT learns the shapes on a CPU


@dataclass(frozen=True)
class Placement:
    """Where one copy of the shape sits, as fractions of the image side: centre, radius, rotation."""

    x: float
    y: float
    radius: float
    angle: float  # degrees


@dataclass(frozen=True)
class Scene:
    """One shape in one colour on one background; usually one placement, the judge also trains on more."""

    shape: str
    colour: str
    background: str
    placements: tuple[Placement, ...]

    @property
    def labels(self) -> tuple[int, int, int]:
        """(shape, colour, background) as class indices."""
        return SHAPES.index(self.shape), list(COLOURS).index(self.colour), list(BACKGROUNDS).index(self.background)


def sample_placement(rng: np.random.Generator, min_radius=0.18, max_radius=0.36) -> Placement:
    radius = float(rng.uniform(min_radius, max_radius))
    x, y = (float(v) for v in rng.uniform(radius, 1 - radius, size=2))
    return Placement(x, y, radius, float(rng.uniform(-ROTATION, ROTATION)))


def sample_scene(rng: np.random.Generator, copies: int = 1, **labels) -> Scene:
    """A random scene; fix any of shape=, colour=, background= by keyword."""
    shape = labels.get("shape") or SHAPES[rng.integers(len(SHAPES))]
    colour = labels.get("colour") or list(COLOURS)[rng.integers(len(COLOURS))]
    background = labels.get("background") or list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    if copies == 1:
        placements = (sample_placement(rng),)
    else:  # smaller copies, so several fit
        placements = tuple(sample_placement(rng, 0.12, 0.26) for _ in range(copies))
    return Scene(shape, colour, background, placements)


def outline(shape: str, p: Placement, side: float) -> list[tuple[float, float]]:
    """The polygon of a shape (circles: the two corners of the bounding box) in pixels of a `side` canvas."""
    cx, cy, r = p.x * side, p.y * side, p.radius * side
    if shape == "circle":
        return [(cx - r, cy - r), (cx + r, cy + r)]
    if shape == "star":  # five points, the inner radius at 0.45 of the outer
        radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
    else:
        corners = {"square": 4, "triangle": 3, "hexagon": 6}[shape]
        radii = [r] * corners
    n = len(radii)
    a0 = math.radians(p.angle) - math.pi / 2
    return [
        (cx + rk * math.cos(a0 + 2 * math.pi * k / n), cy + rk * math.sin(a0 + 2 * math.pi * k / n))
        for k, rk in enumerate(radii)
    ]


def render(scene: Scene, size: int = 128) -> Image.Image:
    """The scene as an RGB image of size x size pixels, anti-aliased."""
    side = size * SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    for p in scene.placements:
        points = outline(scene.shape, p, side)
        if scene.shape == "circle":
            draw.ellipse(points, fill=fill)
        else:
            draw.polygon(points, fill=fill)
    return image.resize((size, size), Image.BOX)


def render_array(scene: Scene, size: int = 128) -> np.ndarray:
    """The render as uint8 (size, size, 3)."""
    return np.asarray(render(scene, size))


def caption(scene: Scene, template: str = TRAIN_TEMPLATES[0]) -> str:
    return template.format(shape=scene.shape, colour=scene.colour, background=scene.background)


def prompt(shape: str, colour: str, background: str) -> str:
    """The canonical phrasing ("a red star on a white background"), used by the benchmark and the tests."""
    return TRAIN_TEMPLATES[0].format(shape=shape, colour=colour, background=background)


def all_classes() -> list[tuple[str, str, str]]:
    """Every (shape, colour, background) combination, in a fixed order."""
    return [(s, c, b) for s in SHAPES for c in COLOURS for b in BACKGROUNDS]
