"""Region prompts ("spot" prompts in pixray): a text prompt whose cutouts are drawn inside a box of the
canvas, so that it pulls that part of the image only.

    --region "0,0,0.5,1:a red circle"        the left half, weight 1
    --region "0.5,0,1,1:a blue square:2"     the right half, weight 2 (":W:STOP" as in a prompt)

The box is X0,Y0,X1,Y1 in fractions of the canvas width and height (0,0 is the top-left corner). Several
regions add their losses to the global prompt's (which may be empty). Parsing needs no torch.
"""

import math
from dataclasses import dataclass

from vqclip.errors import UsageError
from vqclip.prompts import Prompt, parse_prompt

SYNTAX = '"X0,Y0,X1,Y1:PROMPT[:W[:STOP]]" with the box in fractions of the canvas, e.g. "0,0,0.5,1:a red circle"'


@dataclass(frozen=True)
class Region:
    """A prompt and its box (x0, y0, x1, y1) in fractions of the canvas."""

    box: tuple[float, float, float, float]
    prompt: Prompt

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in whole pixels of a width x height canvas (at least one pixel each way)."""
        x0, y0, x1, y1 = self.box
        left, top = min(int(round(x0 * width)), width - 1), min(int(round(y0 * height)), height - 1)
        right, bottom = max(int(round(x1 * width)), left + 1), max(int(round(y1 * height)), top + 1)
        return left, top, right, bottom


def parse_region(text: str) -> Region:
    """'X0,Y0,X1,Y1:PROMPT[:W[:STOP]]' -> Region; one sentence for anything else."""
    box_text, sep, rest = str(text).partition(":")
    try:
        box = tuple(float(v) for v in box_text.split(","))
    except ValueError:
        box = ()
    if not sep or len(box) != 4:
        raise UsageError(f"Region {text!r} should be {SYNTAX}.")
    if not all(math.isfinite(v) and 0 <= v <= 1 for v in box):
        raise UsageError(f"Region {text!r}: the box's corners must be fractions between 0 and 1.")
    x0, y0, x1, y1 = box
    if not (x0 < x1 and y0 < y1):
        raise UsageError(f"Region {text!r}: the box needs X0 < X1 and Y0 < Y1 (left, top, right, bottom).")
    prompt = parse_prompt(rest)
    if not prompt.text:
        raise UsageError(f"Region {text!r} has no prompt text after its box.")
    return Region(box, prompt)
