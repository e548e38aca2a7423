"""Adaptive band-split predictor: per-image DCT low/mid/high thresholds from globally pooled features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BandSplitPredictor2d"]


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class BandSplitPredictor2d(nn.Module):
    """x (B,C,H,W) → (t_low, t_high), each (B,), radius thresholds on the 8×8 DCT grid (``t_low < t_high``).

    The last layer is zero-initialised, so an untrained predictor returns ``init_split`` for every image.
    """

    def __init__(self, *, channels: int, hidden: int, init_split: tuple[float, float]) -> None:
        super().__init__()
        low, high = init_split
        if not high > low:
            raise ValueError(f"init_split must be increasing, got {init_split}")
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, 2)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.init_low = float(low)
        self.init_gap_raw = _inverse_softplus(float(high - low))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.fc2(F.gelu(self.fc1(x.mean(dim=(2, 3)))))  # (B,2)
        t_low = self.init_low + z[:, 0]
        t_high = t_low + F.softplus(z[:, 1] + self.init_gap_raw)
        return t_low, t_high

    def extra_repr(self) -> str:
        gap = F.softplus(torch.tensor(self.init_gap_raw)).item()
        return f"init_split=({self.init_low:g}, {self.init_low + gap:g})"
