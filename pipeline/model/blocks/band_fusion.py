"""Band fusion: n spatial band components → 3 guidance bands (low / mid / high).

Guidance band k = conv1x1_k( Σ_b w[k,b,c] · band_b ), with per-channel mixing weights initialised so each guidance
band starts as the mean of its group of bands (e.g. low = mean(DCT low, Haar LL, FFT low)); the 1×1 convs lift the
narrow band width to the trunk width. Bands are accumulated one at a time (they are never stacked).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BandFusion2d"]


class BandFusion2d(nn.Module):
    """bands: n tensors (B,in_channels,H,W) → guidance (B,3,channels,H,W)."""

    def __init__(self, *, in_channels: int, channels: int, num_bands: int, groups: Sequence[Sequence[int]]) -> None:
        super().__init__()
        if len(groups) != 3:
            raise ValueError(f"need 3 guidance groups, got {len(groups)}")
        mix = torch.zeros(3, num_bands, in_channels)
        for k, group in enumerate(groups):
            if not group or any(not 0 <= b < num_bands for b in group):
                raise ValueError(f"guidance group {k} = {tuple(group)} is empty or out of range 0..{num_bands - 1}")
            mix[k, list(group)] = 1.0 / len(group)
        self.num_bands = num_bands
        self.in_channels = in_channels
        self.channels = channels
        self.mix = nn.Parameter(mix)  # (3, n, C_in): weight of band n in guidance k, per channel
        self.proj = nn.Conv2d(3 * in_channels, 3 * channels, 1, groups=3)  # one 1×1 conv per guidance band

    def forward(self, bands: Sequence[Tensor]) -> Tensor:
        if len(bands) != self.num_bands:
            raise ValueError(f"expected {self.num_bands} bands, got {len(bands)}")
        b, c, h, w = bands[0].shape
        n = self.num_bands
        # per-channel mixing as a grouped 1×1 conv: group c sees channel c of all n bands, outputs its 3 guidances
        stacked = torch.stack(list(bands), dim=2).reshape(b, c * n, h, w)  # channel order (c, band)
        weight = self.mix.permute(2, 0, 1).reshape(c * 3, n, 1, 1)  # (c, k) × band
        guide = F.conv2d(stacked, weight, groups=c).reshape(b, c, 3, h, w).transpose(1, 2)  # (B,3,C_in,H,W)
        out = self.proj(guide.reshape(b, 3 * c, h, w))  # (B,3·C,H,W), guidance-major
        return out.reshape(b, 3, self.channels, h, w)
