"""Region prompts ("spot" prompts in pixray): a text prompt whose cutouts are drawn inside a part of the
canvas, so that it pulls that part of the image only. The part is a box or the white area of a mask image:

    --region "0,0,0.5,1:a red circle"        the left half, weight 1
    --region "0.5,0,1,1:a blue square:2"     the right half, weight 2 (":W:STOP" as in a prompt)
    --region "sky.png:a starry sky"          where sky.png is white (luminance at least half)

The box is X0,Y0,X1,Y1 in fractions of the canvas width and height (0,0 is the top-left corner). A mask is
stretched to the canvas; its cutouts are drawn inside the white area's bounding box, and the pixels of that
box outside the white area are shown to CLIP as flat grey (pixray's spot mask), so the prompt neither sees
nor pulls them. Several regions add their losses to the global prompt's (which may be empty). Parsing needs
no torch; a mask is read (once, by validation: vqclip.pipeline.validate) before any model loads.
"""

import math
import re
from dataclasses import dataclass, field, replace

from vqclip.errors import UsageError
from vqclip.prompts import Prompt, parse_prompt

SYNTAX = (
    '"X0,Y0,X1,Y1:PROMPT[:W[:STOP]]" with the box in fractions of the canvas, e.g. "0,0,0.5,1:a red circle", '
    'or "MASK.png:PROMPT[:W[:STOP]]"'
)
FILL = 0.5  # what CLIP sees of a mask region's box outside the mask: flat grey, as pixray's spot prompts
_BOX = re.compile(r"[\s\d.,+\-eE]*,[\s\d.,+\-eE]*")  # a head of numbers and commas is a box, never a path
_DRIVE = re.compile(r"[A-Za-z]:[\\/]")  # a Windows path's drive: its colon does not end the path


@dataclass(frozen=True)
class Region:
    """A prompt and where it draws: a box (x0, y0, x1, y1) in fractions of the canvas, or a mask image."""

    box: tuple[float, float, float, float] | None
    prompt: Prompt
    mask_path: str | None = None  # the mask image's path, as given (validation resolves it)
    sha256: str | None = None  # the mask file's sha256, once read
    mask: object = field(default=None, compare=False, repr=False)  # (H, W) bool numpy array: True = white

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in whole pixels of a width x height canvas (at least one pixel each way); for a mask, the
        bounding box of its white area on that canvas."""
        if self.mask_path is not None:
            import numpy as np

            mask = self.mask_at(width, height)
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
        x0, y0, x1, y1 = self.box
        left, top = min(int(round(x0 * width)), width - 1), min(int(round(y0 * height)), height - 1)
        right, bottom = max(int(round(x1 * width)), left + 1), max(int(round(y1 * height)), top + 1)
        return left, top, right, bottom

    def mask_at(self, width: int, height: int):
        """The mask stretched to a width x height canvas, (height, width) bool: a pixel is in when at least
        half of its area is white; a white area smaller than that everywhere keeps its largest share, so a
        mask that validation accepted never comes out empty. None for a box."""
        if self.mask is None:
            return None
        import numpy as np
        from PIL import Image

        white = Image.fromarray(self.mask.astype(np.uint8) * 255)
        share = np.asarray(white.resize((width, height), Image.Resampling.BOX), dtype=np.float32) / 255
        inside = share >= 0.5
        return inside if inside.any() else share == share.max()


def _split(text: str) -> tuple[str, str, str]:
    """(head, ':', rest) at the colon that ends the box or the mask's path."""
    start = 2 if _DRIVE.match(text) else 0
    cut = text.find(":", start)
    return (text, "", "") if cut < 0 else (text[:cut], ":", text[cut + 1 :])


def is_mask(text: str) -> bool:
    """Whether a --region value names a mask image rather than a box."""
    head, _, _ = _split(str(text))
    return not _BOX.fullmatch(head)


def parse_region(text: str) -> Region:
    """'X0,Y0,X1,Y1:PROMPT[:W[:STOP]]' or 'MASK:PROMPT[:W[:STOP]]' -> Region (a mask not read yet); one
    sentence for anything else."""
    head, sep, rest = _split(str(text))
    if not sep or not head.strip():
        raise UsageError(f"Region {text!r} should be {SYNTAX}.")
    prompt = parse_prompt(rest)
    if is_mask(text):
        if not prompt.text:
            raise UsageError(f"Region {text!r} has no prompt text after its mask image.")
        return Region(None, prompt, mask_path=head)
    try:
        box = tuple(float(v) for v in head.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise UsageError(f"Region {text!r} should be {SYNTAX}.")
    if not all(math.isfinite(v) and 0 <= v <= 1 for v in box):
        raise UsageError(f"Region {text!r}: the box's corners must be fractions between 0 and 1.")
    x0, y0, x1, y1 = box
    if not (x0 < x1 and y0 < y1):
        raise UsageError(f"Region {text!r}: the box needs X0 < X1 and Y0 < Y1 (left, top, right, bottom).")
    if not prompt.text:
        raise UsageError(f"Region {text!r} has no prompt text after its box.")
    return Region(box, prompt)


def with_mask(region: Region, path: str, sha256: str, image) -> Region:
    """A mask region with its mask read: the resolved path, the file's sha256 and the white area of the
    image (luminance at least half); a mask without any white is one sentence."""
    import numpy as np

    white = np.asarray(image.convert("L")) >= 128
    if not white.any():
        raise UsageError(
            f"Region mask {path} has no white area: its prompt would have nowhere to draw.",
            "White (or light grey) marks where the region's prompt draws; black, the rest.",
        )
    return replace(region, mask_path=path, sha256=sha256, mask=white)


def with_path(text: str, path: str) -> str:
    """A mask region's text with its path replaced by the resolved one (the prompt, weight and stop kept)."""
    _, _, rest = _split(text)
    return f"{path}:{rest}"
