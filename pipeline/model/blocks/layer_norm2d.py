"""LayerNorm over the channel dimension of NCHW tensors (per pixel), as in ConvNeXt / timm ``LayerNorm2d``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerNorm2d"]


class LayerNorm2d(nn.LayerNorm):
    """Normalise each pixel's C-vector of ``x`` (B,C,H,W); learnable per-channel affine."""

    def __init__(self, *, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:  # (B,C,H,W) → (B,C,H,W)
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)
