"""The set gate (pipeline/model/blocks/set_gate.py) and the fusion built on it: starts exactly at its blend, works for
any number of experts with the same parameters, is equivariant to the experts' order, and trains."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.core.config import ConfigError
from pipeline.model.blocks import SetGate2d
from pipeline.model.fusion_config import FusionConfig, SetGateConfig
from pipeline.model.fusion_net import FusionNet

pytestmark = pytest.mark.usefixtures("single_thread")

OFF = ("freq", "cross_band", "cross_expert", "fourier_unit", "hierarchical", "gating", "refine", "lr_residual", "edge")


def pool_config(e: int, *, base=None, signals=False, channels=8, depth=2, **changes) -> FusionConfig:
    cfg = FusionConfig()
    cfg = dataclasses.replace(
        cfg,
        inputs=dataclasses.replace(cfg.inputs, feat_channels=(0,) * e, sr_dtype="float16"),
        set_gate=SetGateConfig(enabled=True, channels=channels, depth=depth, base=base, signals=signals),
        hessian=dataclasses.replace(cfg.hessian, enabled=False),
        **{k: dataclasses.replace(getattr(cfg, k), enabled=False) for k in OFF},
    )
    return dataclasses.replace(cfg, **changes)


def inputs(e: int, b: int = 2, h: int = 6, w: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(b, 3, h, w, generator=g)
    srs = (
        torch.rand(b, e, 3, 4 * h, 4 * w, generator=g) * 0.2
        + lr.repeat_interleave(4, -1).repeat_interleave(4, -2)[:, None] * 0.8
    )
    return lr, srs.clamp(0, 1)


def perturb(module: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("e", [1, 2, 3, 11, 20])
def test_untrained_fusion_is_exactly_its_blend_for_any_number_of_experts(e):
    base = tuple(float(x) for x in torch.linspace(-0.2, 0.6, e)) if e > 1 else (1.0,)
    model = FusionNet(config=pool_config(e, base=base, signals=True))
    lr, srs = inputs(e)
    out = model(lr, srs, [])
    want = torch.einsum("e,bechw->bchw", torch.tensor(base), srs)
    assert torch.allclose(out.sr, want, atol=1e-6)
    assert out.gates.shape == (2, e, 24, 20)
    assert model.embed is None  # nothing reads the LR trunk


def test_parameter_count_does_not_grow_with_the_experts():
    counts = {e: sum(p.numel() for p in FusionNet(config=pool_config(e)).parameters()) for e in (3, 11, 20)}
    assert len(set(counts.values())) == 1, counts


def test_gates_deviate_by_zero_sum_and_follow_the_experts_order():
    e = 5
    base = (0.4, 0.3, 0.2, 0.15, -0.05)
    gate = SetGate2d(num_experts=e, base=base, channels=8, depth=2, signals=True)
    perturb(gate)
    lr, srs = inputs(e)
    with torch.no_grad():
        gates = gate(lr, srs)
    assert torch.allclose(gates.sum(dim=1), torch.full_like(gates[:, 0], sum(base)), atol=1e-5)
    assert float((gates - torch.tensor(base).view(1, e, 1, 1)).abs().max()) > 1e-4  # it does deviate
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = SetGate2d(num_experts=e, base=[base[i] for i in perm], channels=8, depth=2, signals=True)
    permuted.load_state_dict(gate.state_dict())
    with torch.no_grad():
        assert torch.allclose(permuted(lr, srs[:, perm]), gates[:, perm], atol=1e-5)


def test_every_parameter_learns_and_the_loss_falls():
    e = 4
    torch.manual_seed(0)
    model = FusionNet(config=pool_config(e, base=(0.25,) * 4, signals=True))
    lr, srs = inputs(e, b=4)
    hr = (srs[:, 0] * 0.7 + srs[:, 2] * 0.3).detach()  # expert 0 and 2 are "right": a gate can learn it
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        opt.zero_grad()
        loss = (model(lr, srs, []).sr - hr).square().mean()
        loss.backward()
        if step == 1:
            assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_config_checks():
    with pytest.raises(ConfigError, match="replaces the trunk gate"):
        FusionNet(config=pool_config(3, gating=dataclasses.replace(FusionConfig().gating, enabled=True)))
    with pytest.raises(ConfigError, match="3 weights"):
        FusionNet(config=pool_config(3, base=(0.5, 0.5)))


def test_set_gate_with_other_phases_uses_the_set_gate():
    cfg = pool_config(3, base=(0.2, 0.3, 0.5))
    cfg = dataclasses.replace(cfg, refine=dataclasses.replace(cfg.refine, enabled=True))
    model = FusionNet(config=cfg)
    lr, srs = inputs(3)
    out = model(lr, srs, [])
    assert model.embed is not None
    assert torch.allclose(out.sr, torch.einsum("e,bechw->bchw", torch.tensor([0.2, 0.3, 0.5]), srs), atol=1e-6)


def test_the_experts_features_enter_through_a_projection_of_their_own():
    widths = (6, 3, 9)
    cfg = pool_config(3, base=(0.5, 0.3, 0.2))
    cfg = dataclasses.replace(cfg, inputs=dataclasses.replace(cfg.inputs, feat_channels=widths, features=True))
    model = FusionNet(config=cfg)
    lr, srs = inputs(3)
    feats = [torch.randn(2, c, 6, 5) for c in widths]
    with torch.no_grad():
        out = model(lr, srs, feats)
        assert torch.allclose(out.sr, torch.einsum("e,bechw->bchw", torch.tensor([0.5, 0.3, 0.2]), srs), atol=1e-6)
        perturb(model)
        a = model(lr, srs, feats).sr
        b = model(lr, srs, [f + torch.randn_like(f) for f in feats]).sr
    assert float((a - b).abs().max()) > 1e-6  # the features are read
    with pytest.raises(ValueError, match="expected 3"):
        model(lr, srs, feats[:2])


def test_the_residual_starts_at_zero_learns_and_reaches_outside_the_experts_span():
    e = 3
    base = (0.5, 0.3, 0.2)
    cfg = pool_config(e, base=base, signals=True)
    cfg = dataclasses.replace(cfg, set_gate=dataclasses.replace(cfg.set_gate, residual=True))
    torch.manual_seed(0)
    model = FusionNet(config=cfg)
    lr, srs = inputs(e, b=4)
    want = torch.einsum("e,bechw->bchw", torch.tensor(base), srs)
    assert torch.allclose(model(lr, srs, []).sr, want, atol=1e-6)  # the untrained fusion is still the blend
    # a truth no per-pixel blend of three experts can reach: the blend plus a constant luma offset
    hr = (want + 0.05).detach()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        opt.zero_grad()
        loss = (model(lr, srs, []).sr - hr).square().mean()
        loss.backward()
        if step == 1:
            assert float(model.set_gate.residual.weight.grad.abs().sum()) > 0
        opt.step()
    with torch.no_grad():
        out = model(lr, srs, []).sr
        gates = model.set_gate(lr, srs)
        blend = torch.einsum("behw,bechw->bchw", gates, srs)
    residual = out - blend  # the same correction on R, G and B
    assert torch.allclose(residual[:, 0], residual[:, 1], atol=1e-6)
    assert float(residual.mean()) > 0.02  # the residual carries the offset the experts cannot
    assert float((out - hr).square().mean()) < 0.1 * 0.05**2


def test_dilations_widen_the_gate_without_new_weights():
    e = 3
    plain = SetGate2d(num_experts=e, base=None, channels=8, depth=3)
    wide = SetGate2d(num_experts=e, base=None, channels=8, depth=3, dilations=(1, 2, 4))
    wide.load_state_dict(plain.state_dict())  # same shapes: a dilation changes no weight
    perturb(plain)
    wide.load_state_dict(plain.state_dict())
    lr, srs = inputs(e, h=24, w=24)
    lr2, srs2 = lr.clone(), srs.clone()
    srs2[..., 16:24, 16:24] += 0.1  # LR pixels 4…5: 7…8 from the centre (12, 12)
    with torch.no_grad():
        centre = (slice(None), slice(None), slice(12 * 4, 12 * 4 + 4), slice(12 * 4, 12 * 4 + 4))
        plain_moves = float((plain(lr2, srs2) - plain(lr, srs))[centre].abs().max())
        wide_moves = float((wide(lr2, srs2) - wide(lr, srs))[centre].abs().max())
    assert plain_moves == 0.0 and wide_moves > 0.0  # reach 4 LR pixels against 8 (1 + 1 + 2 + 4)
    with pytest.raises(ValueError, match="3 positive"):
        SetGate2d(num_experts=e, base=None, channels=8, depth=3, dilations=(1, 2))
    cfg = pool_config(e, depth=2)
    with pytest.raises(ConfigError, match="dilations must be 2"):
        FusionNet(config=dataclasses.replace(cfg, set_gate=dataclasses.replace(cfg.set_gate, dilations=(1, 2, 4))))
