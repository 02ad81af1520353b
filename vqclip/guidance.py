"""The guidance concepts: what CLIP pulls the image towards (Crowson et al. 2022, "VQGAN-CLIP"; the
loss of the reference notebook's `Prompt`). A `Target` is one prompt as CLIP sees it, a `Guide` is one CLIP
with its cutouts and its targets per story phase; image prompts are embedded from cutouts of the image.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

HALF_CHORD_MAX = 1 - 1e-6  # arcsin's gradient is infinite at 1, where rounding can put opposite directions


def spherical_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between the directions of x and y (broadcast over leading dims). The
    half chord is kept just below 1, so nearly opposite directions give a finite gradient, not NaN."""
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).clamp(max=HALF_CHORD_MAX).arcsin().pow(2).mul(2)


@dataclass
class Target:
    """One prompt as CLIP sees it: embeddings (K, D) (K = 1 for text, one per cutout for an image), a weight
    (negative pushes away) and a stop below which a cutout's distance no longer pulls."""

    embed: torch.Tensor
    weight: float = 1.0
    stop: float = float("-inf")

    def __post_init__(self):
        self.embed = self.embed.reshape(-1, self.embed.shape[-1])

    def loss(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """|w| * mean(sign(w) * d) over every (cutout, embedding) pair, as in the reference `Prompt`: the
        value is the raw distance, the gradient goes through max(sign(w) * d, stop), so a pair already
        past its stop contributes none."""
        d = spherical_dist(image_embeds[:, None], self.embed[None]) * math.copysign(1.0, self.weight)  # (N, K)
        stopped = torch.maximum(d, torch.full_like(d, self.stop))
        d = stopped + (d - stopped).detach()  # forward: d; backward: the gradient of max(d, stop)
        return abs(self.weight) * d.mean()


def area_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) with the aspect ratio of height x width and the area of `size` (w, h), never enlarged:
    how the reference sizes an image prompt before cutting it out."""
    area = min(height * width, size[0] * size[1])
    return round(math.sqrt(area * height / width)), round(math.sqrt(area * width / height))


@torch.no_grad()
def embed_image_prompt(clip, cutouts, image: torch.Tensor, size: tuple[int, int], generator) -> torch.Tensor:
    """An image prompt as the reference embeds it: the CLIP embeddings (cutn, D) of `cutn` augmented
    cutouts of the image (1, 3, H, W) in [0, 1], resized to the canvas area `size` (w, h) with its own
    aspect ratio; its Target pulls by the mean distance to all of them (several scales, nothing cropped)."""
    height, width = area_size(image.shape[2], image.shape[3], size)
    pixels = F.interpolate(image.float(), (height, width), mode="bicubic", antialias=True, align_corners=False)
    cuts = cutouts(pixels.clamp(0, 1), cutouts.draw(height, width, generator))
    return clip.encode_image(cuts).float()


@dataclass
class Guide:
    """A CLIP model, its cutout maker, and its targets per story phase."""

    clip: object  # vqclip.models.clip.ClipModel
    cutouts: torch.nn.Module  # vqclip.cutouts.Cutouts
    phases: list  # list[list[Target]]: targets of each phase (image/noise prompts in every phase)
    regions: list = field(default_factory=list)  # list[RegionTargets]: --region prompts, in every phase


@dataclass
class RegionTargets:
    """A region prompt as a guide sees it: its box in pixels (x0, y0, x1, y1) and its targets, whose
    cutouts are drawn inside the box; a mask region's box is its mask's bounding box, and what lies in the box
    outside the mask is shown as flat grey (vqclip.regions)."""

    box: tuple[int, int, int, int]
    targets: list  # list[Target]
    mask: torch.Tensor | None = None  # (1, 1, y1 - y0, x1 - x0) bool: True where the region draws

    @classmethod
    def of(cls, region, size: tuple[int, int], targets: list, device) -> "RegionTargets":
        """A vqclip.regions.Region on a canvas of `size` (w, h)."""
        box, mask = region.pixels(*size), region.mask_at(*size)
        if mask is not None:
            x0, y0, x1, y1 = box
            mask = torch.from_numpy(mask[y0:y1, x0:x1].copy())[None, None].to(device)
        return cls(box, targets, mask)

    def masked(self, part: torch.Tensor) -> torch.Tensor:
        """The box's pixels (B, 3, h, w) as the region's cutouts see them: the mask's outside flat grey, with
        no gradient there."""
        if self.mask is None:
            return part
        from vqclip.regions import FILL

        return torch.where(self.mask, part, torch.full((), FILL, dtype=part.dtype, device=part.device))
