"""The independent judge of the shapes world: a small CNN that names an image's shape, colour and
background. It shares nothing with the CLIPs (its own architecture, trained on whole renders with plain
cross-entropy), so an image that fools the guiding CLIP does not fool it for free.

`load_judge()` reads the shipped weights; `judge(images)` returns one `Verdict` per image.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vqclip.shapes.scenes import BACKGROUNDS, COLOURS, SHAPES, all_classes, render_array, sample_scene

INPUT_SIZE = 64  # images are area-resized to this before the network sees them
WEIGHTS = Path(__file__).parent / "weights" / "judge.pt"


def _stage(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, the second with stride 2."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Judge(nn.Module):
    """(N, 3, H, W) in [0, 1] -> logits for shape (N, 5), colour (N, 6) and background (N, 3)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            _stage(3, width), _stage(width, 2 * width), _stage(2 * width, 4 * width), _stage(4 * width, 4 * width)
        )
        self.shape = nn.Linear(4 * width, len(SHAPES))
        self.colour = nn.Linear(4 * width, len(COLOURS))
        self.background = nn.Linear(4 * width, len(BACKGROUNDS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="area") * 2 - 1
        h = self.features(x).mean((2, 3))  # (N, 4 * width): pooled, so several copies still read as one
        return self.shape(h), self.colour(h), self.background(h)


@dataclass(frozen=True)
class Verdict:
    """What the judge sees in one image, with its confidence (softmax probability) in each call."""

    shape: str
    colour: str
    background: str
    confidence: tuple[float, float, float]

    def check(self, shape: str, colour: str, background: str) -> dict[str, bool]:
        """Which attributes match the expected ones, and whether all do."""
        right = {
            "shape": self.shape == shape,
            "colour": self.colour == colour,
            "background": self.background == background,
        }
        return {**right, "all": all(right.values())}

    def __str__(self) -> str:
        return f"{self.colour} {self.shape} on {self.background}"


def load_judge(path: str | Path = WEIGHTS) -> Judge:
    """The trained judge, frozen, in eval mode."""
    model = Judge()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


def to_tensor(images) -> torch.Tensor:
    """PIL images, or a (N, 3, H, W) / (3, H, W) tensor in [0, 1], as a float (N, 3, H, W) tensor."""
    if isinstance(images, torch.Tensor):
        return (images if images.dim() == 4 else images[None]).float()
    import numpy as np

    images = images if isinstance(images, (list, tuple)) else [images]
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


@torch.no_grad()
def probabilities(images, model: Judge | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax probabilities of shape (N, 5), colour (N, 6) and background (N, 3) for each image."""
    model = model or load_judge()
    return tuple(logits.softmax(-1) for logits in model(to_tensor(images)))


def judge(images, model: Judge | None = None) -> list[Verdict]:
    """The judge's verdict on each image (PIL images or tensors in [0, 1])."""
    probs = probabilities(images, model)
    names = (SHAPES, list(COLOURS), list(BACKGROUNDS))
    verdicts = []
    for k in range(len(probs[0])):
        picks = [int(p[k].argmax()) for p in probs]
        conf = tuple(round(float(p[k, i]), 4) for p, i in zip(probs, picks, strict=True))
        verdicts.append(Verdict(*(n[i] for n, i in zip(names, picks, strict=True)), confidence=conf))
    return verdicts


@torch.no_grad()
def judge_reconstructions(vqgan, rng, per_class: int = 1, model: Judge | None = None) -> dict:
    """The judge on decode(encode(render)) of `per_class` renders of every class, drawn from `rng` (a numpy
    Generator): of how many, how many it calls right per attribute and all three, and colour right per
    colour (of 15 * per_class each). A colour the decoder cannot draw, guidance cannot draw either."""
    import numpy as np

    classes = [c for c in all_classes() for _ in range(per_class)]
    renders = [render_array(sample_scene(rng, shape=s, colour=c, background=b)) for s, c, b in classes]
    x = torch.from_numpy(np.stack(renders)).permute(0, 3, 1, 2).float() / 255
    rec = torch.cat([vqgan.decode(vqgan.encode_codes(chunk * 2 - 1)) for chunk in x.split(30)])
    verdicts = judge(rec.float().clamp(-1, 1).add(1).div(2), model)
    right = [v.check(*c) for v, c in zip(verdicts, classes, strict=True)]
    per_colour = {
        name: sum(r["colour"] for r, c in zip(right, classes, strict=True) if c[1] == name) for name in COLOURS
    }
    return {
        "of": len(right),
        **{k: sum(r[k] for r in right) for k in ("shape", "colour", "background", "all")},
        "colour_per_colour": per_colour,
    }
