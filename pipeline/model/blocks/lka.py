"""Large Kernel Attention (VAN): 5×5 depth-wise → 7×7 depth-wise dilation 3 → 1×1, used as a multiplicative gate.

The decomposed kernel covers a 23×23 receptive field with 74·C + C² weights. ``LKABlock2d`` is the pre-norm
residual form used after the attention layers of the fusion network. The convolutions run in channels-last memory
format (the dilated depth-wise conv is several times faster so on CPU); outputs are contiguous NCHW.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.model.blocks.layer_norm2d import LayerNorm2d

__all__ = ["LKA2d", "LKABlock2d"]


class LKA2d(nn.Module):
    """``x * conv1x1(dw7x7_dilated3(dw5x5(x)))`` on (B,C,H,W)."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.dw_dilated = nn.Conv2d(channels, channels, 7, padding=9, dilation=3, groups=channels)
        self.pw = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B,C,H,W)
        xc = x.contiguous(memory_format=torch.channels_last)
        return (xc * self.pw(self.dw_dilated(self.dw(xc)))).contiguous()


class LKABlock2d(nn.Module):
    """Pre-norm residual LKA: ``x + LKA(norm(x))``."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(channels=channels)
        self.lka = LKA2d(channels=channels)

    def forward(self, x: Tensor) -> Tensor:  # (B,C,H,W)
        return x + self.lka(self.norm(x))
