"""Real-ESRGAN super-resolution (Wang et al. 2021) through spandrel, which builds the published architecture
without basicsr; the weights are read by vqclip's safe reader. Inference is tiled with overlap, so memory is bounded by
the tile size, not by the image size."""

from pathlib import Path

import torch

from vqclip.errors import UsageError, WeightsError
from vqclip.events import Progress, ProgressFn, ignore


def load_upscaler(path: str | Path, device="cpu", precision: str = "auto"):
    """A spandrel ImageModelDescriptor for a super-resolution checkpoint (e.g. RealESRGAN_x4plus.pth), in the
    precision vqclip.device.upscaler_precision picks (`--precision`; auto: bf16 on GPUs from compute
    capability 8.0, fp16 on older ones, fp32 elsewhere), where the model supports it.

    The file is read by vqclip's safe reader, like every weights file (same checks, same messages); spandrel
    then only recognises the architecture from the tensors."""
    import spandrel

    from vqclip.device import hardware, upscaler_precision
    from vqclip.weights.checkpoint import damaged_hint, read_checkpoint

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Upscaler weights {path} do not exist.")
    state_dict = spandrel.canonicalize_state_dict(read_checkpoint(path))  # unwraps `params_ema` and the like
    try:
        model = spandrel.ModelLoader().load_from_state_dict(state_dict)
    except Exception as err:  # spandrel raises many kinds: unknown architecture, shapes
        raise WeightsError(
            f"{path} is not a super-resolution model spandrel knows ({str(err).splitlines()[0][:200]}).",
            damaged_hint(path),
        ) from err
    if not isinstance(model, spandrel.ImageModelDescriptor):
        raise WeightsError(f"{path} is not an image-to-image model.")
    model = model.to(device).eval()
    wanted = upscaler_precision(precision, hardware(torch.device(device)))
    if wanted == "bf16" and model.supports_bfloat16:
        model = model.bfloat16()
    elif wanted == "fp16" and model.supports_half:
        model = model.half()
    return model


@torch.no_grad()
def upscale_tensor(
    model, image: torch.Tensor, tile: int = 256, overlap: int = 16, progress: ProgressFn = ignore
) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] -> (1, 3, sH, sW). Tiles of `tile` input pixels see `overlap` pixels of
    context on each side; only their centres are kept, so seams match the untiled result."""
    s = model.scale
    _, c, h, w = image.shape
    dtype = next(model.model.parameters()).dtype
    image = image.to(dtype)
    if not tile or (h <= tile and w <= tile):
        return model(image).float().clamp(0, 1)
    out = torch.zeros(1, c, h * s, w * s, dtype=image.dtype, device=image.device)
    boxes = [(y, x) for y in range(0, h, tile) for x in range(0, w, tile)]
    for n, (y0, x0) in enumerate(boxes):
        y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
        py0, px0 = max(y0 - overlap, 0), max(x0 - overlap, 0)
        py1, px1 = min(y1 + overlap, h), min(x1 + overlap, w)
        piece = model(image[:, :, py0:py1, px0:px1])
        oy, ox = (y0 - py0) * s, (x0 - px0) * s
        out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = piece[:, :, oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s]
        progress(Progress("upscale", n + 1, len(boxes), unit="tile", stage="upscale"))
    return out.float().clamp(0, 1)


def upscale_image(model, image, factor: int, tile: int = 256, progress: ProgressFn = ignore):
    """A PIL image upscaled by `factor` (2 or 4): the x4 model, then a Lanczos downscale for 2."""
    from PIL import Image

    from vqclip.images import to_pil, to_tensor

    if factor not in (2, 4) or factor > model.scale:
        raise UsageError(f"--upscale {factor} is not possible with a x{model.scale} model (use 2 or 4).")
    device = next(model.model.parameters()).device
    out = to_pil(upscale_tensor(model, to_tensor(image).to(device), tile=tile, progress=progress))
    if factor != model.scale:
        out = out.resize((image.width * factor, image.height * factor), Image.Resampling.LANCZOS)
    return out
