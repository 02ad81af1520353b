"""kornia's `ColorJitter` applied with drawn parameters, the same transform in fewer operations.

kornia (0.9) applies, in the drawn `order` shared by the batch and only to the cutouts its `batch_prob`
selects: brightness multiplies the image by the factor; contrast blends it with the mean of its grey
(0.299 R + 0.587 G + 0.114 B) over the picture; saturation blends it with its grey, pixel by pixel; each
of the three then clamps to [0, 1]. Hue converts to HSV, turns the hue by `factor` turns and converts
back, without a clamp. The input and the result are clamped to [0, 1] with an identity gradient on the
closed range. A step is skipped when every factor of the batch is neutral.

All of it costs 0.15-0.2 CPU s forward and backward for 32 cutouts at 224 px on one thread instead of
kornia's 0.6-0.7 s (benchmarks/RESULTS.md), for the same values (to 1e-6) and gradient (to float rounding):

- `_HueShift` is kornia's `adjust_hue` with a backward written out. The hue and its sextant are computed
  with kornia's operations, so a pixel on a sextant's edge falls on the same side and gets kornia's
  one-sided derivative. Each output channel is V * (1 - w * S) with w a triangle wave of the hue (kornia's
  v, p, q, t: w = 0, 1, 1 - f, f), and the backward is the chain rule through V = max, min,
  S = (V - min) / (V + 1e-8) and the hue, with kornia's guard for grey pixels (it divides by 1) and the
  rule of `amax` / `amin` (the gradient split evenly between tied channels). kornia's round trip takes
  about 110 `torch.where`s forward and backward, which cost 4 times a multiplication on a CPU.
- `_ColourStep` is a clamped brightness, contrast or saturation step with a written-out backward.
- The clamps of the input and the result are skipped when the values are already in [0, 1], where they
  are the identity with an identity gradient; and only the cutouts that `batch_prob` selects are computed.
"""

import math

import torch
import torch.nn.functional as F

_NEUTRAL = (1.0, 1.0, 1.0, 0.0)
_FACTOR_KEYS = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
_GREY = (0.299, 0.587, 0.114)
_TWO_PI = 2 * math.pi

# Output channel k of kornia's hsv_to_rgb is V * (1 - w_k S), where w_k is a triangle wave of the hue P in
# sextants (0 <= P < 6): w_k = clamp(|P - centre_k| - 1, 0, 1) for G and B, 1 minus that for R. Within
# sextant i = floor(P) every w_k is 0, 1, f or 1 - f (f = P - i; kornia's v, p, q, t), so dw/dP is one
# channel's +-1: channel _SLOPE[i, 0] with sign _SLOPE[i, 1], the other two have slope 0.
_CENTRE = torch.tensor([3.0, 2.0, 4.0]).view(1, 3, 1, 1)
_SLOPE = torch.tensor([[1.0, -1.0], [0.0, 1.0], [2.0, -1.0], [1.0, 1.0], [0.0, -1.0], [2.0, 1.0]])


def _mask(compare, a: torch.Tensor, b) -> torch.Tensor:
    """compare(a, b) as 0.0 / 1.0 in a's dtype; b is a number or a tensor of a's shape."""
    return compare(a, b, out=torch.empty_like(a))


