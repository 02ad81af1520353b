"""The coherence measure and the fragment-aware verdict (vqclip.shapes.coherence, issue 25), on renders whose
pieces are known: one shape is one piece and right; three copies are three pieces and not "a red star";
a shape with a speck of its colour beside it is still that shape."""

import pytest
from PIL import ImageDraw

from vqclip.shapes.coherence import COHERENT_SHARE, fragment_verdict, largest_piece, measure
from vqclip.shapes.judge import load_judge
from vqclip.shapes.scenes import COLOURS, Placement, Scene, render

# One scene per shape, colours and backgrounds varied.
CASES = [
    ("circle", "red", "white"),
    ("square", "blue", "black"),
    ("triangle", "yellow", "gray"),
    ("star", "green", "white"),
    ("hexagon", "purple", "black"),
]
ONE = (Placement(0.5, 0.5, 0.3, 10.0),)
THREE = (Placement(0.22, 0.22, 0.15, 0.0), Placement(0.76, 0.28, 0.15, 20.0), Placement(0.45, 0.77, 0.15, -15.0))


@pytest.fixture(scope="module")
def the_judge():
    return load_judge()


def test_one_shape_is_one_piece_and_both_verdicts_accept_it(the_judge):
    """Five shapes, one copy each: one piece holding nearly all the colour, and the fragment-aware verdict
    right for at least 4 of the 5 (the judge reads clean renders; measured: 5 of 5)."""
    right = 0
    for shape, colour, background in CASES:
        seen = fragment_verdict(render(Scene(shape, colour, background, ONE)), shape, colour, background, the_judge)
        assert seen["pieces"] == 1 and seen["largest_share"] > 0.95, seen
        right += seen["right_one_piece"]
    assert right >= 4, right


def test_three_copies_are_three_pieces_and_not_the_shape(the_judge):
    """Three copies of the shape: three pieces, a third of the colour in the largest, and the fragment-aware
    verdict says no, whatever the CNN judge says of the whole picture (it pools over the picture)."""
    for shape, colour, background in CASES:
        seen = fragment_verdict(render(Scene(shape, colour, background, THREE)), shape, colour, background, the_judge)
        assert seen["pieces"] == 3 and seen["largest_share"] < COHERENT_SHARE, seen
        assert not seen["right_one_piece"], seen
        print(shape, "the judge on the whole picture:", seen["judge"], seen["right"]["all"])


def test_a_speck_beside_the_shape_is_another_piece_but_the_shape_stays_right(the_judge):
    """A small square of the colour beside the shape: two pieces, most of the colour in the shape, and the
    verdict judges the shape with the speck erased (the picture it judges has one piece; at least 4 of 5
    right; measured 5 of 5)."""
    right = 0
    for shape, colour, background in CASES:
        image = render(Scene(shape, colour, background, ONE))
        ImageDraw.Draw(image).rectangle((4, 4, 13, 13), fill=COLOURS[colour])
        seen = fragment_verdict(image, shape, colour, background, the_judge)
        assert seen["pieces"] == 2 and seen["largest_share"] > COHERENT_SHARE, seen
        right += seen["right_one_piece"]
        found, piece = measure(image, colour)
        alone, _ = measure(largest_piece(image, piece, background), colour)  # what the judge is shown
        assert alone.pieces == 1 and alone.largest_share > 0.99, alone
    assert right >= 4, right


def test_only_the_prompts_colour_is_measured():
    """A blue blob beside a red circle leaves the red circle one piece; the blue is measured on its own."""
    image = render(Scene("circle", "red", "white", ONE))
    ImageDraw.Draw(image).ellipse((2, 2, 30, 30), fill=COLOURS["blue"])
    red, _ = measure(image, "red")
    blue, _ = measure(image, "blue")
    assert red.pieces == 1 and red.largest_share > 0.95
    assert blue.pieces == 1 and 0.03 < blue.colour_share < 0.06
    empty, piece = measure(image, "green")
    assert empty.pieces == 0 and empty.largest_share == 0 and not piece.any()
