"""A frozen open_clip model as the loop uses it (Radford et al. 2021, "Learning Transferable Visual Models
From Natural Language Supervision"; Cherti et al. 2023 for open_clip): its normalisation, input size and
a faster ViT forward. Finding and loading the weights is `vqclip.weights.clip`'s job."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
QUICK_GELU_SCALE = 1.702  # open_clip's QuickGELU: x * sigmoid(1.702 x)
# What open_clip's CLIP (the first five, plus the attn_mask buffer) and CustomTextCLIP (`text`) hold for text.
TEXT_TOWER = (
    "transformer",
    "token_embedding",
    "positional_embedding",
    "ln_final",
    "text_projection",
    "attn_mask",
    "text",
)


@dataclass
class ClipModel:
    """A frozen CLIP with the normalisation and input size it expects. Images are [0, 1] tensors."""

    name: str
    model: torch.nn.Module
    input_size: int
    mean: torch.Tensor  # (1, 3, 1, 1)
    std: torch.Tensor  # (1, 3, 1, 1)
    tokenizer: object
    sha256: str | None

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, s, s) in [0, 1] at `input_size` -> (N, D) embeddings (not normalised)."""
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if fast_vit_supported(self.model.visual):
            return self.vit_forward(self.model.visual, x)
        return self.model.encode_image(x)

    vit_forward = staticmethod(lambda visual, x: fast_vit_forward(visual, x))

    def compile(self) -> None:
        """torch.compile the image tower's forward (fuses the elementwise work around the matmuls)."""
        self.vit_forward = torch.compile(fast_vit_forward)

    def cast_image_tower(self, dtype: torch.dtype) -> None:
        """Keep the image tower's frozen weights in `dtype` once, instead of autocast re-casting them every
        step. The text tower stays in fp32: it runs once per prompt, and its embeddings are the targets."""
        self.model.visual.to(dtype)

    @property
    def embed_dim(self) -> int:
        """The size of the joint embedding."""
        return int(self.model.visual.output_dim)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> (len(texts), D) text embeddings, fp32 (not normalised)."""
        if not self.has_text_tower:
            raise RuntimeError(f"{self.name}'s text tower was dropped (drop_text_tower) to save memory")
        device = self.mean.device
        return self.model.encode_text(self.tokenizer(texts).to(device)).float()

    @property
    def has_text_tower(self) -> bool:
        return bool(self._text_tower())

    def _text_tower(self) -> dict:
        """The text tower's parts by attribute name (modules, parameters, the attention-mask buffer)."""
        parts = ((name, getattr(self.model, name, None)) for name in TEXT_TOWER)
        return {name: part for name, part in parts if part is not None}

    def text_tower_bytes(self) -> int:
        """Bytes of the text tower's weights and buffers (0 once dropped)."""
        tensors = []
        for part in self._text_tower().values():
            tensors += [*part.parameters(), *part.buffers()] if isinstance(part, torch.nn.Module) else [part]
        return sum(t.numel() * t.element_size() for t in tensors)

    def drop_text_tower(self) -> None:
        """Free the text tower (ViT-B/32: 63M of its 151M weights): the optimisation steps use the image
        tower only. Only the loader calls this, before anyone uses the model (vqclip.weights.loading)."""
        for name in self._text_tower():
            setattr(self.model, name, None)

    def to(self, device):
        self.model.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self


# ---- a faster forward for open_clip's VisionTransformer ------------------------------------------
#
# The same computation as `model.visual(x)` (a test checks it), arranged for the optimisation loop, where
# the input needs a gradient and the weights do not: the patch embedding is one matmul instead of a
# strided convolution (whose input-gradient kernel is slow), every linear layer runs on 2-D
# (tokens x width) views (on 3-D inputs the input gradient goes through a batched matmul with an
# expanded weight plus a copy), and the 50-token attention is plain matmul + softmax, which beats the
# flash kernel's backward at this length. On the ViT-B/32 step this halves CLIP's share of the time.
# Frozen linear layers keep no input for the backward pass (autograd saves it only for a weight gradient).


