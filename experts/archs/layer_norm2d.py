"""Layer normalisation over the channels of an NCHW map (NAFNet's ``LayerNorm2d``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerNorm2d"]


class LayerNorm2d(nn.Module):
    """Normalise every pixel's channel vector: (B,C,H,W) → (B,C,H,W); per-channel affine ``weight``/``bias``.

    Numerically NAFNet's ``LayerNorm2d`` (ε = 1e-6), computed with ``F.layer_norm`` on a channels-last view — about
    twice as fast on the CPU (forward + backward) as NAFNet's hand-written autograd function.
    """

    def __init__(self, *, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)  # (B,H,W,C)
        return y.permute(0, 3, 1, 2)
