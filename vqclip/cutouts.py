"""Random cutouts of the image, resized to CLIP's input and augmented with kornia, in one batch.

After Crowson's VQGAN+CLIP notebook ("MakeCutouts"): crop sizes follow rand**cut_pow between CLIP's
input size and the image's shorter side. Each crop is resampled by a per-cutout weight matrix along each
axis, so all cutouts take two batched matmuls, forward and backward, instead of a Python loop:

- "area": exact area averaging, pixels weighted by their fractional overlap (adaptive average pooling
  rounds the windows to whole pixels);
- "lanczos": the reference's resample, a Lanczos-2 low-pass (when shrinking) then bicubic interpolation.

Everything random in a step (boxes, augmentation parameters, noise) is drawn at once for all cutouts from
an explicit generator (`Cutouts.draw`) and applied to any slice of them (`Cutouts.forward`), so the result
does not depend on how many cutouts CLIP sees at a time.
"""

import functools
import math
import warnings
from dataclasses import dataclass, replace

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from vqclip.colour_jitter import colour_jitter
from vqclip.determinism import warps_on_cpu

RESAMPLERS = ("area", "lanczos")


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


def _lanczos_kernel(ratio: float, lobes: int = 2) -> torch.Tensor:
    """The reference's low-pass: a Lanczos-`lobes` window sampled every `ratio` (= out / in), normalised."""
    n = math.ceil(lobes / ratio + 1)
    x = torch.arange(n, dtype=torch.float32) * ratio
    x = torch.cat([-x[1:].flip(0), x])[1:-1]
    kernel = torch.where(x.abs() < lobes, torch.sinc(x) * torch.sinc(x / lobes), torch.zeros(()))
    return kernel / kernel.sum()


@functools.lru_cache(maxsize=64)  # at most 64 x 224 x 512 floats; a 256 px canvas has 33 crop sizes
def lanczos_bicubic_matrix(size: int, out: int) -> torch.Tensor:
    """(out, size) matrix of the reference's 1-D resample: when shrinking, a Lanczos-2 filter with
    reflected edges, then bicubic interpolation with aligned corners. Built by resampling the unit
    signals, so it is exactly the reference's operation on each column."""
    x = torch.eye(size)[:, None, :, None]  # (size signals, 1, size, 1)
    if out < size:
        kernel = _lanczos_kernel(out / size)
        pad = (kernel.numel() - 1) // 2
        x = F.conv2d(F.pad(x, (0, 0, pad, pad), "reflect"), kernel[None, None, :, None])
    x = F.interpolate(x, (out, 1), mode="bicubic", align_corners=True)  # (size, 1, out, 1)
    return x[:, 0, :, 0].t()


def lanczos_weights(starts: torch.Tensor, sizes: torch.Tensor, full: int, out: int) -> torch.Tensor:
    """(N, out, full) matrices placing each crop's `lanczos_bicubic_matrix` at its offset."""
    weights = torch.zeros(len(starts), out, full)
    for k, (start, size) in enumerate(zip(starts.tolist(), sizes.tolist(), strict=True)):
        start, size = int(start), int(size)
        weights[k, :, start : start + size] = lanczos_bicubic_matrix(size, out)
    return weights.to(starts.device)


def build_augmentations(names: tuple[str, ...]) -> nn.ModuleList:
    """The kornia augmentations by name; "jitter" is the reference's (brightness, contrast, saturation, hue)."""
    table = {
        "affine": lambda: K.RandomAffine(degrees=15, translate=0.1, shear=5, p=0.7, padding_mode="border"),
        "perspective": lambda: K.RandomPerspective(0.7, p=0.7),
        "jitter": lambda: K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7),
        "erasing": lambda: K.RandomErasing((0.1, 0.4), (0.3, 1 / 0.3), same_on_batch=True, p=0.7),
        "flip": lambda: K.RandomHorizontalFlip(p=0.5),
        "sharpness": lambda: K.RandomSharpness(0.3, p=0.4),
    }
    return nn.ModuleList(table[n]() for n in names)


