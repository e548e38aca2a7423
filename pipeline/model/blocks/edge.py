"""Phase 7c — 3-level Laplacian-pyramid edge enhancement.

The SR image is split into band-pass levels ``L_l = G_l − up(G_{l+1})`` (G_0 = sr, G_{l+1} = blur-and-halve G_l,
5-tap binomial blur). Per-pixel gains ``α_l`` predicted at LR resolution from the detail feature (zero-initialised
head) scale each level, and the scaled details are collapsed back to HR through the same upsampling:
``sr + Σ_l up^l(α_l · L_l)`` — exactly ``sr`` when the gains are 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["laplacian_pyramid", "LaplacianEdgeEnhance2d"]


def _blur_down(x: Tensor) -> Tensor:
    """Separable 5-tap binomial blur (replicate border) then keep every second pixel: (B,C,H,W) → ⌈H/2⌉×⌈W/2⌉."""
    c = x.shape[1]
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16.0
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5).repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(x, k.view(1, 1, 5, 1).repeat(c, 1, 1, 1), groups=c)
    return x[..., ::2, ::2]


def _up(x: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def laplacian_pyramid(img: Tensor, levels: int) -> tuple[list[Tensor], Tensor]:
    """(band-pass levels [L_0 (H,W), L_1 (H/2,W/2), …], low-pass residual G_levels); any H, W."""
    bands = []
    g = img
    for _ in range(levels):
        down = _blur_down(g)
        bands.append(g - _up(down, g.shape[-2:]))
        g = down
    return bands, g


class LaplacianEdgeEnhance2d(nn.Module):
    """(x (B,C,H,W) detail feature, sr (B,3,sH,sW)) → enhanced sr."""

    def __init__(self, *, channels: int, levels: int) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.levels = levels
        self.gain_head = nn.Conv2d(channels, levels, 3, padding=1)
        nn.init.zeros_(self.gain_head.weight)
        nn.init.zeros_(self.gain_head.bias)

    def forward(self, x: Tensor, sr: Tensor) -> Tensor:
        bands, _ = laplacian_pyramid(sr, self.levels)
        gains = self.gain_head(x)  # (B,levels,H,W) at LR
        acc = None
        for level in reversed(range(self.levels)):
            band = bands[level]
            alpha = _up(gains[:, level : level + 1], band.shape[-2:])
            term = alpha * band
            acc = term if acc is None else _up(acc, band.shape[-2:]) + term
        return sr + acc
