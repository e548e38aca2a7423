"""Colour correction of the refined image against its input (diffusion SR drifts in colour; the input's colours are
right). Pure torch, (B, 3, H, W) float in [0, 1].

* ``wavelet``: à-trous wavelet decomposition (a 3x3 binomial blur with dilation 1, 2, 4, ... ``levels`` times);
  result = the refined image's high-frequency bands + the input's low-frequency residual (StableSR's colour fix).
* ``adain``: each channel of the refined image is shifted/scaled to the input's per-channel mean and std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.refiner.config import ColourFix

__all__ = ["adain_colour_fix", "colour_fix", "wavelet_blur2d", "wavelet_colour_fix", "wavelet_decompose2d"]

_BINOMIAL_3x3 = ((1 / 16, 1 / 8, 1 / 16), (1 / 8, 1 / 4, 1 / 8), (1 / 16, 1 / 8, 1 / 16))


def _check(img: Tensor, name: str) -> None:
    if img.dim() != 4:
        raise ValueError(f"{name} must be (B, C, H, W), got shape {tuple(img.shape)}")


def wavelet_blur2d(img: Tensor, dilation: int) -> Tensor:
    """3x3 binomial blur with the given dilation, per channel, replicate padding. (B, C, H, W) -> same."""
    _check(img, "img")
    channels = img.shape[1]
    kernel = torch.tensor(_BINOMIAL_3x3, dtype=img.dtype, device=img.device).expand(channels, 1, 3, 3)
    padded = F.pad(img, (dilation, dilation, dilation, dilation), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=dilation)


def wavelet_decompose2d(img: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    """(high, low) with ``high + low == img``: ``low`` is the residual after ``levels`` dilated blurs."""
    high = torch.zeros_like(img)
    low = img
    for level in range(levels):
        blurred = wavelet_blur2d(low, 2**level)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_colour_fix(refined: Tensor, reference: Tensor, *, levels: int = 5) -> Tensor:
    """High frequencies of ``refined`` + low frequencies of ``reference`` (both (B, 3, H, W), same size)."""
    _check(refined, "refined")
    if refined.shape != reference.shape:
        raise ValueError(f"shapes differ: refined {tuple(refined.shape)} vs reference {tuple(reference.shape)}")
    high, _ = wavelet_decompose2d(refined, levels)
    _, low = wavelet_decompose2d(reference, levels)
    return high + low


def adain_colour_fix(refined: Tensor, reference: Tensor, *, eps: float = 1e-5) -> Tensor:
    """Per-channel mean/std of ``refined`` matched to those of ``reference``."""
    _check(refined, "refined")
    _check(reference, "reference")
    if refined.shape[:2] != reference.shape[:2]:
        raise ValueError(f"batch/channels differ: {tuple(refined.shape)} vs {tuple(reference.shape)}")
    r_mean = refined.mean(dim=(2, 3), keepdim=True)
    r_std = refined.std(dim=(2, 3), keepdim=True, unbiased=False) + eps
    s_mean = reference.mean(dim=(2, 3), keepdim=True)
    s_std = reference.std(dim=(2, 3), keepdim=True, unbiased=False) + eps
    return (refined - r_mean) / r_std * s_std + s_mean


def colour_fix(refined: Tensor, reference: Tensor, *, method: ColourFix, wavelet_levels: int = 5) -> Tensor:
    """Apply the configured colour fix (``"none"`` returns ``refined`` unchanged)."""
    if method == "wavelet":
        return wavelet_colour_fix(refined, reference, levels=wavelet_levels)
    if method == "adain":
        return adain_colour_fix(refined, reference)
    if method == "none":
        return refined
    raise ValueError(f"unknown colour fix {method!r}; expected 'wavelet', 'adain' or 'none'")