def _per_sample_keys(aug: nn.Module) -> frozenset[str]:
    """The entries of a kornia parameter dict that have one row per sample. The rest are shared by the
    batch (ColorJitter's `order`, `forward_input_shape`), and their shapes can coincide with a batch
    size, so they are told apart by drawing for two batch sizes."""
    with torch.random.fork_rng(devices=[]):
        one, two = aug.forward_parameters((1, 3, 8, 8)), aug.forward_parameters((2, 3, 8, 8))
    return frozenset(k for k, v in one.items() if torch.is_tensor(v) and v.dim() and v.shape[0] != two[k].shape[0])


@dataclass(frozen=True)
class CutoutDraw:
    """Everything random about `n` cutouts of one step; slicing it selects cutouts."""

    boxes: torch.Tensor  # (n, 3) integer-valued x, y, side, in pixels
    augment: tuple[tuple[dict, dict], ...]  # per augmentation: (per-cutout parameters, shared parameters)
    noise: torch.Tensor | None  # (n, 3, s, s) noise already scaled by each cutout's factor

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def __getitem__(self, part: slice) -> "CutoutDraw":
        augment = tuple(({k: v[part] for k, v in rows.items()}, shared) for rows, shared in self.augment)
        noise = None if self.noise is None else self.noise[part]
        return replace(self, boxes=self.boxes[part], augment=augment, noise=noise)


