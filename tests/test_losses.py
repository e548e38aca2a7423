"""Each loss on inputs whose value is known by hand; the stage combination; the EMA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from pipeline.training.ema import ModelEma
from pipeline.training.losses import (
    CombinedLoss,
    LossWeights,
    VGGPerceptualLoss,
    charbonnier_loss,
    fft_loss,
    gate_oracle_loss,
    l1_loss,
    mse_y_loss,
    psnr_y_loss,
    sobel_loss,
    ssim_loss,
    swt_haar,
    swt_loss,
)


@pytest.fixture
def img() -> torch.Tensor:
    return torch.rand(2, 3, 16, 20)


def test_l1_and_charbonnier_known_values(img):
    assert l1_loss(img + 0.25, img).item() == pytest.approx(0.25, abs=1e-6)
    assert charbonnier_loss(img, img).item() == pytest.approx(1e-3, rel=1e-4)  # sqrt(eps^2)
    assert charbonnier_loss(img + 0.1, img).item() == pytest.approx(math.sqrt(0.01 + 1e-6), rel=1e-5)


def test_mse_y_is_the_scored_psnr(img):
    """−10·log10(mse_y) is the NTIRE PSNR (BT.601 Y, 16–235) of the pair without a border crop; a grey offset of d
    in every channel moves Y by d·219/255."""
    from pipeline.core.metrics import psnr_y

    sr = (img + 0.05 * torch.randn_like(img)).clamp(0, 1)
    expected = psnr_y(sr.double(), img.double(), crop_border=0)
    for i in range(2):
        got = -10.0 * torch.log10(mse_y_loss(sr[i : i + 1].double(), img[i : i + 1].double()))
        assert got.item() == pytest.approx(expected[i].item(), abs=1e-9)
    assert mse_y_loss(img + 0.1, img).item() == pytest.approx((0.1 * 219.0 / 255.0) ** 2, rel=1e-4)


def test_psnr_y_is_minus_the_mean_per_sample_psnr(img):
    """psnr_y_loss = −mean_b PSNR_Y(b) (the challenge's average over images, no crop), not −PSNR of the pooled MSE;
    a perfect sample stays finite (60 dB floor) and its gradient is zero."""
    from pipeline.core.metrics import psnr_y

    sr = img.clone()
    sr[0] = (img[0] + 0.02 * torch.randn_like(img[0])).clamp(0, 1)
    sr[1] = (img[1] + 0.2 * torch.randn_like(img[1])).clamp(0, 1)
    per = psnr_y(sr.double(), img.double(), crop_border=0)
    got = psnr_y_loss(sr.double(), img.double(), floor_db=200.0)
    assert got.item() == pytest.approx(-per.mean().item(), abs=1e-6)
    pooled = -10.0 * torch.log10(mse_y_loss(sr.double(), img.double()))
    assert abs(got.item() + pooled.item()) > 1.0  # the two samples' PSNRs differ a lot: averaging dB ≠ pooling MSE
    x = img.clone().requires_grad_(True)
    loss = psnr_y_loss(x, img)
    assert loss.item() == pytest.approx(-60.0, abs=1e-6)
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0


def test_fft_loss_of_a_constant_offset_is_all_dc(img):
    c, (h, w) = 0.2, img.shape[-2:]
    # ortho FFT of a constant c: only the DC coefficient, c*sqrt(HW), in the real part
    want = c * math.sqrt(h * w) / (h * (w // 2 + 1) * 2)
    assert fft_loss(img + c, img).item() == pytest.approx(want, rel=1e-4)
    assert fft_loss(img + c, img, hf_weight=3.0).item() == pytest.approx(want, rel=1e-4)  # DC has radius 0
    noise = 0.05 * torch.randn_like(img)
    assert fft_loss(img + noise, img, hf_weight=3.0) > fft_loss(img + noise, img)


def test_swt_is_undecimated_and_exact_on_constants(img):
    bands = swt_haar(img, levels=2)
    assert len(bands) == 7 and all(b.shape == img.shape for b in bands)
    flat = swt_haar(torch.full((1, 1, 8, 8), 0.7), levels=2)
    assert all(b.abs().max() < 1e-7 for b in flat[:-1]) and torch.allclose(flat[-1], torch.full_like(flat[-1], 0.7))
    # a constant offset changes only the final LL band: loss = c / 7 bands
    assert swt_loss(img + 0.14, img).item() == pytest.approx(0.02, rel=1e-4)
    assert swt_loss(img, img).item() == 0.0


def test_ssim_loss(img):
    assert ssim_loss(img, img).item() == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < ssim_loss(img, img.flip(-1)).item() <= 2.0


def test_sobel_loss_known_ramp():
    x = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 1, 10, 10) * 0.01  # slope 0.01 per pixel along x
    zero = torch.zeros_like(x)
    # interior gx = (1+2+1) * 2 * 0.01 = 0.08; borders (replicate padding) 0.04; gy = 0
    g = sobel_loss(x, zero).item()
    gx_mean = (8 * 0.08 + 2 * 0.04) / 10
    assert g == pytest.approx(gx_mean / 2, rel=1e-5)  # mean over the gx and gy maps
    assert sobel_loss(x + 0.3, x).item() == pytest.approx(0.0, abs=1e-7)


def test_vgg_perceptual_loss_from_local_file(tmp_path, img):
    from torchvision.models.vgg import cfgs, make_layers

    with pytest.raises(FileNotFoundError, match=r"VGG19 weights not found: .*vgg19\.pth"):
        VGGPerceptualLoss(weights_path=tmp_path / "vgg19.pth")
    with torch.device("meta"):
        shapes = make_layers(cfgs["E"]).state_dict()
    features = {f"features.{k}": 0.05 * torch.randn(v.shape) for k, v in shapes.items()}
    torch.save(features, tmp_path / "vgg19.pth")
    loss = VGGPerceptualLoss(
        weights_path=tmp_path / "vgg19.pth", layers=("relu1_2", "relu2_2"), layer_weights=(1.0, 1.0)
    )
    assert loss(img, img).item() == 0.0
    sr = img.clone().requires_grad_(True)
    value = loss(sr, img.flip(-1))
    value.backward()
    assert value.item() > 0 and sr.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in loss.parameters())
    features.pop("features.0.bias")
    torch.save(features, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="Missing key"):
        VGGPerceptualLoss(weights_path=tmp_path / "bad.pth")


def test_combined_loss_weights_and_terms(img):
    crit = CombinedLoss()
    w = LossWeights(l1=1.0, charbonnier=0.0, fft=0.1, swt=0.5, balance=0.01)
    balance = torch.tensor(2.0)
    total, terms = crit(img + 0.1, img, w, balance=balance)
    assert set(terms) == {"l1", "fft", "swt", "balance"}
    want = terms["l1"] + 0.1 * terms["fft"] + 0.5 * terms["swt"] + 0.01 * 2.0
    assert total.item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="no VGG19 weights"):
        crit(img, img, LossWeights(perceptual=1.0))
    with pytest.raises(ValueError, match="every loss weight is zero"):
        crit(img, img, LossWeights(charbonnier=0.0, balance=0.0))


def test_ema_update_rule_and_warmup():
    model = nn.Linear(3, 2)
    ema = ModelEma(model, decay=0.9)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, 0.9 * before + 0.1 * model.weight)
    assert int(ema.num_updates) == 1 and not any(p.requires_grad for p in ema.module.parameters())
    warm = ModelEma(model, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)
    # state dict round trip (resume)
    again = ModelEma(nn.Linear(3, 2), decay=0.9)
    again.load_state_dict(ema.state_dict())
    torch.testing.assert_close(again.module.weight, ema.module.weight)
    assert int(again.num_updates) == 1


def test_gate_oracle_loss_by_hand():
    # 2 experts, 1x3 pixels, grey images (Y difference = RGB difference · (65.481+128.553+24.966)/255)
    hr = torch.full((1, 3, 1, 3), 0.5)
    srs = torch.stack([torch.tensor([0.50, 0.60, 0.5]), torch.tensor([0.70, 0.52, 0.5])])  # (E,W)
    srs = srs.view(1, 2, 1, 1, 3).expand(1, 2, 3, 1, 3).clone()  # (B,E,3,H,W)
    gates = torch.tensor([[0.8, 0.3, 0.5], [0.2, 0.7, 0.5]]).view(1, 2, 1, 3)
    k = (65.481 + 128.553 + 24.966) / 255
    # pixel 0: oracle e0, weight |0.2|k; pixel 1: oracle e1, weight |0.1-0.02|k; pixel 2: no difference, weight 0
    w0, w1 = 0.2 * k, 0.08 * k
    want = (w0 * -math.log(0.8) + w1 * -math.log(0.7)) / (w0 + w1)
    assert abs(float(gate_oracle_loss(gates, srs, hr)) - want) < 1e-5
    # perfect gates → 0; the term needs gates
    perfect = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]).view(1, 2, 1, 3)
    assert float(gate_oracle_loss(perfect, srs, hr)) < 1e-5
    with pytest.raises(ValueError, match="no gates"):
        CombinedLoss()(srs[:, 0], hr, LossWeights(gate_oracle=1.0))
    total, terms = CombinedLoss()(
        srs[:, 0], hr, LossWeights(charbonnier=0.0, balance=0.0, gate_oracle=2.0), gates=gates, srs=srs
    )
    assert set(terms) == {"gate_oracle"} and abs(float(total) - 2 * want) < 1e-5


def test_every_loss_weight_names_a_term_of_the_table():
    """The loss terms come from one name → function table: every LossWeights field is a term (fft_hf_weight is fft's
    parameter), in the order they are summed."""
    import dataclasses

    from pipeline.training.losses import TERMS, LossWeights

    fields = [f.name for f in dataclasses.fields(LossWeights) if f.name != "fft_hf_weight"]
    assert list(TERMS) == fields
