"""Phase 7b — learnable-scale LR residual (back-projection of the LR error).

``sr + g ⊙ up(lr − down(sr))``: the part of the LR image the current SR fails to explain, upsampled (bicubic or
bilinear) and added with a learnable per-colour gain ``g`` that starts at 0. Downscaling uses antialiased
interpolation of the same kind, an approximation of the MATLAB-bicubic degradation that is cheap enough for
training.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LRResidual2d"]


class LRResidual2d(nn.Module):
    """(lr (B,3,H,W), sr (B,3,sH,sW)) → corrected sr."""

    def __init__(self, *, mode: Literal["bicubic", "bilinear"]) -> None:
        super().__init__()
        if mode not in ("bicubic", "bilinear"):
            raise ValueError(f"mode must be 'bicubic' or 'bilinear', got {mode!r}")
        self.mode = mode
        self.gain = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, lr: Tensor, sr: Tensor) -> Tensor:
        down = F.interpolate(sr, size=lr.shape[-2:], mode=self.mode, align_corners=False, antialias=True)
        err = F.interpolate(lr - down, size=sr.shape[-2:], mode=self.mode, align_corners=False)
        return sr + self.gain * err
