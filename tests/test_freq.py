"""pipeline/model/freq.py: exact, invertible DCT / Haar / FFT transforms and band splits that sum back to the input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
from conftest import assert_close

from pipeline.model import freq

pytestmark = pytest.mark.usefixtures("single_thread")


SIZES = [(32, 48), (37, 53), (5, 3), (1, 1)]


def test_dct_matrix_is_orthonormal_and_matches_scipy() -> None:
    d = freq.dct_matrix(8, dtype=torch.float64)
    assert_close(d @ d.T, torch.eye(8, dtype=torch.float64), atol=1e-12, rtol=0)
    block = np.random.default_rng(0).standard_normal((8, 8))
    ours = (d @ torch.from_numpy(block) @ d.T).numpy()
    np.testing.assert_allclose(ours, scipy.fft.dctn(block, norm="ortho"), atol=1e-12)


def test_block_dct_round_trip_and_block_layout() -> None:
    x = torch.rand(2, 3, 16, 24)
    coef = freq.block_dct2d(x)
    assert coef.shape == x.shape
    assert_close(freq.block_idct2d(coef), x, atol=1e-5, rtol=0)
    # the coefficients of block (1, 2) come from that block only
    ref = scipy.fft.dctn(x[0, 1, 8:16, 16:24].double().numpy(), norm="ortho")
    np.testing.assert_allclose(coef[0, 1, 8:16, 16:24].double().numpy(), ref, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 8"):
        freq.block_dct2d(torch.rand(1, 1, 12, 16))


@pytest.mark.parametrize("size", SIZES)
def test_dct_bands_sum_to_input_any_size(size: tuple[int, int]) -> None:
    x = torch.rand(2, 4, *size)
    t_low, t_high = torch.tensor([2.5, 1.0]), torch.tensor([6.5, 9.0])  # a different split per image
    bands = freq.dct_bands(x, t_low, t_high)
    assert all(b.shape == x.shape for b in bands)
    assert (sum(bands) - x).abs().max().item() <= 1e-5


def test_dct_bands_content_and_threshold_gradient() -> None:
    const = torch.full((1, 1, 16, 16), 0.7)
    low, mid, high = freq.dct_bands(const, torch.tensor([2.5]), torch.tensor([6.5]))
    # a constant image is pure DC: all of it sits in the low band (the soft mask at radius 0 is σ(10) ≈ 1)
    assert_close(low, const, atol=1e-4, rtol=0)
    assert high.abs().max() < 1e-4
    masks = freq.dct_band_masks(torch.tensor([2.5]), torch.tensor([6.5]))
    assert_close(masks.sum(dim=1), torch.ones(1, 8, 8))
    t_low = torch.tensor([2.5], requires_grad=True)
    x = torch.rand(1, 2, 16, 16)
    freq.dct_bands(x, t_low, torch.tensor([6.5]))[0].square().sum().backward()
    assert t_low.grad is not None and t_low.grad.abs() > 0


def test_haar_round_trip_and_energy() -> None:
    x = torch.rand(2, 3, 10, 14, dtype=torch.float64)
    sub = freq.haar_dwt2d(x)
    assert all(s.shape == (2, 3, 5, 7) for s in sub)
    assert_close(freq.haar_idwt2d(*sub), x, atol=1e-12, rtol=0)
    energy = sum(s.square().sum() for s in sub)
    assert_close(energy, x.square().sum())  # orthonormal
    with pytest.raises(ValueError, match="even"):
        freq.haar_dwt2d(torch.rand(1, 1, 5, 4))


@pytest.mark.parametrize("size", SIZES)
def test_haar_bands_sum_to_input_any_size(size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size)
    bands = freq.haar_bands(x)
    assert all(b.shape == x.shape for b in bands)
    assert (sum(bands) - x).abs().max().item() <= 1e-5


@pytest.mark.parametrize("size", SIZES)
def test_fft_bands_sum_to_input_any_size(size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size)
    low, high = freq.fft_bands(x, torch.tensor(0.15))
    assert low.shape == high.shape == x.shape
    assert (low + high - x).abs().max().item() <= 1e-5
    spec = torch.fft.rfft2(x, norm="ortho")
    assert (torch.fft.irfft2(spec, s=size, norm="ortho") - x).abs().max().item() <= 1e-5


def test_fft_bands_content_and_cutoff_gradient() -> None:
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    smooth = torch.cos(2 * torch.pi * xx / 64).view(1, 1, 64, 64)  # 1/64 cycles/px: below the cutoff
    checker = torch.cos(torch.pi * (xx + yy)).view(1, 1, 64, 64)  # 0.707 cycles/px: above it
    low, high = freq.fft_bands(smooth + checker, torch.tensor(0.15), softness=0.02)
    pass_smooth = torch.sigmoid(torch.tensor((0.15 - 1 / 64) / 0.02))  # the soft mask's value at each frequency
    pass_checker = torch.sigmoid(torch.tensor((0.15 - 0.5**0.5) / 0.02))
    assert_close(low, smooth * pass_smooth + checker * pass_checker, atol=1e-5, rtol=0)
    assert_close(high, smooth * (1 - pass_smooth) + checker * (1 - pass_checker), atol=1e-5, rtol=0)
    assert pass_smooth > 0.99 and pass_checker < 1e-6
    cutoff = torch.tensor(0.05, requires_grad=True)
    freq.fft_bands(torch.rand(1, 1, 32, 32), cutoff)[0].square().sum().backward()
    assert cutoff.grad is not None and cutoff.grad.abs() > 0


def test_pad_to_multiple() -> None:
    x = torch.rand(1, 2, 37, 53)
    p = freq.pad_to_multiple(x, 8)
    assert p.shape == (1, 2, 40, 56)
    assert_close(p[..., :37, :53], x)
    assert freq.pad_to_multiple(p, 8) is p


def test_haar_bands_are_single_subband_inverses() -> None:
    x = torch.rand(1, 2, 6, 8, dtype=torch.float64)
    sub = freq.haar_dwt2d(x)
    for k, band in enumerate(freq.haar_bands(x)):
        alone = [s if j == k else torch.zeros_like(s) for j, s in enumerate(sub)]
        assert_close(band, freq.haar_idwt2d(*alone), atol=1e-12, rtol=0)
