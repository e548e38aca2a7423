"""Multi-head self-attention across a few tokens *per pixel* (bands or experts), linear in image size.

A token stack (B,K,C,H,W) is treated as B·H·W independent sequences of K tokens (K = 3-5): layout (N,K,C),
N = B·H·W, so LayerNorm and the projections are single matrix products over all pixels and the K×K attention per
pixel and head is tiny. ``to_tokens`` / ``from_tokens`` convert between the two layouts.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TokenAttention", "to_tokens", "from_tokens"]


def to_tokens(t: Tensor) -> Tensor:
    """(B,K,C,H,W) → (B·H·W, K, C) (a copy)."""
    b, k, c, h, w = t.shape
    return t.permute(0, 3, 4, 1, 2).reshape(b * h * w, k, c)


def from_tokens(seq: Tensor, *, batch: int, height: int, width: int) -> Tensor:
    """(B·H·W, K, C) → (B,K,C,H,W) (a strided view; call ``.contiguous()`` if needed)."""
    n, k, c = seq.shape
    return seq.reshape(batch, height, width, k, c).permute(0, 3, 4, 1, 2)


class TokenAttention(nn.Module):
    """Pre-norm residual multi-head attention on (N,K,C) sequences: ``t + proj(attn(norm(t)))``."""

    def __init__(self, *, channels: int, heads: int) -> None:
        super().__init__()
        if heads < 1 or channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, t: Tensor) -> Tensor:  # (N,K,C) → (N,K,C)
        n, k, c = t.shape
        qkv = self.qkv(self.norm(t)).reshape(n, k, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N,heads,K,d), softmax over the K keys
        return t + self.proj(out.transpose(1, 2).reshape(n, k, c))
