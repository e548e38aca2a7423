"""Phase 7a — residual refinement CNN, run at LR resolution on the ×4 pixel-unshuffled current SR estimate.

Input: the detail feature (B,C,H,W) and the current SR (B,3,4H,4W) unshuffled to (B,48,H,W) (every HR pixel is
visible, at LR cost); dense residual blocks; a zero-initialised 3×3 conv to 48 channels, pixel-shuffled back to an
HR residual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.blocks.conv_blocks import ResBlock2d

__all__ = ["RefineCNN2d"]


class RefineCNN2d(nn.Module):
    """(x (B,C,H,W), sr (B,3,sH,sW)) → residual (B,3,sH,sW)."""

    def __init__(self, *, channels: int, blocks: int, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        sub = 3 * scale * scale
        self.inp = nn.Conv2d(channels + sub, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock2d(channels=channels) for _ in range(blocks)])
        self.out = nn.Conv2d(channels, sub, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, sr: Tensor) -> Tensor:
        h = self.inp(torch.cat([x, F.pixel_unshuffle(sr, self.scale)], dim=1))
        return F.pixel_shuffle(self.out(self.body(h)), self.scale)
