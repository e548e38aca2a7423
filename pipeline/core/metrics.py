"""The official NTIRE ×4 fidelity metrics: PSNR and SSIM on the BT.601 Y channel.

Exactly BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with ``test_y_channel=True`` (what the NTIRE 2025
``eval.py`` calls), re-implemented because basicsr no longer imports with current torchvision:

* Y = 16 + 65.481 R + 128.553 G + 24.966 B on RGB in [0,1], then /255 — the *YCbCr with 16–235 offsets* luma;
  pyiqa's default "Y" is YIQ and reads about 1.3 dB lower, so it is not used here;
* the Y channel is not rounded; all arithmetic is float64 on the 0–255 scale;
* ``crop_border`` pixels (= the scale) are removed on each side before measuring;
* SSIM uses the 11×11 Gaussian window with σ = 1.5, evaluated on the valid region only (no padding), averaged.

The perceptual metrics of the perceptual track live in :mod:`pipeline.evaluation.perceptual` (they need pyiqa and
weights).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

__all__ = ["Y_WEIGHTS", "rgb_to_y", "psnr_y", "ssim_y", "crop_to_match", "gaussian_window"]

Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """``(B,3,H,W)`` RGB in [0,1] → ``(B,1,H,W)`` float64 BT.601 luma on the 0–255 scale (16–235 for [0,1] input)."""
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(f"expected (B,3,H,W) RGB, got {tuple(img.shape)}")
    x = img.to(torch.float64)
    y = 16.0 + Y_WEIGHTS[0] * x[:, 0] + Y_WEIGHTS[1] * x[:, 1] + Y_WEIGHTS[2] * x[:, 2]  # on [0,1] → 0–255
    return y.unsqueeze(1)


def _prepare(sr: torch.Tensor, hr: torch.Tensor, crop_border: int) -> tuple[torch.Tensor, torch.Tensor]:
    if sr.shape != hr.shape:
        raise ValueError(f"sr {tuple(sr.shape)} and hr {tuple(hr.shape)} differ in shape")
    if crop_border < 0:
        raise ValueError("crop_border must be >= 0")
    if crop_border:
        sr = sr[..., crop_border:-crop_border, crop_border:-crop_border]
        hr = hr[..., crop_border:-crop_border, crop_border:-crop_border]
    return rgb_to_y(sr), rgb_to_y(hr)


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, *, crop_border: int) -> torch.Tensor:
    """Per-image PSNR (dB) on the Y channel, ``(B,)`` float64; ``inf`` for identical images."""
    ys, yh = _prepare(sr, hr, crop_border)
    mse = ((ys - yh) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10((255.0 * 255.0) / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """``cv2.getGaussianKernel(size, sigma)`` as a float64 vector."""
    half = (size - 1) / 2
    g = np.exp(-((np.arange(size) - half) ** 2) / (2 * sigma * sigma))
    return torch.from_numpy(g / g.sum())


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The 2-D SSIM window: outer product of ``cv2.getGaussianKernel(size, sigma)`` with itself, float64."""
    g = _gaussian_1d(size, sigma)
    return torch.outer(g, g)


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, *, crop_border: int) -> torch.Tensor:
    """Per-image SSIM on the Y channel (BasicSR ``_ssim``: valid-region 11×11 Gaussian, σ=1.5), ``(B,)`` float64."""
    ys, yh = _prepare(sr, hr, crop_border)
    if min(ys.shape[-2:]) < 11:
        raise ValueError(f"image too small for SSIM after cropping: {tuple(ys.shape[-2:])}")
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    g = _gaussian_1d().numpy()
    # The 11x11 window is the outer product of two 1-D Gaussians: filter columns then rows and keep the 'valid'
    # region. scipy's float64 correlate1d is ~20x faster on CPU than torch's float64 conv2d.
    x = torch.cat([ys, yh, ys * ys, yh * yh, ys * yh], dim=1).cpu().numpy()  # (B,5,H,W)
    x = ndimage.correlate1d(x, g, axis=2, mode="constant")[:, :, 5:-5]
    x = ndimage.correlate1d(x, g, axis=3, mode="constant")[:, :, :, 5:-5]
    mu1, mu2, e11, e22, e12 = torch.from_numpy(x).unbind(dim=1)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = e11 - mu1_sq
    s2 = e22 - mu2_sq
    s12 = e12 - mu12
    ssim_map = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return ssim_map.mean(dim=(1, 2))


def crop_to_match(hr: torch.Tensor, sr: torch.Tensor, *, scale: int) -> torch.Tensor:
    """Crop ``hr`` to a multiple of ``scale`` and check it then has ``sr``'s size (NTIRE convention for HR whose
    sides are not multiples of the scale). Raises a ValueError describing the mismatch otherwise."""
    h, w = hr.shape[-2:]
    hc, wc = h - h % scale, w - w % scale
    hr = hr[..., :hc, :wc]
    if hr.shape[-2:] != sr.shape[-2:]:
        raise ValueError(
            f"size mismatch: SR is {sr.shape[-1]}x{sr.shape[-2]} (WxH) but HR cropped to a multiple of {scale} is "
            f"{wc}x{hc} (from {w}x{h})"
        )
    return hr