class Cutouts(nn.Module):
    """image (1, 3, H, W) in [0, 1] -> (n, 3, cut_size, cut_size) augmented cutouts."""

    def __init__(
        self,
        cut_size: int,
        cutn: int,
        cut_pow: float = 1.0,
        augment=(),
        noise_fac: float = 0.1,
        resample: str = "area",
    ):
        super().__init__()
        if resample not in RESAMPLERS:
            raise ValueError(f"resample must be one of {RESAMPLERS}, not {resample!r}")
        self.cut_size, self.cutn, self.cut_pow, self.noise_fac = cut_size, cutn, cut_pow, noise_fac
        self.weights = area_weights if resample == "area" else lanczos_weights
        self.augs = build_augmentations(tuple(augment))
        self._per_cutout_keys = [_per_sample_keys(aug) for aug in self.augs]

    def draw(self, height: int, width: int, generator: torch.Generator) -> CutoutDraw:
        """Boxes, augmentation parameters and noise for `cutn` cutouts of an H x W image, all from
        `generator` (kornia draws from the global generator, so it runs in a forked one seeded from ours)."""
        n, device = self.cutn, generator.device
        max_size = min(height, width)
        min_size = min(height, width, self.cut_size)
        uniform = torch.rand(3, n, generator=generator, device=device)
        sizes = (uniform[0] ** self.cut_pow * (max_size - min_size) + min_size).floor()
        x, y = (uniform[1] * (width - sizes + 1)).floor(), (uniform[2] * (height - sizes + 1)).floor()
        boxes = torch.stack([x, y, sizes], 1)
        seed = int(torch.randint(2**62, (), generator=generator, device=device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            augment = tuple(
                self._draw_params(aug, keys, n) for aug, keys in zip(self.augs, self._per_cutout_keys, strict=True)
            )
        noise = None
        if self.noise_fac:
            facs = torch.rand(n, 1, 1, 1, generator=generator, device=device) * self.noise_fac
            noise = facs * torch.randn(n, 3, self.cut_size, self.cut_size, generator=generator, device=device)
        return CutoutDraw(boxes, augment, noise)

    def _draw_params(self, aug: nn.Module, per_cutout: frozenset[str], n: int) -> tuple[dict, dict]:
        """kornia parameters for n cutouts, split into per-cutout rows and what the batch shares."""
        aug.set_rng_device_and_dtype(torch.device("cpu"), torch.float32)  # the forked generator's device
        params = aug.forward_parameters((n, 3, self.cut_size, self.cut_size))
        rows = {k: v for k, v in params.items() if k in per_cutout}
        return rows, {k: v for k, v in params.items() if k not in per_cutout}

    def forward(self, img: torch.Tensor, draw: CutoutDraw) -> torch.Tensor:
        """Cut out the drawn boxes, resample to `cut_size`, augment, add the drawn noise."""
        _, _, height, width = img.shape
        boxes = draw.boxes.to(img.device)
        x, y, sizes = boxes.unbind(1)
        rows = self.weights(y, sizes, height, self.cut_size).to(img.dtype)  # (n, s, H)
        cols = self.weights(x, sizes, width, self.cut_size).to(img.dtype)  # (n, s, W)
        cuts = (rows[:, None] @ img @ cols[:, None].transpose(-1, -2)).float()  # (n, 3, s, s)
        # kornia's geometry in fp32 whatever the autocast: in bf16 a perspective's homography solve can come
        # out singular and warp a cutout to NaN (seen within 40 steps on the shapes world's CLIP A)
        with torch.autocast(cuts.device.type, enabled=False):
            for aug, (per_cutout, shared) in zip(self.augs, draw.augment, strict=True):
                params = {**per_cutout, **shared}
                if isinstance(aug, K.ColorJitter):
                    # kornia's colour jitter, the same values and gradient in a quarter of its time (colour_jitter.py)
                    cuts = colour_jitter(cuts, params)
                elif runs_on(aug, cuts.device) and not (isinstance(aug, WARPS) and warps_on_cpu(cuts.device)):
                    cuts = aug(cuts, params=params)
                else:  # an op this device lacks, or --deterministic's warp: this augmentation alone runs on the CPU
                    cuts = aug(to_fallback(cuts), params={k: _fallback_param(v) for k, v in params.items()}).to(cuts)
        if draw.noise is not None:
            cuts = cuts + draw.noise.to(cuts.device)
        return cuts


# ---- augmentations on devices that lack an op they need ---------------------------------------------
#
# MPS has lacked, depending on the torch release, grid_sample with border padding (affine; pytorch#125098, fixed by
# 2.13) and grid_sample's backward (affine, perspective; a Metal kernel since pytorch#179756, April 2026), and
# other ops come and go. Each augmentation is tried once per device, forward and backward, on a small batch;
# one that fails runs on the CPU, the others stay on the device, and the user is told which.

WARPS = (K.RandomAffine, K.RandomPerspective)  # grid_sample, whose CUDA backward adds with atomics
PROBED_DEVICES = ("mps",)  # devices whose augmentation ops are tried before use (CUDA and the CPU have them all)
_RUNS_ON: dict = {}  # (augmentation class, its settings, device) -> whether it runs there


def to_fallback(x: torch.Tensor) -> torch.Tensor:
    """Where an augmentation runs when the device lacks one of its ops: the CPU."""
    return x.cpu()


def _fallback_param(value):
    return to_fallback(value) if torch.is_tensor(value) else value


def runs_on(aug: nn.Module, device: torch.device) -> bool:
    """Whether `aug` runs forward and backward on `device` (tried once; a device not in PROBED_DEVICES is
    trusted). The first failure is told as a warning naming the augmentation and the error."""
    if device.type not in PROBED_DEVICES:
        return True
    key = (type(aug), repr(aug), str(device))
    if key not in _RUNS_ON:
        try:
            with torch.random.fork_rng(devices=[]):  # the probe's own draw leaves the run's random state alone
                torch.manual_seed(0)
                aug.set_rng_device_and_dtype(torch.device("cpu"), torch.float32)
                params = aug.forward_parameters((2, 3, 16, 16))
                x = (torch.arange(2 * 3 * 16 * 16) % 17 / 16.0).reshape(2, 3, 16, 16)  # no draw on any device
                aug(x.to(device).requires_grad_(), params=params).sum().backward()
            _RUNS_ON[key] = True
        except (NotImplementedError, RuntimeError, TypeError) as err:
            _RUNS_ON[key] = False
            reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            warnings.warn(
                f"{device.type.upper()} in torch {torch.__version__} lacks an op of the {type(aug).__name__} "
                f"augmentation ({reason}); that augmentation runs on the CPU, the rest of each step on "
                f"{device.type.upper()}.",
                RuntimeWarning,
                stacklevel=2,
            )
    return _RUNS_ON[key]
