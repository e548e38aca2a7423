"""NTIRE Y-channel PSNR/SSIM: known values, an independent SSIM reference, and BasicSR's golden numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import signal

from pipeline.core.imageio import quantize_8bit, read_image
from pipeline.core.metrics import crop_to_match, gaussian_window, psnr_y, rgb_to_y, ssim_y
from pipeline.core.resize import imresize


def test_y_channel_uses_bt601_with_offsets():
    black, white = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    assert rgb_to_y(black).item() == pytest.approx(16.0)
    assert rgb_to_y(white).item() == pytest.approx(235.0)
    red = torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)
    assert rgb_to_y(red).item() == pytest.approx(16 + 65.481)
    assert rgb_to_y(red).dtype == torch.float64


def test_psnr_known_value_and_border_crop():
    hr = torch.zeros(2, 3, 12, 12)
    sr = hr.clone()
    sr[:, :, 4:-4, 4:-4] = 10 / 255  # grey offset of 10/255 in RGB -> Y offset of 219*10/255 on 0-255
    dy = 219.0 * 10 / 255
    expected = 10 * math.log10(255**2 / dy**2)
    np.testing.assert_allclose(psnr_y(sr, hr, crop_border=4).numpy(), [expected, expected], rtol=1e-7)
    sr[:, :, :4] = 1.0  # changes inside the border do not count
    np.testing.assert_allclose(psnr_y(sr, hr, crop_border=4).numpy(), [expected, expected], rtol=1e-7)
    assert math.isinf(psnr_y(hr, hr, crop_border=0)[0].item())


def test_ssim_matches_independent_2d_reference():
    rng = np.random.default_rng(0)
    hr = torch.from_numpy(rng.random((1, 3, 40, 33))).float()
    sr = (hr + 0.05 * torch.from_numpy(rng.standard_normal((1, 3, 40, 33))).float()).clamp(0, 1)
    got = ssim_y(sr, hr, crop_border=4).item()
    # reference: BasicSR's _ssim with a full 2-D window and scipy's valid correlation
    a = rgb_to_y(sr[..., 4:-4, 4:-4])[0, 0].numpy()
    b = rgb_to_y(hr[..., 4:-4, 4:-4])[0, 0].numpy()
    w = gaussian_window().numpy()
    f = lambda x: signal.correlate2d(x, w, mode="valid")  # noqa: E731
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m1, m2 = f(a), f(b)
    s1, s2, s12 = f(a * a) - m1**2, f(b * b) - m2**2, f(a * b) - m1 * m2
    ref = (((2 * m1 * m2 + c1) * (2 * s12 + c2)) / ((m1**2 + m2**2 + c1) * (s1 + s2 + c2))).mean()
    assert got == pytest.approx(ref, abs=1e-12)
    assert ssim_y(hr, hr, crop_border=4).item() == pytest.approx(1.0)


def test_shape_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_y(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9), crop_border=0)
    with pytest.raises(ValueError, match="too small for SSIM"):
        ssim_y(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), crop_border=4)
    hr = torch.zeros(1, 3, 39, 42)
    assert crop_to_match(hr, torch.zeros(1, 3, 36, 40), scale=4).shape == (1, 3, 36, 40)
    with pytest.raises(ValueError, match="size mismatch"):
        crop_to_match(hr, torch.zeros(1, 3, 32, 40), scale=4)


def test_bicubic_reproduces_basicsr_golden_values(shared_dir):
    """Every bicubic number of golden/metrics_reference.json (BasicSR's own output) within 1e-4 dB / 1e-5 SSIM."""
    golden = json.loads((shared_dir / "golden" / "metrics_reference.json").read_text())
    val = shared_dir / "data" / "val"
    assert len(golden["images"]) == 19
    for item in golden["images"]:
        lr = read_image(val / item["lr"])
        sr = quantize_8bit(imresize(lr, 4.0))
        hr = crop_to_match(read_image(val / item["hr"]), sr, scale=4)
        psnr = psnr_y(sr, hr, crop_border=4).item()
        ssim = ssim_y(sr, hr, crop_border=4).item()
        assert abs(psnr - item["bicubic"]["psnr"]) <= 1e-4, (item["hr"], psnr, item["bicubic"]["psnr"])
        assert abs(ssim - item["bicubic"]["ssim"]) <= 1e-5, (item["hr"], ssim, item["bicubic"]["ssim"])
