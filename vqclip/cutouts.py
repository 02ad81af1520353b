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

The cut method (`--cut-method`, nerdyrodent's `--cut_method`) decides what each view is:

- "original": the random-size crops above (Crowson's notebook; vqclip's default);
- "updated", "nrupdated": the same crops with nerdyrodent's MakeCutoutsUpdate / MakeCutoutsNRUpdate
  augmentation settings;
- "latest" (nerdyrodent's default, MakeCutouts): no crop at all; every view is the whole canvas pooled to
  CLIP's size, (adaptive average pool + adaptive max pool) / 2, and only the augmentations tell them apart;
- "pixray": the pooled canvas too, 60 % of the views zoomed into a random square of it (a quarter to 95 % of
  its area; pixray's RandomResizedCrop, here square) and the rest whole;
- "overview": a share of whole-canvas pooled views that falls from 3/4 to 1/4 over the run, the rest
  crops (the overview-plus-inner-crops schedules of later CLIP-guided notebooks: outline first, detail later).

A view of the pooled canvas is a box on it (the whole box for an unzoomed view), resampled like a crop.
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
from vqclip.config import CUT_METHODS
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


POOLED_METHODS = ("latest", "pixray", "overview")  # the methods with views of the whole canvas pooled
PIXRAY_ZOOMED = 0.6  # pixray's share of zoomed views (its cutn_zoom = int(0.6 * cutn))

# Each augmentation's kornia settings: vqclip's ("original"), and where a cut method's reference sets them
# otherwise, its own (nerdyrodent's generate.py; pixray's MakeCutouts). "jitter" is brightness, contrast,
# saturation and hue; nerdyrodent's `latest` and `nrupdated` pad their affine warp with zeros (black).
AUGMENT_SETTINGS = {
    "affine": {"degrees": 15, "translate": 0.1, "shear": 5, "p": 0.7, "padding_mode": "border"},
    "perspective": {"distortion_scale": 0.7, "p": 0.7},
    "jitter": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.1, "p": 0.7},
    "erasing": {"scale": (0.1, 0.4), "ratio": (0.3, 1 / 0.3), "same_on_batch": True, "p": 0.7},
    "flip": {"p": 0.5},
    "sharpness": {"sharpness": 0.3, "p": 0.4},
}
METHOD_SETTINGS = {
    "latest": {"affine": {"padding_mode": "zeros"}, "sharpness": {"p": 0.5}},
    "updated": {
        "affine": {"degrees": 30, "shear": None, "p": 0.8},
        "perspective": {"distortion_scale": 0.2, "p": 0.4},
        "jitter": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.01, "hue": 0.01},
    },
    "nrupdated": {
        "affine": {"degrees": 30, "padding_mode": "zeros"},
        "perspective": {"distortion_scale": 0.5},
        "sharpness": {"p": 0.5},
    },
    "pixray": {
        "perspective": {"distortion_scale": 0.4},
        "jitter": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.1, "hue": 0.1, "p": 0.8},
    },
}
_AUGMENTATIONS = {
    "affine": K.RandomAffine,
    "perspective": K.RandomPerspective,
    "jitter": K.ColorJitter,
    "erasing": K.RandomErasing,
    "flip": K.RandomHorizontalFlip,
    "sharpness": K.RandomSharpness,
}


def build_augmentations(names: tuple[str, ...], method: str = "original") -> nn.ModuleList:
    """The kornia augmentations by name, with the cut method's settings (AUGMENT_SETTINGS, METHOD_SETTINGS)."""
    overrides = METHOD_SETTINGS.get(method, {})
    return nn.ModuleList(_AUGMENTATIONS[n](**(AUGMENT_SETTINGS[n] | overrides.get(n, {}))) for n in names)


def overview_share(progress: float) -> float:
    """The "overview" method's share of whole-canvas views at `progress` (0 at the first step, 1 at the end)."""
    return 0.75 - 0.5 * min(max(progress, 0.0), 1.0)


