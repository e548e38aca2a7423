"""Phase 3 — cross-band attention: the trunk feature and the 3 guidance bands attend to each other per pixel.

Tokens per pixel (width T = ``token_channels``): [1×1 projection of trunk x, guidance low, mid, high]. The band
tokens carry their identity through the band fusion's per-band projection biases, the trunk token through its
content. Each layer is multi-head token attention (:class:`TokenAttention`) followed by Large Kernel Attention on
the trunk token (LKA on every band token would cost 4× as much; the bands are re-read by the trunk token in the next
layer). The trunk token returns to the trunk through a zero-initialised 1×1 projection (identity at init); the
refined band tokens are returned for the frequency-guided blending of the hierarchical stage, as a strided
(B,K,T,H,W) view of the token layout (no copy: the blending reads them per pixel).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.model.blocks.lka import LKABlock2d
from pipeline.model.blocks.token_attention import TokenAttention, from_tokens, to_tokens

__all__ = ["CrossBandAttention2d"]


class CrossBandAttention2d(nn.Module):
    """(x (B,C,H,W), bands (B,K,T,H,W)) → (x' (B,C,H,W), bands' (B,K,T,H,W))."""

    def __init__(self, *, channels: int, token_channels: int, num_bands: int, depth: int, heads: int) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.num_bands = num_bands
        self.inp = nn.Conv2d(channels, token_channels, 1)
        self.attn = nn.ModuleList([TokenAttention(channels=token_channels, heads=heads) for _ in range(depth)])
        self.lka = nn.ModuleList([LKABlock2d(channels=token_channels) for _ in range(depth)])
        self.out = nn.Conv2d(token_channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, bands: Tensor) -> tuple[Tensor, Tensor]:
        b, _, h, w = x.shape
        if bands.shape[1] != self.num_bands:
            raise ValueError(f"expected {self.num_bands} bands, got {bands.shape[1]}")
        seq = to_tokens(torch.cat([self.inp(x).unsqueeze(1), bands], dim=1))  # (N,K+1,T)
        trunk = x
        for i, (attn, lka) in enumerate(zip(self.attn, self.lka, strict=True)):
            seq = attn(seq)
            trunk = lka(from_tokens(seq[:, :1], batch=b, height=h, width=w)[:, 0])  # (B,T,H,W)
            if i + 1 < len(self.attn):
                seq = torch.cat([to_tokens(trunk.unsqueeze(1)), seq[:, 1:]], dim=1)
        return x + self.out(trunk), from_tokens(seq[:, 1:], batch=b, height=h, width=w)