class _HueShift(torch.autograd.Function):
    """kornia.enhance.adjust_hue(x, turns * 2 * pi) for RGB x in [0, 1], (N, 3, H, W), turns (N,)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
        # rgb_to_hsv with kornia's operations. A 0/1 mask multiplies where kornia selects with `where` or
        # `masked_fill`: the same values at a quarter of the cost on a CPU (and masks are made as floats, as
        # a bool one costs a conversion in each use). kornia divides by 1 instead of V + 1e-8 for black
        # (V = 0): S = 0 either way, and every term of its gradient has a factor V or S.
        v, m = x.amax(1), x.amin(1)
        delta = v - m
        s_div = v + 1e-8
        s = delta / s_div
        c_zero = _mask(torch.eq, delta, 0.0)
        c_div = delta + c_zero  # kornia: 1 where delta = 0 (grey), delta elsewhere
        r, g, b = x.unbind(1)
        rf = _mask(torch.ge, r, g) * _mask(torch.ge, r, b)  # the first maximal channel, as kornia picks it
        gf = (1.0 - rf) * _mask(torch.ge, g, b)
        bf = 1.0 - rf - gf
        # (V - b) - (V - g), (V - r) - (V - b) + 2 c_div, (V - g) - (V - r) + 4 c_div, as kornia writes them
        num = rf * ((v - b) - (v - g)) + gf * ((v - r) - (v - b) + 2.0 * c_div) + bf * ((v - g) - (v - r) + 4.0 * c_div)
        hue = num / c_div
        # kornia's `%` and `remainder`, written for the ranges they see here: hue / 6 is in [-1/6, 5/6], the
        # turned hue in (-2 pi, 4 pi); Python's float `%` is the same, but torch's costs 5 additions on a CPU
        h = hue / 6.0
        h = _TWO_PI * (h + _mask(torch.lt, h, 0.0))
        kept = _mask(torch.lt, h, _TWO_PI)  # kornia fills a hue that rounded up to 2 pi with 0
        h = h * kept
        # adjust_hue_raw
        h = h + (turns * 2 * math.pi).view(-1, 1, 1)
        h = h + _TWO_PI * (_mask(torch.lt, h, 0.0) - _mask(torch.ge, h, _TWO_PI))
        kept2 = _mask(torch.lt, h, _TWO_PI)
        h = h * kept2
        # hsv_to_rgb: the sextant as kornia computes it (h * 6 rounds to 6 for a hue just under 2 pi: sextant 0)
        h = (h / _TWO_PI) * 6
        h = h - 6.0 * _mask(torch.ge, h, 6.0)
        sextant = torch.floor(h)
        dev = x.device
        w = ((h.unsqueeze(1) - _CENTRE.to(dev)).abs_() - 1.0).clamp_(0.0, 1.0)
        w[:, 0].neg_().add_(1.0)  # red's wave is upside down
        out = v.unsqueeze(1) * (1.0 - w * s.unsqueeze(1))
        # d(num)/d(R, G, B): (0, 1, -1), (-1, 0, 1) or (1, -1, 0); c_div enters num 0, 2 or 4 times
        num_coef = torch.stack((bf - gf, rf - bf, gf - rf), 1)
        c_div_coef = 2.0 * gf + 4.0 * bf
        slope_channel, slope = F.embedding(sextant.long().clamp_(0, 5), _SLOPE.to(x)).unbind(-1)
        slope_channel = slope_channel.long().unsqueeze(1)
        slope = slope * kept * kept2  # a filled hue has no gradient
        ctx.save_for_backward(x, v, m, s, s_div, c_div, c_zero, hue, w, slope_channel, slope, num_coef, c_div_coef)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, v, m, s, s_div, c_div, c_zero, hue, w, slope_channel, slope, num_coef, c_div_coef = ctx.saved_tensors
        grad = grad.contiguous()
        g_sum = grad.sum(1)
        g_w = (grad * w).sum(1)
        g_hue = grad.gather(1, slope_channel).squeeze(1) * slope * (-(v * s))
        g_v = g_sum - s * g_w  # out = V * (1 - w S)
        g_s = -v * g_w
        g_num = g_hue / c_div
        g_delta = g_s / s_div  # S = delta / s_div
        g_v -= g_s * s / s_div
        # hue = num / c_div, c_div = delta unless delta = 0
        g_delta += (g_num * c_div_coef - g_hue * hue / c_div) * (1.0 - c_zero)
        g_v += g_delta
        # V = amax, m = amin: the gradient is split evenly between tied channels
        # (float masks straight from the comparison: a bool mask costs a conversion in each use)
        at_v = torch.eq(x, v.unsqueeze(1), out=torch.empty_like(x))
        at_m = torch.eq(x, m.unsqueeze(1), out=torch.empty_like(x))
        g_x = num_coef * g_num.unsqueeze(1)
        g_x.addcmul_(at_v, (g_v / at_v.sum(1)).unsqueeze(1))
        g_x.addcmul_(at_m, (g_delta / at_m.sum(1)).neg_().unsqueeze(1))
        return g_x, None


def adjust_hue_turns(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """kornia's `adjust_hue(x, turns * 2 * pi)` (hue turned by `turns` of the circle) for RGB x in [0, 1]."""
    return _HueShift.apply(x, turns)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """kornia's rgb_to_grayscale: 0.299 R + 0.587 G + 0.114 B, (N, 1, H, W)."""
    r, g, b = x.unbind(-3)
    w_r, w_g, w_b = torch.tensor(_GREY, dtype=x.dtype, device=x.device).unbind()
    return torch.addcmul(torch.addcmul(r * w_r, g, w_g), b, w_b).unsqueeze(-3)


