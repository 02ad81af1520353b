"""Zoom / rotate / shift animation: after each frame the image is transformed and re-encoded as the new
latent (the "zoom video" technique of the VQGAN+CLIP notebooks)."""

import math

import torch
import torch.nn.functional as F

from vqclip.optimize import decode_image


def affine_image(image: torch.Tensor, zoom: float = 1.0, rotate: float = 0.0, shift=(0.0, 0.0)) -> torch.Tensor:
    """Image (1, 3, H, W) zoomed about its centre by `zoom`, rotated by `rotate` degrees and shifted by
    `shift` pixels (x, y); borders are filled by replicating the edge."""
    _, _, h, w = image.shape
    angle = math.radians(rotate)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    # affine_grid maps output to input coordinates in [-1, 1]: the inverse of the wanted motion
    tx, ty = -2 * shift[0] / w, -2 * shift[1] / h
    theta = torch.tensor([[cos, -sin * h / w, tx], [sin * w / h, cos, ty]], dtype=torch.float32, device=image.device)
    grid = F.affine_grid(theta[None], list(image.shape), align_corners=False)
    return F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def latent_transform(vqgan, zoom: float, rotate: float, shift):
    """z -> z: decode, move the image, and restart from the model's own codes of the moved image
    (`encode_codes`, the init image's path). All in fp32, as the frame written out: it runs once a frame."""

    def transform(z: torch.Tensor) -> torch.Tensor:
        moved = affine_image(decode_image(vqgan, z), zoom, rotate, shift)
        with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
            return vqgan.encode_codes(moved * 2 - 1)

    return transform
