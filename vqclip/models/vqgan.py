"""The taming-transformers VQGAN (Esser et al. 2021, "Taming Transformers for High-Resolution Image
Synthesis"), inference only, with exactly the state-dict key layout of the public checkpoints.

Encoder and decoder are the "diffusionmodules" ResNet stacks; the quantiser is either the nearest-code
VectorQuantizer (`quantize.embedding.weight`) or the GumbelQuantize head (`quantize.proj`, `quantize.embed`),
read deterministically (argmax of the projection logits).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class VQGANConfig:
    embed_dim: int = 256  # codebook vector width
    n_embed: int = 16384  # codebook size
    z_channels: int = 256  # encoder output / decoder input channels
    resolution: int = 256  # training resolution: decides where attention sits, not the input size
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128  # base width, multiplied per level by ch_mult
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # one entry per level; len-1 downsamplings
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    double_z: bool = False
    gumbel: bool = False  # GumbelVQ checkpoints (quantize.proj + quantize.embed)

    @property
    def factor(self) -> int:
        """The downsampling factor f: an image of H x W pixels has an (H/f) x (W/f) latent."""
        return 2 ** (len(self.ch_mult) - 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


# ---- lean backward: keep what the input gradient needs, not what autograd keeps -----------------
#
# The optimisation loop back-propagates through a frozen decoder to its input only. Autograd keeps every
# convolution's input alive for the weight gradient nobody asks for, and GroupNorm and SiLU each keep their
# own input: six full-size tensors per ResnetBlock. A frozen convolution keeps nothing (its input gradient
# needs only the weight), and norm + SiLU is recomputed from its input in the backward pass (elementwise,
# cheap next to a convolution): two tensors per block, the same gradient to the last bit.


class _FrozenConv2d(torch.autograd.Function):
    """conv2d whose backward computes only the input gradient, from the weight: the input is not kept."""

    @staticmethod
    def forward(ctx, x, conv):
        ctx.conv, ctx.shape, ctx.dtype = conv, x.shape, x.dtype
        return conv(x)

    @staticmethod
    def backward(ctx, grad):
        conv = ctx.conv
        # The input's place: only its shape and layout are read. Allocated, never touched (no memory
        # is committed); a broadcast stand-in would be copied out to a full tensor in the input's layout.
        layout = (
            torch.channels_last if grad.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        )
        stand_in = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=layout)
        dx = torch.ops.aten.convolution_backward(
            grad,
            stand_in,
            conv.weight.to(grad.dtype),
            None,
            conv.stride,
            conv.padding,
            conv.dilation,
            False,
            [0],
            conv.groups,
            (True, False, False),
        )[0]
        return dx.to(ctx.dtype), None


def _needs_lean_backward(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def frozen_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x), keeping only the weight for the backward pass when the weight is frozen."""
    if _needs_lean_backward(x) and not conv.weight.requires_grad and conv.padding_mode == "zeros":
        return _FrozenConv2d.apply(x, conv)  # (its backward assumes zero padding; --tile pads circularly)
    return conv(x)