class _ColourStep(torch.autograd.Function):
    """One of kornia's clamped colour steps with a written-out backward. `step` 0: brightness, x * f;
    1: contrast, x * f + mean(grey(x)) * (1 - f); 2: saturation, (1 - f) * grey(x) + f * x; each clamped to
    [0, 1] by `torch.clamp`, whose derivative is 0 on and beyond the bounds. factor: (N, 1, 1, 1)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, step: int, factor: torch.Tensor) -> torch.Tensor:
        if step == 0:
            y = x * factor
        elif step == 1:
            y = x * factor + _grey(x).mean((-2, -1), True) * (1 - factor)
        else:
            y = (1 - factor) * _grey(x) + factor * x
        y.clamp_(0.0, 1.0)
        ctx.step = step
        ctx.save_for_backward(y, factor)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, factor = ctx.saved_tensors
        # torch.clamp's backward in one kernel (clamp's own takes four): y is in (0, 1) where y before the
        # clamp was
        grad = torch.ops.aten.hardtanh_backward(grad, y, 0.0, 1.0)
        g_x = grad * factor
        if ctx.step == 1:  # d mean(grey) / dx_k = w_k / (H W)
            total = grad.sum((-3, -2, -1), keepdim=True) * ((1 - factor) / (y.shape[-2] * y.shape[-1]))
            g_x += torch.tensor(_GREY, dtype=y.dtype, device=y.device).view(1, 3, 1, 1) * total
        elif ctx.step == 2:  # d grey / dx_k = w_k, per pixel
            total = grad.sum(-3, keepdim=True) * (1 - factor)
            g_x += torch.tensor(_GREY, dtype=y.dtype, device=y.device).view(1, 3, 1, 1) * total
        return g_x, None, None


def _clamp_unit_range(x: torch.Tensor) -> torch.Tensor:
    """x clamped to [0, 1] with an identity gradient on the closed range (kornia's `_clamp_unit_range`):
    x itself when it is in range, as the cutouts are (kornia's clamp and `where` cost as much as a step)."""
    low, high = torch.aminmax(x)
    if low >= 0 and high <= 1:
        return x
    clamped = x.clamp(0.0, 1.0)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return clamped
    return torch.where(clamped == x, x, clamped)


def _jitter(x: torch.Tensor, factors: tuple[torch.Tensor, ...], order: list[int], run: tuple[bool, ...]):
    factors = tuple(f.to(x).view(-1, 1, 1, 1) for f in factors)
    x = _clamp_unit_range(x)
    for step in order:
        if run[step]:
            x = _ColourStep.apply(x, step, factors[step]) if step < 3 else _HueShift.apply(x, factors[3].view(-1))
    return _clamp_unit_range(x)


def colour_jitter(x: torch.Tensor, params: dict) -> torch.Tensor:
    """kornia's `ColorJitter(...)(x, params=params)` for float32 RGB images x (N, 3, H, W), as the cutouts
    are (outside autocast): the cutouts that `params["batch_prob"]` selects are jittered, the others are
    returned as they are."""
    factors = tuple(params[k] for k in _FACTOR_KEYS)
    # kornia skips a step whose factors are all neutral, judged on the whole batch, selected or not
    run = tuple(bool((f != n).any()) for f, n in zip(factors, _NEUTRAL, strict=True))
    order = params["order"].tolist()
    chosen = torch.atleast_1d(params["batch_prob"] > 0.5).to(x.device)
    if bool(chosen.all()):
        return _jitter(x, factors, order, run)
    index = chosen.nonzero().squeeze(1)
    if not index.numel():
        return x
    picked = tuple(f.to(x.device)[index] for f in factors)
    return x.index_copy(0, index, _jitter(x[index], picked, order, run))
