"""The taming-transformers minGPT (Esser et al. 2021; after Karpathy's minGPT), inference only, with the
key layout of the public Net2NetTransformer checkpoints (`transformer.*`).

Attention runs through `F.scaled_dot_product_attention` with a causal mask; the checkpoints' explicit
`attn.mask` buffers (lower-triangular ones) are therefore not needed and are dropped at load.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 16384  # image codes (class ids and the SOS token share this table)
    block_size: int = 256  # longest sequence the position embedding covers
    n_layer: int = 24
    n_head: int = 16
    n_embd: int = 1024


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.key = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.query = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.value = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (
            lin(x).view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
            for lin in (self.query, self.key, self.value)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (b, heads, t, head_dim)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(), nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        )

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token ids (B, T) -> logits (B, T, vocab); position t predicts token t + 1."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.block_size, cfg.n_embd))
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        assert t <= self.config.block_size, f"sequence of {t} tokens exceeds block size {self.config.block_size}"
        x = self.tok_emb(idx) + self.pos_emb[:, :t]
        return self.head(self.ln_f(self.blocks(x)))

    def last_logits(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) at position lengths[b] - 1 of each row (causality makes whatever follows
        that position, padding included, invisible to it).

        Only that position's output is needed, so the last block computes keys and values for every
        position but its query, attention output and MLP for that one position alone.
        """
        b, t = idx.shape
        x = self.tok_emb(idx) + self.pos_emb[:, :t]
        for block in self.blocks[:-1]:
            x = block(x)
        block, attn = self.blocks[-1], self.blocks[-1].attn
        rows, pos = torch.arange(b, device=idx.device), lengths - 1
        h = block.ln1(x)  # (b, t, c)
        c, heads = h.shape[-1], attn.n_head
        k = attn.key(h).view(b, t, heads, c // heads).transpose(1, 2)  # (b, heads, t, hd)
        v = attn.value(h).view(b, t, heads, c // heads).transpose(1, 2)
        q = attn.query(h[rows, pos]).view(b, heads, 1, c // heads)
        visible = (torch.arange(t, device=idx.device)[None, :] <= pos[:, None]).view(b, 1, 1, t)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible).reshape(b, c)
        out = x[rows, pos] + attn.proj(y)  # (b, c)
        out = out + block.mlp(block.ln2(out))
        return self.head(self.ln_f(out))


@dataclass(frozen=True)
class Conditioning:
    """How a Net2NetTransformer checkpoint conditions its GPT: a class id or an SOS token as prefix."""

    kind: str  # "class" | "unconditional"
    n_classes: int = 0
    sos_token: int = 0
