"""Is the prompt's shape drawn once, or as fragments? A measure that needs no network, and a verdict that does
not accept fragments as the shape.

The CNN judge pools its features over the picture, so two or three pieces of the right colour read as the
shape (issue 25: it was trained to accept 2-3 copies). Here the picture's pixels are split by colour
(each pixel goes to the nearest of the world's six colours and three backgrounds, if it is within
`MAX_DISTANCE` of it), and the prompt colour's pixels into 8-connected pieces:

- `pieces`: how many pieces of at least `min_piece` pixels (1/512 of the canvas: specks do not count);
- `largest_share`: the share of the colour's pixels in the largest piece (1.0: one piece);
- the fragment-aware verdict: the judge looks at the largest piece alone (pasted on the prompt's
  background, every other pixel erased) and must name the prompt's shape and colour; the background is
  the judge's call on the whole picture; and the largest piece must hold at least `COHERENT_SHARE` of the
  colour. A picture of one shape passes both verdicts; three small stars pass the old one only.
"""

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vqclip.shapes.scenes import BACKGROUNDS, COLOURS

MAX_DISTANCE = 110.0  # RGB distance beyond which a pixel belongs to no colour of the world (texture, blends)
COHERENT_SHARE = 0.75  # the largest piece must hold three quarters of the colour to count as one shape
_NAMES = (*COLOURS, *BACKGROUNDS)
_PALETTE = np.array([*COLOURS.values(), *BACKGROUNDS.values()], dtype=np.float32)  # (9, 3)


def colour_mask(image: Image.Image, colour: str) -> np.ndarray:
    """(H, W) bool: the pixels nearest to `colour` among the world's colours and backgrounds, and near it."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    dist = np.linalg.norm(rgb[:, :, None, :] - _PALETTE[None, None], axis=-1)  # (H, W, 9)
    k = _NAMES.index(colour)
    return (dist.argmin(-1) == k) & (dist[:, :, k] <= MAX_DISTANCE)


def label_pieces(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """8-connected components of a bool mask: labels (H, W) (0 outside, 1.. inside) and each one's size."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    sizes = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if labels[y0, x0]:
            continue
        label = len(sizes) + 1
        labels[y0, x0], size, queue = label, 0, deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            size += 1
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = label
                        queue.append((ny, nx))
        sizes.append(size)
    return labels, sizes


@dataclass(frozen=True)
class Coherence:
    """How the prompt's colour lies in a picture."""

    pieces: int  # pieces of at least min_piece pixels
    largest_share: float  # the largest piece's share of the colour's pixels (0 when there is none)
    colour_share: float  # the colour's share of the canvas

    @property
    def coherent(self) -> bool:
        return self.largest_share >= COHERENT_SHARE


def measure(image: Image.Image, colour: str) -> tuple[Coherence, np.ndarray]:
    """The coherence of `colour` in the image, and the mask of its largest piece."""
    mask = colour_mask(image, colour)
    labels, sizes = label_pieces(mask)
    total = int(mask.sum())
    min_piece = max(4, mask.size // 512)
    if not sizes:
        return Coherence(0, 0.0, 0.0), np.zeros_like(mask)
    biggest = int(np.argmax(sizes)) + 1
    found = Coherence(sum(s >= min_piece for s in sizes), max(sizes) / total, total / mask.size)
    return found, labels == biggest


def largest_piece(image: Image.Image, piece: np.ndarray, background: str) -> Image.Image:
    """The picture with only `piece` (a mask, grown by one pixel to keep its anti-aliased edge) kept, every
    other pixel painted the background's colour."""
    rows = piece.copy()
    rows[1:] |= piece[:-1]
    rows[:-1] |= piece[1:]
    grown = rows.copy()
    grown[:, 1:] |= rows[:, :-1]
    grown[:, :-1] |= rows[:, 1:]
    rgb = np.asarray(image.convert("RGB")).copy()
    rgb[~grown] = BACKGROUNDS[background]
    return Image.fromarray(rgb)


def fragment_verdict(image: Image.Image, shape: str, colour: str, background: str, model=None) -> dict:
    """The coherence measure and both verdicts on one picture: `right` (the judge on the whole picture, per
    attribute and "all") and `right_one_piece` (the fragment-aware verdict above), with what the judge saw."""
    from vqclip.shapes.judge import judge

    found, piece = measure(image, colour)
    whole, alone = judge([image, largest_piece(image, piece, background)], model)
    one_piece = (
        found.coherent
        and alone.shape == shape
        and alone.colour == colour
        and whole.background == background
        and bool(piece.any())
    )
    return {
        "pieces": found.pieces,
        "largest_share": round(found.largest_share, 4),
        "colour_share": round(found.colour_share, 4),
        "judge": str(whole),
        "right": whole.check(shape, colour, background),
        "judge_largest_piece": f"{alone.colour} {alone.shape}",
        "right_one_piece": one_piece,
    }
