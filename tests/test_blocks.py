"""pipeline/blocks: each building block of the fusion network on tiny inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close

from pipeline.model.blocks import (
    GUIDANCE_GROUPS,
    BandFusion2d,
    BandSplitPredictor2d,
    CrossBandAttention2d,
    CrossExpertAttention2d,
    ExpertEmbed2d,
    ExpertGating2d,
    FourierUnit2d,
    FrequencyDecomposition2d,
    HessianAttention2d,
    HierarchicalFusion2d,
    LaplacianEdgeEnhance2d,
    LayerNorm2d,
    LKA2d,
    LKABlock2d,
    LRResidual2d,
    RefineCNN2d,
    StructureUNet2d,
    TokenAttention,
    from_tokens,
    laplacian_pyramid,
    load_balance_loss,
    to_tokens,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _perturb(module: torch.nn.Module) -> None:
    """Give zero-initialised layers random weights, to test the non-trivial path."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def test_layer_norm2d_matches_layer_norm_over_channels() -> None:
    x = torch.randn(2, 6, 5, 7)
    ln = LayerNorm2d(channels=6)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (6,), ln.weight, ln.bias, ln.eps).permute(0, 3, 1, 2)
    assert_close(ln(x), ref)


def test_lka_receptive_field_is_23x23() -> None:
    lka = LKA2d(channels=2)
    x = torch.zeros(1, 2, 41, 41)
    x[..., 20, 20] = 1.0
    with torch.no_grad():
        attn = lka.pw(lka.dw_dilated(lka.dw(x))) - lka.pw(lka.dw_dilated(lka.dw(torch.zeros_like(x))))
    support = attn.abs().sum(dim=(0, 1)) > 0
    rows, cols = support.nonzero(as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == (9, 31)  # 20 ± 11
    assert (cols.min().item(), cols.max().item()) == (9, 31)
    y = LKABlock2d(channels=2)(torch.randn(1, 2, 9, 11))
    assert y.shape == (1, 2, 9, 11) and y.is_contiguous()


def test_token_layout_round_trip() -> None:
    t = torch.randn(2, 3, 4, 5, 6)
    seq = to_tokens(t)
    assert seq.shape == (2 * 5 * 6, 3, 4)
    assert_close(from_tokens(seq, batch=2, height=5, width=6), t)


def test_token_attention_matches_reference_and_is_per_pixel() -> None:
    attn = TokenAttention(channels=8, heads=2)
    t = torch.randn(5, 3, 8)
    # reference: plain multi-head attention per sequence
    x = attn.norm(t)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        a = (q[..., sl] @ k[..., sl].transpose(1, 2) / 2.0).softmax(-1)
        heads.append(a @ v[..., sl])
    ref = t + attn.proj(torch.cat(heads, dim=-1))
    assert_close(attn(t), ref, atol=1e-5, rtol=1e-5)
    # per pixel: each sequence is independent, and permuting tokens permutes the output
    assert_close(attn(t[2:3]), attn(t)[2:3], atol=1e-6, rtol=1e-6)
    perm = torch.tensor([2, 0, 1])
    assert_close(attn(t[:, perm]), attn(t)[:, perm], atol=1e-5, rtol=1e-5)


def test_frequency_decomposition_bands_and_split() -> None:
    dec = FrequencyDecomposition2d(
        channels=8,
        band_channels=4,
        block=8,
        init_split=(2.5, 6.5),
        dct_softness=0.25,
        adaptive_split=True,
        split_hidden=4,
        fft_cutoff=0.15,
        fft_softness=0.02,
    )
    x = torch.randn(2, 8, 13, 19)
    bands, split = dec(x)
    assert len(bands) == 9 and all(b.shape == (2, 4, 13, 19) for b in bands)
    assert_close(split, torch.tensor([[2.5, 6.5], [2.5, 6.5]]))
    assert_close(dec.fft_cutoff, torch.tensor(0.15))
    xp = dec.proj(x)
    for group in (bands[0:3], bands[3:7], bands[7:9]):  # each domain is a partition of the projected input
        assert (sum(group) - xp).abs().max() <= 1e-5
    pred = BandSplitPredictor2d(channels=8, hidden=4, init_split=(2.0, 5.0))
    _perturb(pred)
    t_low, t_high = pred(x)
    assert t_low.shape == (2,) and bool((t_high > t_low).all())


def test_band_fusion_starts_as_group_means() -> None:
    fusion = BandFusion2d(in_channels=3, channels=5, num_bands=9, groups=GUIDANCE_GROUPS)
    bands = [torch.randn(2, 3, 4, 4) for _ in range(9)]
    g = fusion(bands)
    assert g.shape == (2, 3, 5, 4, 4)
    weight, bias = fusion.proj.weight.view(3, 5, 3, 1, 1), fusion.proj.bias.view(3, 5)
    for k, group in enumerate(GUIDANCE_GROUPS):
        mean = sum(bands[i] for i in group) / len(group)
        assert_close(g[:, k], F.conv2d(mean, weight[k], bias[k]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="expected 9 bands"):
        fusion(bands[:3])


def test_cross_band_attention_identity_at_init_and_shapes() -> None:
    cba = CrossBandAttention2d(channels=8, token_channels=4, num_bands=3, depth=2, heads=2)
    x, bands = torch.randn(2, 8, 6, 7), torch.randn(2, 3, 4, 6, 7)
    y, b = cba(x, bands)
    assert_close(y, x)  # zero-initialised output projection
    assert b.shape == bands.shape and not torch.allclose(b, bands)
    _perturb(cba)
    y, _ = cba(x, bands)
    assert not torch.allclose(y, x)


@pytest.mark.parametrize("experts", [1, 3])
def test_cross_expert_attention(experts: int) -> None:
    cea = CrossExpertAttention2d(channels=8, token_channels=4, num_experts=experts, depth=1, heads=2)
    tokens, x = torch.randn(2, experts, 4, 5, 6), torch.randn(2, 8, 5, 6)
    assert_close(cea(tokens, x), x)
    _perturb(cea)
    assert cea(tokens, x).shape == x.shape
    with pytest.raises(ValueError, match="expert tokens"):
        cea(torch.randn(2, experts + 1, 4, 5, 6), x)


def test_fourier_unit_is_global() -> None:
    fu = FourierUnit2d(channels=4, hidden=4, kernels=3)
    x = torch.randn(1, 4, 16, 15)
    assert_close(fu(x), x)  # zero-initialised output
    _perturb(fu)
    x2 = x.clone()
    x2[:, 0, 0, 0] += 5.0
    far = (fu(x2) - fu(x))[..., 8:, 8:]  # a corner change reaches the opposite corner in one block
    assert far.abs().max() > 1e-4


def test_hessian_attention_detects_curvature() -> None:
    hess = HessianAttention2d(channels=2, hessian_channels=2, dilations=(1, 2))
    yy, xx = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    quad = (0.5 * xx**2 - 1.5 * yy**2).expand(1, 2, 12, 12)
    conv = hess.hessian[1]  # dilation 2, stencils scaled to unit spacing
    dxx, dyy, dxy = conv(quad).reshape(1, 2, 3, 12, 12)[0, 0, :, 4:8, 4:8]
    assert_close(dxx, torch.full_like(dxx, 1.0))
    assert_close(dyy, torch.full_like(dyy, -3.0))
    assert_close(dxy, torch.zeros_like(dxy))
    x = torch.randn(2, 2, 9, 10)
    y = hess(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    ratio = y / x
    assert bool(((ratio > 0) & (ratio < 2)).all())  # x · 2σ(·)


def test_gating_uniform_at_init_and_temperature() -> None:
    gating = ExpertGating2d(channels=6, num_experts=3, hidden=4, temperature=1.0, learnable_temperature=False)
    gates, difficulty = gating(torch.randn(2, 6, 5, 7))
    assert gates.shape == (2, 3, 20, 28) and difficulty.shape == (2, 1, 20, 28)
    assert_close(gates, torch.full_like(gates, 1 / 3))
    assert_close(difficulty, torch.full_like(difficulty, 0.5))
    _perturb(gating)
    x = torch.randn(2, 6, 5, 7)
    warm, _ = gating(x)
    gating.log_temperature.fill_(torch.log(torch.tensor(0.1)))
    cold, _ = gating(x)
    assert_close(warm.sum(1), torch.ones(2, 20, 28))
    assert cold.max(dim=1).values.mean() > warm.max(dim=1).values.mean()
    learn = ExpertGating2d(channels=6, num_experts=3, hidden=4, temperature=0.5, learnable_temperature=True)
    assert "log_temperature" in dict(learn.named_parameters())


def test_load_balance_loss_values() -> None:
    uniform = torch.full((2, 4, 8, 8), 0.25)
    assert load_balance_loss(uniform).item() == pytest.approx(1.0)
    collapsed = torch.zeros(2, 4, 8, 8)
    collapsed[:, 1] = 1.0
    assert load_balance_loss(collapsed).item() == pytest.approx(4.0)
    balanced = F.one_hot(torch.arange(4).repeat(32).view(2, 8, 8), 4).permute(0, 3, 1, 2).float()
    assert load_balance_loss(balanced).item() == pytest.approx(1.0)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    load_balance_loss(logits.softmax(1)).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_structure_unet_odd_sizes() -> None:
    unet = StructureUNet2d(channels=4, inner_channels=6, blocks=1)
    for size in [(7, 9), (8, 8), (1, 1)]:
        assert unet(torch.randn(1, 4, *size)).shape == (1, 4, *size)


def test_hierarchical_zero_at_init_then_blends() -> None:
    hier = HierarchicalFusion2d(channels=8, inner_channels=8, blocks=1, mid_channels=4, hr_channels=4, band_channels=6)
    s1 = hier.encode(torch.randn(2, 8, 5, 7))
    base, bands = torch.rand(2, 3, 20, 28), torch.randn(2, 3, 6, 5, 7)
    r, w = hier(s1, base, bands)
    assert r.shape == base.shape and torch.count_nonzero(r) == 0
    assert_close(w.sum(1), torch.full((2, 5, 7), 3.0))
    _perturb(hier)
    r, _ = hier(s1, base, bands)
    assert r.abs().max() > 0


def test_refine_cnn_zero_at_init() -> None:
    refine = RefineCNN2d(channels=8, blocks=1)
    r = refine(torch.randn(2, 8, 5, 7), torch.rand(2, 3, 20, 28))
    assert r.shape == (2, 3, 20, 28) and torch.count_nonzero(r) == 0


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_lr_residual_back_projection(mode: str) -> None:
    res = LRResidual2d(mode=mode)
    smooth = torch.rand(2, 3, 4, 4)
    lr = F.interpolate(smooth[:1], size=(16, 16), mode="bilinear", align_corners=False)
    sr = F.interpolate(smooth[1:], size=(64, 64), mode="bilinear", align_corners=False)  # consistent with another LR
    assert_close(res(lr, sr), sr)
    with torch.no_grad():
        res.gain.fill_(1.0)

    def lr_error(img: torch.Tensor) -> float:
        down = F.interpolate(img, size=(16, 16), mode=mode, align_corners=False, antialias=True)
        return (down - lr).abs().mean().item()

    assert lr_error(res(lr, sr)) < 0.5 * lr_error(sr)  # one back-projection step explains most of the LR


def test_laplacian_pyramid_and_edge_enhancement() -> None:
    img = torch.rand(1, 3, 37, 53)
    bands, low = laplacian_pyramid(img, 3)
    assert [b.shape[-2:] for b in bands] == [(37, 53), (19, 27), (10, 14)] and low.shape[-2:] == (5, 7)
    recon = low
    for band in reversed(bands):
        recon = F.interpolate(recon, size=band.shape[-2:], mode="bilinear", align_corners=False) + band
    assert_close(recon, img, atol=1e-5, rtol=0)
    edge = LaplacianEdgeEnhance2d(channels=4, levels=3)
    x = torch.randn(1, 4, 10, 14)
    sr = torch.rand(1, 3, 40, 56)
    assert_close(edge(x, sr), sr)
    with torch.no_grad():
        edge.gain_head.bias.fill_(0.5)  # +50 % detail at every level
    out = edge(x, sr)
    assert laplacian_pyramid(out, 1)[0][0].square().sum() > laplacian_pyramid(sr, 1)[0][0].square().sum()


def test_expert_embed_mixed_widths() -> None:
    embed = ExpertEmbed2d(feat_channels=(5, 9), channels=8, token_channels=4, feat_norm=True)
    lr, srs = torch.rand(2, 3, 4, 6), torch.rand(2, 2, 3, 16, 24)
    feats = [torch.randn(2, 5, 4, 6), torch.randn(2, 9, 4, 6)]
    tokens, x0 = embed(lr, srs, srs.mean(1), feats)
    assert tokens.shape == (2, 2, 4, 4, 6) and x0.shape == (2, 8, 4, 6)
