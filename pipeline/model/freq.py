"""Exact, invertible frequency transforms and the band splits built on them (pure functions, no parameters).

Three domains, each splitting a feature map ``x`` (B,C,H,W) into spatial-domain *band components* that sum back
to ``x`` (up to float rounding), so every split is a partition of the signal:

* block DCT (8×8, orthonormal DCT-II per block) → ``dct_bands``: low / mid / high, selected by soft masks over the
  zig-zag radius ``u + v`` of each block's coefficients (thresholds may differ per image);
* one-level orthonormal Haar DWT → ``haar_bands``: the LL / LH / HL / HH components;
* FFT (``rfft2``) → ``fft_bands``: low-pass / high-pass, split by a soft radial mask with a (learnable) cutoff.

Sizes that are not a multiple of the block (8 for DCT, 2 for Haar) are replicate-padded and the bands cropped back;
the crop of a partition is a partition of the crop, so reconstruction stays exact for any size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "pad_to_multiple",
    "dct_matrix",
    "block_dct2d",
    "block_idct2d",
    "dct_radius",
    "dct_band_masks",
    "dct_bands",
    "haar_dwt2d",
    "haar_idwt2d",
    "haar_bands",
    "fft_radius",
    "fft_lowpass_mask",
    "fft_bands",
]


# --------------------------------------------------------------------------------------------------------------------
# padding helpers
# --------------------------------------------------------------------------------------------------------------------
def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Replicate-pad the bottom/right of ``x`` (B,C,H,W) so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def _check_4d(x: Tensor, name: str = "x") -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must be (B,C,H,W), got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------------------------------------------------
# block DCT
# --------------------------------------------------------------------------------------------------------------------
def dct_matrix(n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """Orthonormal DCT-II matrix ``D`` (n,n): coefficients = D @ signal, signal = D.T @ coefficients."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)  # (n,1) frequency
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)  # (1,n) sample
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def _blocks(x: Tensor, block: int) -> Tensor:
    """(B,C,H,W) → (B,C,H/b,b,W/b,b) view; H and W must be multiples of ``block``."""
    b, c, h, w = x.shape
    if h % block or w % block:
        raise ValueError(f"block DCT needs H, W multiples of {block}, got {h}x{w} (use pad_to_multiple)")
    return x.reshape(b, c, h // block, block, w // block, block)


def _block_transform(x: Tensor, left: Tensor, right: Tensor, block: int) -> Tensor:
    """Apply ``left @ B @ right`` to every (block×block) block B of ``x`` (B,C,H,W); layout is kept."""
    b, c, h, w = x.shape
    xb = _blocks(x, block).transpose(3, 4)  # (B,C,Hb,Wb,b,b)
    return (left @ xb @ right).transpose(3, 4).reshape(b, c, h, w)


def block_dct2d(x: Tensor, block: int = 8) -> Tensor:
    """Per-block orthonormal 2-D DCT-II of ``x`` (B,C,H,W); coefficients laid out in place of their block."""
    _check_4d(x)
    d = dct_matrix(block, dtype=x.dtype, device=x.device)
    return _block_transform(x, d, d.T, block)


def block_idct2d(coef: Tensor, block: int = 8) -> Tensor:
    """Inverse of :func:`block_dct2d`."""
    _check_4d(coef, "coef")
    d = dct_matrix(block, dtype=coef.dtype, device=coef.device)
    return _block_transform(coef, d.T, d, block)


def dct_radius(block: int = 8, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """(block,block) zig-zag radius ``u + v`` of each DCT coefficient (0 = DC, 2·(block−1) = highest)."""
    u = torch.arange(block, dtype=dtype, device=device)
    return u.unsqueeze(1) + u.unsqueeze(0)


def dct_band_masks(t_low: Tensor, t_high: Tensor, *, block: int = 8, softness: float = 0.25) -> Tensor:
    """Soft low/mid/high masks (B,3,block,block) over the DCT radius; they sum to exactly 1.

    ``t_low`` and ``t_high`` (B,) are radius thresholds with ``t_low < t_high``: low = σ((t_low − r)/s),
    high = 1 − σ((t_high − r)/s), mid = the rest. Differentiable in the thresholds (that is how the adaptive
    band-split predictor learns).
    """
    if softness <= 0:
        raise ValueError(f"softness must be > 0, got {softness}")
    r = dct_radius(block, dtype=t_low.dtype, device=t_low.device)  # (b,b)
    m_low = torch.sigmoid((t_low.view(-1, 1, 1) - r) / softness)  # (B,b,b)
    m_low_mid = torch.sigmoid((t_high.view(-1, 1, 1) - r) / softness)
    return torch.stack([m_low, m_low_mid - m_low, 1.0 - m_low_mid], dim=1)


def dct_bands(
    x: Tensor, t_low: Tensor, t_high: Tensor, *, block: int = 8, softness: float = 0.25
) -> tuple[Tensor, Tensor, Tensor]:
    """Split ``x`` (B,C,H,W) into block-DCT low / mid / high components (each (B,C,H,W), summing to ``x``).

    ``t_low``, ``t_high``: (B,) per-image radius thresholds (see :func:`dct_band_masks`). Low and mid are inverse
    transforms of the masked coefficients; high is the remainder ``x − low − mid`` (the inverse of the high-masked
    coefficients, by linearity, without a third transform).
    """
    _check_4d(x)
    h, w = x.shape[-2:]
    xp = pad_to_multiple(x, block)
    coef = block_dct2d(xp, block)
    b, c, hp, wp = coef.shape
    masks = dct_band_masks(t_low.to(x.dtype), t_high.to(x.dtype), block=block, softness=softness)  # (B,3,b,b)
    cb = coef.reshape(b, 1, c, hp // block, block, wp // block, block)
    m = masks[:, :2].reshape(b, 2, 1, 1, block, 1, block)
    low_mid = block_idct2d((cb * m).reshape(b * 2, c, hp, wp), block).reshape(b, 2, c, hp, wp)
    low, mid = low_mid[:, 0, :, :h, :w], low_mid[:, 1, :, :h, :w]
    return low, mid, x - low - mid


# --------------------------------------------------------------------------------------------------------------------
# Haar DWT (one level, orthonormal)
# --------------------------------------------------------------------------------------------------------------------
def haar_dwt2d(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One-level orthonormal Haar DWT of ``x`` (B,C,H,W), H and W even → LL, LH, HL, HH (each (B,C,H/2,W/2)).

    LH holds horizontal detail (differences across rows), HL vertical detail (differences across columns).
    """
    _check_4d(x)
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(f"Haar DWT needs even H, W, got {tuple(x.shape[-2:])} (use pad_to_multiple)")
    a = x[..., 0::2, 0::2]
    b = x[..., 0::2, 1::2]
    c = x[..., 1::2, 0::2]
    d = x[..., 1::2, 1::2]
    ll = (a + b + c + d) * 0.5
    lh = (a + b - c - d) * 0.5
    hl = (a - b + c - d) * 0.5
    hh = (a - b - c + d) * 0.5
    return ll, lh, hl, hh


def haar_idwt2d(ll: Tensor, lh: Tensor, hl: Tensor, hh: Tensor) -> Tensor:
    """Inverse of :func:`haar_dwt2d` → (B,C,2h,2w)."""
    a = (ll + lh + hl + hh) * 0.5
    b = (ll + lh - hl - hh) * 0.5
    c = (ll - lh + hl - hh) * 0.5
    d = (ll - lh - hl + hh) * 0.5
    bsz, ch, h, w = ll.shape
    top = torch.stack([a, b], dim=-1).reshape(bsz, ch, h, 2 * w)  # interleave columns
    bottom = torch.stack([c, d], dim=-1).reshape(bsz, ch, h, 2 * w)
    return torch.stack([top, bottom], dim=-2).reshape(bsz, ch, 2 * h, 2 * w)  # interleave rows


def haar_bands(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Spatial-domain Haar components of ``x`` (B,C,H,W): the inverse DWT of each sub-band alone (sum = ``x``).

    Closed form per 2×2 block (no transform needed): LL = block mean, LH = row mean − block mean, HL = column
    mean − block mean, HH = the rest — exactly ``haar_idwt2d`` of one sub-band of ``haar_dwt2d`` at a time.
    """
    _check_4d(x)
    b, c, h, w = x.shape
    xp = pad_to_multiple(x, 2)
    h2, w2 = xp.shape[-2] // 2, xp.shape[-1] // 2
    xb = xp.reshape(b, c, h2, 2, w2, 2)
    row = xb.mean(dim=5, keepdim=True)  # (B,C,h2,2,w2,1)
    col = xb.mean(dim=3, keepdim=True)  # (B,C,h2,1,w2,2)
    mean = row.mean(dim=3, keepdim=True)  # (B,C,h2,1,w2,1)
    parts = (mean.expand(xb.shape), (row - mean).expand(xb.shape), (col - mean).expand(xb.shape), xb - row - col + mean)
    ll, lh, hl, hh = (p.reshape(b, c, 2 * h2, 2 * w2)[..., :h, :w] for p in parts)
    return ll, lh, hl, hh


# --------------------------------------------------------------------------------------------------------------------
# FFT low / high pass
# --------------------------------------------------------------------------------------------------------------------
def fft_radius(h: int, w: int, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """(h, w//2+1) radial frequency of the ``rfft2`` grid in cycles/pixel (0 = DC, √0.5 ≈ 0.707 = corner)."""
    fy = torch.fft.fftfreq(h, dtype=dtype, device=device).unsqueeze(1)
    fx = torch.fft.rfftfreq(w, dtype=dtype, device=device).unsqueeze(0)
    return torch.sqrt(fy * fy + fx * fx)


def fft_lowpass_mask(h: int, w: int, cutoff: Tensor, *, softness: float = 0.02) -> Tensor:
    """Soft radial low-pass mask on the ``rfft2`` grid: σ((cutoff − ρ)/softness); ``cutoff`` is a scalar tensor."""
    if softness <= 0:
        raise ValueError(f"softness must be > 0, got {softness}")
    rho = fft_radius(h, w, dtype=cutoff.dtype, device=cutoff.device)
    return torch.sigmoid((cutoff - rho) / softness)


def fft_bands(x: Tensor, cutoff: Tensor, *, softness: float = 0.02) -> tuple[Tensor, Tensor]:
    """Split ``x`` (B,C,H,W) into FFT low-pass and high-pass components (sum = ``x``); any H, W.

    ``cutoff`` (scalar tensor, cycles/pixel) may require grad: the mask is differentiable in it.
    """
    _check_4d(x)
    h, w = x.shape[-2:]
    spec = torch.fft.rfft2(x, norm="ortho")
    mask = fft_lowpass_mask(h, w, cutoff.to(x.dtype), softness=softness)
    low = torch.fft.irfft2(spec * mask, s=(h, w), norm="ortho")
    return low, x - low  # high = irfft2(spec · (1 − mask)) by linearity
