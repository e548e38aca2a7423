"""NAFNet's block (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022), keyword-only.

Two residual branches, each scaled by a learned per-channel factor that starts at zero (so a fresh block is the
identity)::

    y = x + β · conv3(SCA(SimpleGate(dwconv3x3(conv1(LN(x))))))        # spatial mixing
    z = y + γ · conv5(SimpleGate(conv4(LN(y))))                          # channel MLP

SimpleGate splits the channels in two halves and multiplies them; SCA is a global-average-pool channel attention.
Parameter names match NAFNet's ``NAFBlock`` (``conv1``…``conv5``, ``sca.1``, ``norm1/2``, ``beta``, ``gamma``).
"""

from __future__ import annotations

import torch
from torch import nn

from experts.archs.layer_norm2d import LayerNorm2d

__all__ = ["NAFBlock2d", "SimpleGate2d"]


class SimpleGate2d(nn.Module):
    """(B,2C,H,W) → (B,C,H,W): first half × second half of the channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock2d(nn.Module):
    """(B,C,H,W) → (B,C,H,W). ``dw_expand``/``ffn_expand``: channel expansion of the two branches (NAFNet: 2, 2)."""

    def __init__(self, *, channels: int, dw_expand: int = 2, ffn_expand: int = 2) -> None:
        super().__init__()
        c, dw, ffn = channels, channels * dw_expand, channels * ffn_expand
        self.norm1 = LayerNorm2d(channels=c)
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)  # depthwise 3×3: the block's only spatial op
        self.sg = SimpleGate2d()
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.norm2 = LayerNorm2d(channels=c)
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.sg(self.conv2(self.conv1(self.norm1(x))))  # (B,dw/2,H,W)
        h = self.conv3(h * self.sca(h))  # (B,C,H,W)
        y = x + h * self.beta
        h = self.conv5(self.sg(self.conv4(self.norm2(y))))  # (B,C,H,W)
        return y + h * self.gamma
