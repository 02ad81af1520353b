"""A thin wrapper over open_clip (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision"; Cherti et al. 2023 for open_clip): load by name/tag or local files, encode.

Accepted model names:
    "ViT-B-32/openai"              a registry entry or any open_clip architecture/tag (weights via the
                                   Hugging Face cache: HF_HOME, HF_HUB_OFFLINE are honoured)
    "ARCH:WEIGHTS" "CFG.json:WEIGHTS"   an open_clip architecture or config file plus a local weights file
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vqclip.errors import OfflineError, UsageError, WeightsError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


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

    def cast(self, dtype: torch.dtype) -> None:
        """Keep the frozen weights in `dtype` once, instead of autocast re-casting them every step."""
        self.model.to(dtype)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        device = self.mean.device
        return self.model.encode_text(self.tokenizer(texts).to(device)).float()

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


@dataclass(frozen=True)
class ClipSource:
    """Where a CLIP model comes from: an open_clip arch plus a tag or a local weights file."""

    name: str
    arch: str
    tag: str | None = None
    weights: str | None = None
    config_file: str | None = None


def parse_clip_name(name: str) -> ClipSource:
    """Resolve a --clip value without loading anything (so bad names fail before heavy work)."""
    left, sep, right = name.rpartition(":")
    if (
        sep
        and right
        and (Path(right).expanduser().is_file() or right.endswith((".pt", ".pth", ".bin", ".safetensors")))
    ):
        weights = Path(right).expanduser()
        if not weights.is_file():
            raise UsageError(f"CLIP weights file {right} does not exist.")
        if left.endswith(".json"):
            if not Path(left).expanduser().is_file():
                raise UsageError(f"CLIP config file {left} does not exist.")
            return ClipSource(name, Path(left).stem, weights=str(weights), config_file=str(Path(left).expanduser()))
        return ClipSource(name, left, weights=str(weights))
    from vqclip.registry import all_specs

    spec = all_specs().get(name)
    if spec is not None and spec.kind == "clip":
        if spec.path:
            return ClipSource(name, spec.clip_arch, weights=spec.path)
        return ClipSource(name, spec.clip_arch, tag=spec.clip_tag)
    arch, sep, tag = name.partition("/")
    if sep and arch and tag:
        import open_clip

        if arch not in open_clip.list_models():
            raise UsageError(f"Unknown CLIP architecture {arch!r}.", "`vqclip models list` shows common choices.")
        if tag == "openai" and not arch.endswith("-quickgelu") and f"{arch}-quickgelu" in open_clip.list_models():
            arch = f"{arch}-quickgelu"  # OpenAI weights were trained with QuickGELU
        return ClipSource(name, arch, tag=tag)
    raise UsageError(
        f"Unknown CLIP model {name!r}.",
        "Use ARCH/TAG (e.g. ViT-B-32/openai), a registry name, or CONFIG.json:WEIGHTS for local files.",
    )


def _set_hf_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hf_constants

        hf_constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def _hf_cached_file(arch: str, tag: str) -> Path | None:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    repo = (cfg or {}).get("hf_hub", "").strip("/")
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in HF_WEIGHT_FILES:
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str):
            return Path(hit)
    return None


def clip_cached(spec) -> bool:
    return _hf_cached_file(spec.clip_arch, spec.clip_tag) is not None


def download_clip(name: str) -> Path:
    """Fetch a CLIP model's weights into the Hugging Face cache (for `vqclip models download`)."""
    source = parse_clip_name(name)
    if source.weights:
        return Path(source.weights)
    import open_clip

    cfg = open_clip.get_pretrained_cfg(source.arch, source.tag)
    if not cfg:
        raise UsageError(f"open_clip has no weights tagged {source.tag!r} for {source.arch}.")
    try:
        return Path(open_clip.download_pretrained(cfg))
    except Exception as err:
        raise WeightsError(f"Could not download CLIP {name}: {err}") from err


def _weights_sha256(source: ClipSource) -> str | None:
    from vqclip.download import sha256_file

    if source.weights:
        return sha256_file(Path(source.weights))
    cached = _hf_cached_file(source.arch, source.tag)
    if cached is None:
        return None
    blob = cached.resolve().name  # the HF cache names LFS blobs by their sha256
    return blob if len(blob) == 64 else sha256_file(cached)


def load_clip(name: str, device="cpu", offline: bool | None = None) -> ClipModel:
    """Build an open_clip model with its weights, frozen, in eval mode."""
    import open_clip

    from vqclip.download import offline_mode

    source = parse_clip_name(name)
    if source.config_file:
        cfg = json.loads(Path(source.config_file).read_text())
        if "model_cfg" in cfg:
            raise UsageError(f"{source.config_file} is a hub config; pass its model_cfg as a plain JSON file.")
        open_clip.add_model_config(source.config_file)
    if offline_mode(offline):
        _set_hf_offline()
    try:
        model = open_clip.create_model(
            source.arch, pretrained=source.weights or source.tag, device="cpu", require_pretrained=True
        )
    except RuntimeError as err:
        if source.tag and ("download" in str(err).lower() or offline_mode(offline)):
            cls = OfflineError if offline_mode(offline) else WeightsError
            raise cls(
                f"CLIP weights {name} are not available ({str(err).splitlines()[0]}).",
                f"Run `vqclip models download {name}` while online (HF_HOME decides where they go).",
            ) from err
        raise WeightsError(f"Could not load CLIP {name}: {err}") from err
    model.eval().requires_grad_(False)
    return wrap_clip(name, model, open_clip.get_tokenizer(source.arch), _weights_sha256(source)).to(device)


def wrap_clip(name: str, model, tokenizer, sha256: str | None) -> ClipModel:
    """A ClipModel around an open_clip model: its input size and normalisation (OpenAI's by default)."""
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean = torch.tensor(pre.get("mean", OPENAI_MEAN)).view(1, 3, 1, 1)
    std = torch.tensor(pre.get("std", OPENAI_STD)).view(1, 3, 1, 1)
    return ClipModel(name, model, size, mean, std, tokenizer, sha256)
