"""Random cutouts of the image, resized to CLIP's input and augmented with kornia, in one batch.

After Crowson's VQGAN+CLIP notebook ("MakeCutouts"): crop sizes follow rand**cut_pow between CLIP's
input size and the image's shorter side. Each crop is resampled with exact area averaging (what
adaptive average pooling does), written as two batched matmuls with per-cutout weight matrices: one
operation for all cutouts, forward and backward, instead of a Python loop of pooling calls.
"""

import kornia.augmentation as K
import torch
from torch import nn


def area_weights(starts: torch.Tensor, sizes: torch.Tensor, full: int, out: int) -> torch.Tensor:
    """(N, out, full) matrices: row o of cutout k averages input pixels [start + o*s/out, start + (o+1)*s/out)
    weighted by their overlap, so `weights @ signal` is an exact area resize of each crop."""
    step = (sizes / out)[:, None, None]  # (N, 1, 1) input pixels per output pixel
    o = torch.arange(out, dtype=torch.float32, device=starts.device)[None, :, None]
    lo = starts[:, None, None] + o * step  # (N, out, 1)
    hi = lo + step
    i = torch.arange(full, dtype=torch.float32, device=starts.device)[None, None, :]  # (1, 1, full)
    overlap = (torch.minimum(hi, i + 1) - torch.maximum(lo, i)).clamp(min=0)  # (N, out, full)
    return overlap / overlap.sum(-1, keepdim=True)


def build_augmentations(names: tuple[str, ...]) -> nn.Module:
    table = {
        "affine": lambda: K.RandomAffine(degrees=15, translate=0.1, shear=5, p=0.7, padding_mode="border"),
        "perspective": lambda: K.RandomPerspective(0.7, p=0.7),
        "jitter": lambda: K.ColorJitter(hue=0.1, saturation=0.1, p=0.7),
        "erasing": lambda: K.RandomErasing((0.1, 0.4), (0.3, 1 / 0.3), same_on_batch=True, p=0.7),
        "flip": lambda: K.RandomHorizontalFlip(p=0.5),
        "sharpness": lambda: K.RandomSharpness(0.3, p=0.4),
    }
    return nn.Sequential(*(table[n]() for n in names))


class Cutouts(nn.Module):
    """image (1, 3, H, W) in [0, 1] -> (cutn, 3, cut_size, cut_size) augmented cutouts."""

    def __init__(self, cut_size: int, cutn: int, cut_pow: float = 1.0, augment=(), noise_fac: float = 0.1):
        super().__init__()
        self.cut_size, self.cutn, self.cut_pow, self.noise_fac = cut_size, cutn, cut_pow, noise_fac
        self.augs = build_augmentations(tuple(augment))

    def boxes(self, height: int, width: int, device) -> torch.Tensor:
        """(cutn, 5) boxes [batch, x1, y1, x2, y2] in pixel coordinates."""
        max_size = min(height, width)
        min_size = min(height, width, self.cut_size)
        sizes = (torch.rand(self.cutn) ** self.cut_pow * (max_size - min_size) + min_size).floor()
        ox = (torch.rand(self.cutn) * (width - sizes + 1)).floor()
        oy = (torch.rand(self.cutn) * (height - sizes + 1)).floor()
        zeros = torch.zeros(self.cutn)
        return torch.stack([zeros, ox, oy, ox + sizes, oy + sizes], 1).to(device)

    def forward(self, img: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Cut out `boxes` (default: `cutn` fresh random boxes), resample, augment, add noise."""
        _, _, height, width = img.shape
        if boxes is None:
            boxes = self.boxes(height, width, img.device)
        sizes = boxes[:, 3] - boxes[:, 1]
        rows = area_weights(boxes[:, 2], sizes, height, self.cut_size).to(img.dtype)  # (N, s, H)
        cols = area_weights(boxes[:, 1], sizes, width, self.cut_size).to(img.dtype)  # (N, s, W)
        cuts = rows[:, None] @ img @ cols[:, None].transpose(-1, -2)  # (N, 3, s, s)
        cuts = self.augs(cuts.float())
        if self.noise_fac:
            facs = cuts.new_empty([cuts.shape[0], 1, 1, 1]).uniform_(0, self.noise_fac)
            cuts = cuts + facs * torch.randn_like(cuts)
        return cuts
