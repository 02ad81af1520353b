"""--tile: seamless tiles. Two parts:

- each step the image is rolled by a random offset before the global prompt's cutouts (vqclip.optimize), so
  that CLIP sees the seams inside its cutouts and the composition wraps around (pixray's `tiler`);
- the VQGAN's decoder pads its convolutions circularly while a tiled run decodes (`circular`), so that the
  image is a function of the latent on a torus: the last column continues into the first, and the last
  row into the first, as smoothly as any two neighbouring columns. The roll alone leaves the seam: the
  decoder's zero padding draws every image's border differently from its inside (measured in the shapes
  world: the seam 7x the neighbouring-column difference with the roll alone; tests/test_controls_effects.py).
"""

import contextlib

from torch import nn


@contextlib.contextmanager
def circular(vqgan, on: bool = True):
    """The decoder's padded convolutions pad circularly inside this block (restored after it)."""
    if not on:
        yield
        return
    convs = [m for m in vqgan.decoder.modules() if isinstance(m, nn.Conv2d) and any(m.padding)]
    before = [m.padding_mode for m in convs]
    for m in convs:
        m.padding_mode = "circular"
    try:
        yield
    finally:
        for m, mode in zip(convs, before, strict=True):
            m.padding_mode = mode