def _norm_silu(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return F.silu(norm(x))


def norm_silu(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """silu(norm(x)), recomputed in the backward pass from x (which GroupNorm keeps anyway)."""
    if _needs_lean_backward(x):
        return checkpoint(_norm_silu, norm, x, use_reentrant=False, preserve_rng_state=False)
    return _norm_silu(norm, x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = frozen_conv(self.conv1, norm_silu(self.norm1, x))
        h = frozen_conv(self.conv2, norm_silu(self.norm2, h))
        shortcut = frozen_conv(self.nin_shortcut, x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with 1x1 convolutions for q, k, v."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (frozen_conv(conv, y).reshape(b, 1, c, h * w).transpose(2, 3) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (b, 1, hw, c)
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return x + frozen_conv(self.proj_out, out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming pads right and bottom only


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return frozen_conv(self.conv, F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block.{j}`, `attn.{j}` where the level has attention, and a resampler."""

    def __init__(self, blocks, attns, resample_name=None, resample=None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        if resample is not None:
            setattr(self, resample_name, resample)


def _mid(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


class _Stack(nn.Module):
    """Shared forward helpers for Encoder and Decoder; `ckpt` recomputes each block in the backward pass."""

    @staticmethod
    def _run(module, x, ckpt: bool = False):
        if ckpt and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def _level(self, level, x, ckpt: bool = False):
        for j, block in enumerate(level.block):
            x = self._run(block, x, ckpt)
            if len(level.attn) > 0:
                x = self._run(level.attn[j], x, ckpt)
        return x

    def _middle(self, x, ckpt: bool = False):
        x = self._run(self.mid.block_1, x, ckpt)
        x = self._run(self.mid.attn_1, x, ckpt)
        return self._run(self.mid.block_2, x, ckpt)


class Encoder(_Stack):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        levels = len(cfg.ch_mult)
        in_mult = (1, *cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, 1, 1)
        res = cfg.resolution
        self.down = nn.ModuleList()
        for i in range(levels):
            block_in, block_out = cfg.ch * in_mult[i], cfg.ch * cfg.ch_mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            last = i == levels - 1
            self.down.append(_Level(blocks, attns, "downsample", None if last else Downsample(block_in)))
            if not last:
                res //= 2
        self.mid = _mid(block_in)
        self.norm_out = _norm(block_in)
        out = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.conv_out = nn.Conv2d(block_in, out, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = self._level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self._middle(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(_Stack):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = _mid(block_in)
        up = [None] * levels
        for i in reversed(range(levels)):
            block_out = cfg.ch * cfg.ch_mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):  # the decoder has one more block per level
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            up[i] = _Level(blocks, attns, "upsample", Upsample(block_in) if i != 0 else None)
            if i != 0:
                res *= 2
        self.up = nn.ModuleList(up)  # indexed by level, as in the checkpoints
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, 1, 1)

    def forward(self, z, checkpointing: bool = False):
        """`checkpointing`: recompute each block in the backward pass (less memory, a little more time)."""
        h = self._middle(frozen_conv(self.conv_in, z), checkpointing)
        for level in reversed(self.up):
            h = self._level(level, h, checkpointing)
            if hasattr(level, "upsample"):
                h = self._run(level.upsample, h, checkpointing)
        return frozen_conv(self.conv_out, norm_silu(self.norm_out, h))


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor, codebook_sq: torch.Tensor | None = None):
    """Indices (B, h, w) of the codebook rows nearest to each latent vector of z (B, C, h, w).

    Always in fp32 with autocast off: under bf16 the distance matmul picks other codes (4 of 256 on encoder
    latents), and the codes decide the picture.
    """
    b, c, h, w = z.shape
    with torch.autocast(z.device.type, enabled=False):
        codebook = codebook.float()
        flat = z.permute(0, 2, 3, 1).reshape(-1, c).float()  # (B*h*w, C)
        if codebook_sq is None:
            codebook_sq = codebook.pow(2).sum(1)
        d = flat.pow(2).sum(1, keepdim=True) + codebook_sq.float() - 2 * flat @ codebook.t()  # (B*h*w, n_embed)
    return d.argmin(1).reshape(b, h, w)


def embed_codes(idx: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Codebook vectors for indices (B, h, w) -> (B, embed_dim, h, w), contiguous NCHW.

    (The permuted view would be channels-last in memory, which sends the decoder's convolutions down a
    different and, in float32, less exact path: 6e-4 instead of 2e-5 from the reference at 320x384.)
    """
    return codebook[idx].permute(0, 3, 1, 2).contiguous()


class _Quantizer(nn.Module):
    """Shared by both quantisers. Call: z (B, embed_dim, h, w) -> (z_q, idx)."""

    codebook: torch.Tensor

    def __init__(self):
        super().__init__()
        self._sq_cache = (None, None)

    def codebook_sq(self) -> torch.Tensor:
        """Squared norms of the codebook rows, computed once per weight version (not per step)."""
        w = self.codebook
        key = (w.data_ptr(), w._version, w.device, w.dtype)
        if self._sq_cache[0] != key:
            with torch.no_grad():
                self._sq_cache = (key, w.pow(2).sum(1))
        return self._sq_cache[1]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w) of the nearest codebook rows."""
        return nearest_codes(z, self.codebook, self.codebook_sq())

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        return self.nearest(z)

    def forward(self, z: torch.Tensor):
        idx = self.indices(z)
        return embed_codes(idx, self.codebook).to(z.dtype), idx


class VectorQuantizer(_Quantizer):
    """Nearest-neighbour codebook lookup (taming VectorQuantizer2, inference)."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding.weight


class GumbelQuantize(_Quantizer):
    """GumbelVQ head: logits over the codebook from a 1x1 conv, read deterministically by argmax.

    Note: taming declares `proj` with z_channels inputs but applies it to the quant_conv output
    (embed_dim channels); the public models have embed_dim == z_channels.
    """

    def __init__(self, num_hiddens: int, embed_dim: int, n_embed: int):
        super().__init__()
        self.proj = nn.Conv2d(num_hiddens, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embed.weight

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Argmax of the logits, computed in fp32 like the nearest-code search (the codes decide the picture)."""
        with torch.autocast(z.device.type, enabled=False):
            return self.proj(z.float()).argmax(1)


class VQGAN(nn.Module):
    """Encoder, quantiser and decoder of a taming VQModel or GumbelVQ. Images are in [-1, 1].

    `model.quantize(z)` returns `(z_q, indices)`: the nearest code for VQModel, the argmax of the
    projection logits for GumbelVQ.
    """

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if cfg.gumbel:
            self.quantize = GumbelQuantize(cfg.z_channels, cfg.embed_dim, cfg.n_embed)
        else:
            self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.channels_last = False  # the decoder's memory format (use_channels_last, at load)

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook, (n_embed, embed_dim)."""
        return self.quantize.codebook

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> latent (B, embed_dim, H/f, W/f) before quantisation.

        For GumbelVQ this is the input of the logits head, not a vector of the codebook space: start an
        optimisation from `encode_codes` instead."""
        if self.encoder is None:
            raise RuntimeError("this VQGAN was loaded without its encoder (load_models(..., encoder=False))")
        return self.quant_conv(self.encoder(x))

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> the model's own quantised codes (B, embed_dim, H/f, W/f), exact:
        what taming's `encode` returns (nearest codes; for GumbelVQ the argmax of the logits), as vectors
        of the codebook space the optimisation loop works in. Init images and animation frames start here.
        """
        return self.embed(self.quantize.indices(self.encode(x))).float()

    def drop_encoder(self) -> None:
        """Free the encoder (40% of the weights) when nothing will be encoded; only the loader calls this."""
        self.encoder = None

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w) of the nearest codebook vectors (for Gumbel models too; used by the optimiser)."""
        return self.quantize.nearest(z)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Codebook vectors for indices (B, h, w) -> latent (B, embed_dim, h, w)."""
        return embed_codes(idx, self.codebook)

    def decode(self, z_q: torch.Tensor, checkpointing: bool = False) -> torch.Tensor:
        """Quantised latent (B, embed_dim, h, w) -> image (B, 3, h*f, w*f) in [-1, 1]. `checkpointing`
        recomputes the decoder's blocks in the backward pass (the memory plan decides, per run)."""
        if self.channels_last:
            z_q = z_q.contiguous(memory_format=torch.channels_last)
        return self.decoder(self.post_quant_conv(z_q), checkpointing)

    @property
    def has_encoder(self) -> bool:
        return self.encoder is not None

    def use_channels_last(self) -> None:
        """Run the decoder in channels-last memory format: 1.3x faster convolutions on CPUs (fp32)."""
        self.decoder.to(memory_format=torch.channels_last)
        self.post_quant_conv.to(memory_format=torch.channels_last)
        self.channels_last = True