def fold_quick_gelu(model: nn.Module) -> int:
    """Rewrite each MLP c_proj(quick_gelu(c_fc(x))) as c_proj'(silu(c_fc'(x))), with 1.702 folded into c_fc
    and 1/1.702 into c_proj: quick_gelu(h) = h * sigmoid(1.702 h) = silu(1.702 h) / 1.702. The same function
    up to rounding, as one fused elementwise kernel forward and one backward instead of five passes over
    (tokens x 4 width) tensors, and one such tensor kept for the backward pass instead of two (ViT-B/32:
    0.7 s of a 9 s fp32 step and 30% of the tower's saved activations). Returns the MLPs rewritten."""
    from open_clip.transformer import QuickGELU

    folded = 0
    for module in model.modules():
        mlp = getattr(module, "mlp", None)
        if not isinstance(mlp, nn.Sequential) or not isinstance(getattr(mlp, "gelu", None), QuickGELU):
            continue
        if not isinstance(getattr(mlp, "ln", nn.Identity()), nn.Identity):  # a norm between: nothing to fold into
            continue
        with torch.no_grad():
            mlp.c_fc.weight.mul_(QUICK_GELU_SCALE)
            if mlp.c_fc.bias is not None:
                mlp.c_fc.bias.mul_(QUICK_GELU_SCALE)
            mlp.c_proj.weight.div_(QUICK_GELU_SCALE)
        mlp.gelu = nn.SiLU()
        folded += 1
    return folded


def fast_vit_supported(visual) -> bool:
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if type(visual) is not VisionTransformer or visual.attn_pool is not None or visual.output_tokens:
        return False
    if visual.training:  # patch dropout and attention dropout only act in training
        return False
    conv = visual.conv1
    if conv.bias is not None or conv.kernel_size != conv.stride or conv.padding != (0, 0):
        return False
    return all(
        type(b) is ResidualAttentionBlock
        and isinstance(b.attn, torch.nn.MultiheadAttention)
        and b.attn.batch_first
        and b.attn.in_proj_weight is not None
        and not hasattr(b, "ln_1_kv")
        for b in visual.transformer.resblocks
    ) and getattr(visual.transformer, "batch_first", True)


def _patch_embed(visual, x: torch.Tensor) -> torch.Tensor:
    w = visual.conv1.weight  # (D, 3, p, p)
    d, c, p, _ = w.shape
    b, _, h, wd = x.shape
    gh, gw = h // p, wd // p
    patches = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, c * p * p)
    x = F.linear(patches.to(w.dtype), w.reshape(d, -1)).view(b, gh * gw, d)
    cls = visual.class_embedding.to(x.dtype).expand(b, 1, d)
    x = torch.cat([cls, x], 1) + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(x)


def _block(block, x: torch.Tensor) -> torch.Tensor:
    b, t, d = x.shape
    attn = block.attn
    heads = attn.num_heads
    h = block.ln_1(x).reshape(b * t, d)
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(b, t, 3, heads, d // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (b, heads, t, head_dim)
    weights = (q @ k.transpose(-1, -2)) * (d // heads) ** -0.5
    y = (weights.softmax(-1) @ v).transpose(1, 2).reshape(b * t, d)
    x = x + block.ls_1(F.linear(y, attn.out_proj.weight, attn.out_proj.bias).view(b, t, d))
    return x + block.ls_2(block.mlp(block.ln_2(x).reshape(b * t, d)).view(b, t, d))


def fast_vit_forward(visual, x: torch.Tensor) -> torch.Tensor:
    """open_clip VisionTransformer forward (pooled, projected embedding), see the note above."""
    x = _patch_embed(visual, x)
    for block in visual.transformer.resblocks:
        x = _block(block, x)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj if visual.proj is not None else pooled


def wrap_clip(name: str, model, tokenizer, sha256: str | None) -> ClipModel:
    """A ClipModel around a frozen open_clip model: its input size and normalisation (OpenAI's by default);
    QuickGELU MLPs are folded into SiLU ones (`fold_quick_gelu`)."""
    from vqclip.versions import require_open_clip

    require_open_clip()  # the ViT forward uses open_clip 2.32's VisionTransformer._pool
    fold_quick_gelu(model)
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean = torch.tensor(pre.get("mean", OPENAI_MEAN)).view(1, 3, 1, 1)
    std = torch.tensor(pre.get("std", OPENAI_STD)).view(1, 3, 1, 1)
    return ClipModel(name, model, size, mean, std, tokenizer, sha256)
