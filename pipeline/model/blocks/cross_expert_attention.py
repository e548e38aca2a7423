"""Phase 4 — collaborative cross-expert attention.

Per pixel, the E projected expert tokens (width T, plus a 1×1 projection of the shared trunk context; the tokens
carry their expert's identity through the per-expert input projections) attend to each other
(:class:`TokenAttention`, cost linear in image size). Each expert's contribution is then modulated: per-channel
weights, softmax over the experts, decide how much of each refined expert token enters the fused feature. LKA
refines the fused feature spatially (one LKA on the fused feature rather than one per expert token: E× cheaper),
and it joins the trunk through a zero-initialised 1×1 projection.
"""

from __future__ import annotations

from torch import Tensor, nn

from pipeline.model.blocks.lka import LKABlock2d
from pipeline.model.blocks.token_attention import TokenAttention, to_tokens

__all__ = ["CrossExpertAttention2d"]


class CrossExpertAttention2d(nn.Module):
    """(tokens (B,E,T,H,W), x (B,C,H,W)) → x' (B,C,H,W)."""

    def __init__(self, *, channels: int, token_channels: int, num_experts: int, depth: int, heads: int) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.num_experts = num_experts
        self.context = nn.Conv2d(channels, token_channels, 1)
        self.attn = nn.ModuleList([TokenAttention(channels=token_channels, heads=heads) for _ in range(depth)])
        self.modulation = nn.Linear(token_channels, token_channels)
        self.lka = LKABlock2d(channels=token_channels)
        self.out = nn.Conv2d(token_channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: Tensor, x: Tensor) -> Tensor:
        b, e, c, h, w = tokens.shape
        if e != self.num_experts:
            raise ValueError(f"expected {self.num_experts} expert tokens, got {e}")
        seq = to_tokens(tokens + self.context(x).unsqueeze(1))  # (N,E,T)
        for attn in self.attn:
            seq = attn(seq)
        weights = self.modulation(seq).softmax(dim=1)  # (N,E,T): each expert's share, per channel
        fused = (weights * seq).sum(dim=1)  # (N,T)
        fused = fused.reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B,T,H,W), channels-last memory
        return x + self.out(self.lka(fused))
