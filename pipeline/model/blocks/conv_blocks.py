"""Plain residual conv blocks (dense 3×3: the most time-efficient place for parameters on CPU) and the structure
U-Net built from them."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResBlock2d", "StructureUNet2d"]


class ResBlock2d(nn.Module):
    """``x + conv3x3(GELU(conv3x3(x)))`` at constant width."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.gelu(self.conv1(x)))


class StructureUNet2d(nn.Module):
    """One-level U-Net: stride-2 3×3 conv to ``inner_channels``, dense residual blocks at half resolution, 1×1 +
    pixel shuffle back, skip connection. (B,C,H,W) → (B,C,H,W), any H, W (odd sizes are padded and cropped)."""

    def __init__(self, *, channels: int, inner_channels: int, blocks: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, inner_channels, 3, stride=2, padding=1)
        self.body = nn.Sequential(*[ResBlock2d(channels=inner_channels) for _ in range(blocks)])
        self.up = nn.Sequential(nn.Conv2d(inner_channels, 4 * channels, 1), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        y = self.up(self.body(self.down(x)))  # (B,C,2⌈H/2⌉,2⌈W/2⌉)
        return x + y[..., :h, :w]
