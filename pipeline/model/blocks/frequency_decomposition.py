"""Multi-domain frequency decomposition of a feature map into 9 spatial band components.

The input (B,C,H,W) is first projected by a 1×1 conv to ``band_channels`` (the transforms and the band fusion are
memory-bound, so they run on a narrow copy of the feature).

Order of the returned bands (each (B,C,H,W)): DCT low, DCT mid, DCT high, Haar LL, LH, HL, HH, FFT low, FFT high.
Each domain's bands sum back to the input (see :mod:`pipeline.model.freq`). Learnable parts: the FFT cutoff (a scalar,
kept in (0, 0.5) cycles/pixel by a sigmoid) and, optionally, the per-image DCT split (:class:`BandSplitPredictor2d`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pipeline.model import freq
from pipeline.model.blocks.band_split import BandSplitPredictor2d

__all__ = ["FrequencyDecomposition2d", "BAND_NAMES", "GUIDANCE_GROUPS"]

BAND_NAMES: tuple[str, ...] = (
    "dct_low",
    "dct_mid",
    "dct_high",
    "haar_ll",
    "haar_lh",
    "haar_hl",
    "haar_hh",
    "fft_low",
    "fft_high",
)
# Which of the 9 bands start in which guidance band (low / mid / high) of the band fusion.
GUIDANCE_GROUPS: tuple[tuple[int, ...], ...] = ((0, 3, 7), (1, 4, 5), (2, 6, 8))

_MAX_CUTOFF = 0.5  # cycles/pixel


class FrequencyDecomposition2d(nn.Module):
    """x (B,C,H,W) → (9 bands (B,band_channels,H,W), dct split (B,2)); any H, W."""

    def __init__(
        self,
        *,
        channels: int,
        band_channels: int,
        block: int,
        init_split: tuple[float, float],
        dct_softness: float,
        adaptive_split: bool,
        split_hidden: int,
        fft_cutoff: float,
        fft_softness: float,
    ) -> None:
        super().__init__()
        if not 0.0 < fft_cutoff < _MAX_CUTOFF:
            raise ValueError(f"fft_cutoff must be in (0, {_MAX_CUTOFF}), got {fft_cutoff}")
        self.block = block
        self.dct_softness = dct_softness
        self.fft_softness = fft_softness
        self.init_split = (float(init_split[0]), float(init_split[1]))
        self.proj = nn.Conv2d(channels, band_channels, 1)
        self.split_predictor = (
            BandSplitPredictor2d(channels=channels, hidden=split_hidden, init_split=init_split)
            if adaptive_split
            else None
        )
        p = fft_cutoff / _MAX_CUTOFF
        self.cutoff_logit = nn.Parameter(torch.tensor(math.log(p / (1 - p))))

    @property
    def fft_cutoff(self) -> Tensor:
        """Current FFT low-pass cutoff in cycles/pixel (scalar tensor)."""
        return torch.sigmoid(self.cutoff_logit) * _MAX_CUTOFF

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-image DCT thresholds (t_low, t_high), each (B,)."""
        if self.split_predictor is not None:
            return self.split_predictor(x)
        b = x.shape[0]
        t_low = x.new_full((b,), self.init_split[0])
        t_high = x.new_full((b,), self.init_split[1])
        return t_low, t_high

    def forward(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        t_low, t_high = self.split(x)
        x = self.proj(x)
        dct = freq.dct_bands(x, t_low, t_high, block=self.block, softness=self.dct_softness)
        haar = freq.haar_bands(x)
        fft = freq.fft_bands(x, self.fft_cutoff, softness=self.fft_softness)
        return (*dct, *haar, *fft), torch.stack([t_low, t_high], dim=1)