def pool_canvas(img: torch.Tensor, size: int) -> torch.Tensor:
    """The whole image (1, 3, H, W) pooled to (1, 3, size, size) as nerdyrodent's MakeCutouts does it:
    (adaptive average pool + adaptive max pool) / 2 (a non-square image is squeezed square)."""
    return (F.adaptive_avg_pool2d(img, size) + F.adaptive_max_pool2d(img, size)) / 2


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

    boxes: torch.Tensor  # (n, 3) integer-valued x, y, side, in pixels of the canvas, or of the pooled canvas
    augment: tuple[tuple[dict, dict], ...]  # per augmentation: (per-cutout parameters, shared parameters)
    noise: torch.Tensor | None  # (n, 3, s, s) noise already scaled by each cutout's factor
    pooled: torch.Tensor | None = None  # (n,) bool: the box lies on the canvas pooled to s x s (None: none do)

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def __getitem__(self, part: slice) -> "CutoutDraw":
        augment = tuple(({k: v[part] for k, v in rows.items()}, shared) for rows, shared in self.augment)
        noise = None if self.noise is None else self.noise[part]
        pooled = None if self.pooled is None else self.pooled[part]
        return replace(self, boxes=self.boxes[part], augment=augment, noise=noise, pooled=pooled)


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
        method: str = "original",
    ):
        super().__init__()
        if resample not in RESAMPLERS:
            raise ValueError(f"resample must be one of {RESAMPLERS}, not {resample!r}")
        if method not in CUT_METHODS:
            raise ValueError(f"method must be one of {CUT_METHODS}, not {method!r}")
        self.cut_size, self.cutn, self.cut_pow, self.noise_fac = cut_size, cutn, cut_pow, noise_fac
        self.method = method
        self.weights = area_weights if resample == "area" else lanczos_weights
        self.augs = build_augmentations(tuple(augment), method)
        self._per_cutout_keys = [_per_sample_keys(aug) for aug in self.augs]

    def draw(self, height: int, width: int, generator: torch.Generator, progress: float = 0.0) -> CutoutDraw:
        """Boxes, augmentation parameters and noise for `cutn` cutouts of an H x W image, all from
        `generator` (kornia draws from the global generator, so it runs in a forked one seeded from ours).
        `progress` (the step over the steps) sets the "overview" method's share of whole-canvas views.
        Every method draws the same numbers from `generator`, so the draws after these do not move."""
        n, device = self.cutn, generator.device
        max_size = min(height, width)
        min_size = min(height, width, self.cut_size)
        uniform = torch.rand(3, n, generator=generator, device=device)
        sizes = (uniform[0] ** self.cut_pow * (max_size - min_size) + min_size).floor()
        x, y = (uniform[1] * (width - sizes + 1)).floor(), (uniform[2] * (height - sizes + 1)).floor()
        boxes = torch.stack([x, y, sizes], 1)
        pooled = None
        if self.method in POOLED_METHODS:
            boxes, pooled = self._pooled_boxes(boxes, uniform, progress)
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
        return CutoutDraw(boxes, augment, noise, pooled)

    def _pooled_boxes(self, crops: torch.Tensor, uniform: torch.Tensor, progress: float):
        """The boxes of a pooled method's views: (0, 0, s) for a whole pooled canvas, a square inside it for
        pixray's zoomed views (from the same uniforms as the crops), the crops for overview's inner views."""
        n, s = len(crops), self.cut_size
        whole = torch.tensor([0.0, 0.0, float(s)], device=crops.device).expand(n, 3)
        pooled = torch.ones(n, dtype=torch.bool, device=crops.device)
        if self.method == "latest":
            return whole.clone(), pooled
        if self.method == "overview":
            k = round(n * overview_share(progress))
            pooled[k:] = False
            return torch.cat([whole[:k], crops[k:]]), pooled
        zoomed = int(PIXRAY_ZOOMED * n)  # pixray: the first views zoomed, the rest whole
        sides = (s * (0.25 + 0.7 * uniform[0, :zoomed]).sqrt()).floor().clamp(1, s)
        x, y = (uniform[1, :zoomed] * (s - sides + 1)).floor(), (uniform[2, :zoomed] * (s - sides + 1)).floor()
        return torch.cat([torch.stack([x, y, sides], 1), whole[zoomed:]]), pooled

    def _draw_params(self, aug: nn.Module, per_cutout: frozenset[str], n: int) -> tuple[dict, dict]:
        """kornia parameters for n cutouts, split into per-cutout rows and what the batch shares."""
        aug.set_rng_device_and_dtype(torch.device("cpu"), torch.float32)  # the forked generator's device
        params = aug.forward_parameters((n, 3, self.cut_size, self.cut_size))
        rows = {k: v for k, v in params.items() if k in per_cutout}
        return rows, {k: v for k, v in params.items() if k not in per_cutout}

    def forward(self, img: torch.Tensor, draw: CutoutDraw) -> torch.Tensor:
        """Cut out the drawn boxes, resample to `cut_size`, augment, add the drawn noise."""
        boxes = draw.boxes.to(img.device)
        if draw.pooled is None:
            cuts = self._resample(img, boxes)
        else:
            cuts = self._views(img, boxes, draw.pooled.to(img.device))
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

    def _resample(self, img: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The square boxes (n, 3) of img (1, 3, H, W), each resampled to (3, s, s) by two batched matmuls."""
        _, _, height, width = img.shape
        x, y, sizes = boxes.unbind(1)
        rows = self.weights(y, sizes, height, self.cut_size).to(img.dtype)  # (n, s, H)
        cols = self.weights(x, sizes, width, self.cut_size).to(img.dtype)  # (n, s, W)
        return (rows[:, None] @ img @ cols[:, None].transpose(-1, -2)).float()  # (n, 3, s, s)

    def _views(self, img: torch.Tensor, boxes: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Crops of the canvas where `pooled` is False; boxes of the pooled canvas where it is True (the whole
        pooled canvas, shared, where the box is all of it). Returned in the boxes' order."""
        s = self.cut_size
        canvas = pool_canvas(img, s)  # (1, 3, s, s)
        whole = pooled & (boxes[:, 2] >= s)
        groups = [(~pooled).nonzero().flatten(), whole.nonzero().flatten(), (pooled & ~whole).nonzero().flatten()]
        parts = [
            self._resample(img, boxes[groups[0]]),
            canvas.float().expand(len(groups[1]), -1, -1, -1),
            self._resample(canvas, boxes[groups[2]]),
        ]
        order = torch.cat(groups)
        return torch.cat(parts)[torch.argsort(order)]


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
