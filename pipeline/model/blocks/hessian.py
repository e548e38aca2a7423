"""Multi-scale Hessian detail attention in the style of DeFiAN (Huang et al., TIP 2021), written from the paper.

The feature is projected (1×1) to ``hessian_channels``. For each dilation s, learnable depth-wise 3×3 filters
(initialised to the finite-difference stencils of ∂xx, ∂yy, ∂xy at spacing s) estimate the per-channel Hessian.
The detail response is the largest absolute eigenvalue, ``|λ|max = |(xx+yy)/2| + sqrt(((xx−yy)/2)² + xy²)``:
large on edges and texture, ~0 on smooth regions. The scales' responses are fused by a 1×1 conv into a sigmoid
attention map that re-weights the features (``x · 2σ(·)``, i.e. identity when the logits are 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["HessianAttention2d"]

_EPS = 1e-6


def _stencils() -> Tensor:
    """(3,3,3) finite-difference stencils: ∂xx, ∂yy, ∂xy."""
    dxx = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 1.0], [0.0, 0.0, 0.0]])
    dyy = dxx.t().clone()
    dxy = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 1.0]]) * 0.25
    return torch.stack([dxx, dyy, dxy])


class HessianAttention2d(nn.Module):
    """x (B,C,H,W) → x · 2σ(fuse(|λ|max at each dilation))."""

    def __init__(self, *, channels: int, hessian_channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        if not dilations or any(d < 1 for d in dilations):
            raise ValueError(f"dilations must be non-empty positive ints, got {tuple(dilations)}")
        hc = hessian_channels
        self.proj = nn.Conv2d(channels, hc, 1)
        self.hessian = nn.ModuleList()
        for d in dilations:
            conv = nn.Conv2d(hc, 3 * hc, 3, padding=d, dilation=d, groups=hc, bias=False)
            with torch.no_grad():
                conv.weight.copy_(_stencils().unsqueeze(1).repeat(hc, 1, 1, 1) / (d * d))
            self.hessian.append(conv)
        self.fuse = nn.Conv2d(len(dilations) * hc, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.proj(x)
        b, c, h, w = y.shape
        responses = []
        for conv in self.hessian:
            dxx, dyy, dxy = conv(y).reshape(b, c, 3, h, w).unbind(dim=2)
            half_trace = (dxx + dyy) * 0.5
            disc = torch.sqrt(((dxx - dyy) * 0.5).square() + dxy.square() + _EPS)
            responses.append(half_trace.abs() + disc)
        attn = torch.sigmoid(self.fuse(torch.cat(responses, dim=1)))
        return x * (2.0 * attn)
