"""Phase 5 — hierarchical multi-resolution fusion, from structure to detail, with frequency-guided blending.

Three stages at ¼ (= LR), ½ and full HR resolution:

1. structure (LR, width C): a one-level U-Net of dense residual blocks (body at half LR resolution: wide receptive
   field for structure, and the place where most of the network's parameters live at a quarter of the cost)
   → RGB residual r1 at LR, bicubic-upsampled ×4;
2. middle (2H×2W, width C2): pixel-shuffle ×2 of the stage-1 feature + the ×2-unshuffled base image, a 3×3 conv
   → residual r2 at ½ HR, bilinear ×2;
3. detail (4H×4W, width C3, kept small: the only full-HR feature map): pixel-shuffle ×2 + the base image, a 3×3
   conv → residual r3 at HR.

Blending: per-pixel weights over the three stages, ``3 · softmax(conv1x1(guidance bands))`` predicted at LR from the
low/mid/high guidance bands and bilinearly upsampled — smooth regions can lean on the structure stage, textured ones
on the detail stage. Each stage's RGB head is zero-initialised, so the untrained residual is exactly zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.blocks.conv_blocks import StructureUNet2d

__all__ = ["HierarchicalFusion2d"]


def _zero_conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class HierarchicalFusion2d(nn.Module):
    """``encode(x)`` → stage-1 feature; ``forward(s1, base, bands)`` → (residual (B,3,4H,4W), weights (B,3,H,W))."""

    def __init__(
        self,
        *,
        channels: int,
        inner_channels: int,
        blocks: int,
        mid_channels: int,
        hr_channels: int,
        band_channels: int,
        num_bands: int = 3,
    ) -> None:
        super().__init__()
        self.structure = StructureUNet2d(channels=channels, inner_channels=inner_channels, blocks=blocks)
        self.head1 = _zero_conv(channels, 3, 3)
        self.up2 = nn.Sequential(nn.Conv2d(channels, 4 * mid_channels, 1), nn.PixelShuffle(2))
        self.mid = nn.Conv2d(mid_channels + 12, mid_channels, 3, padding=1)
        self.head2 = _zero_conv(mid_channels, 3, 3)
        self.up3 = nn.Sequential(nn.Conv2d(mid_channels, 4 * hr_channels, 1), nn.PixelShuffle(2))
        self.hr = nn.Conv2d(hr_channels + 3, hr_channels, 3, padding=1)
        self.head3 = _zero_conv(hr_channels, 3, 3)
        self.blend = nn.Linear(num_bands * band_channels, 3)

    def encode(self, x: Tensor) -> Tensor:
        """Stage 1 (structure) feature at LR resolution: (B,C,H,W) → (B,C,H,W)."""
        return self.structure(x)

    def _blend_logits(self, bands: Tensor) -> Tensor:
        """(B,K,C,H,W) → (B,3,H,W). Reads the bands per pixel; a view (no copy) for token-layout bands."""
        b, k, c, h, w = bands.shape
        flat = bands.permute(0, 3, 4, 1, 2).reshape(b * h * w, k * c)
        return self.blend(flat).reshape(b, h, w, 3).permute(0, 3, 1, 2)

    def forward(self, s1: Tensor, base: Tensor, bands: Tensor) -> tuple[Tensor, Tensor]:
        # s1 (B,C,H,W) stage-1 feature; base (B,3,4H,4W) gated expert image; bands (B,K,C,H,W) guidance
        hr_size = base.shape[-2:]
        r1 = F.interpolate(self.head1(s1), size=hr_size, mode="bicubic", align_corners=False)
        s2 = F.gelu(self.mid(torch.cat([self.up2(s1), F.pixel_unshuffle(base, 2)], dim=1)))  # (B,C2,2H,2W)
        r2 = F.interpolate(self.head2(s2), size=hr_size, mode="bilinear", align_corners=False)
        s3 = F.gelu(self.hr(torch.cat([self.up3(s2), base], dim=1)))  # (B,C3,4H,4W)
        r3 = self.head3(s3)
        weights = 3.0 * self._blend_logits(bands).softmax(dim=1)  # (B,3,H,W)
        w = F.interpolate(weights, size=hr_size, mode="bilinear", align_corners=False)
        return w[:, 0:1] * r1 + w[:, 1:2] * r2 + w[:, 2:3] * r3, weights
