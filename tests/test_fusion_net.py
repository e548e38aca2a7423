"""pipeline/model/fusion_net.py: the assembled network — init behaviour, gradients, any E and size, every switch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import assert_close

from pipeline.core.config import ConfigError
from pipeline.core.imageio import quantize_8bit
from pipeline.model.fusion_config import PHASE_SWITCHES, FusionConfig, load_fusion_config
from pipeline.model.fusion_net import FusionNet, FusionOutput

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "fusion_tiny.yaml"
SWITCHES = PHASE_SWITCHES


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_config(feat_channels: tuple[int, ...] = (6, 10, 4), **switches: bool) -> FusionConfig:
    cfg = load_fusion_config(TINY).with_feat_channels(feat_channels)
    # the whole network: it reads the hooked features and the SR as given (the defaults read SR only, at 8 bits;
    # both switches have their own tests below)
    cfg = dataclasses.replace(cfg, inputs=dataclasses.replace(cfg.inputs, features=True, sr_dtype="float16"))
    for name, enabled in switches.items():
        cfg = dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), enabled=enabled)})
    return cfg


def make_inputs(
    cfg: FusionConfig, *, batch: int = 2, size: tuple[int, int] = (12, 10)
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    h, w = size
    lr = torch.rand(batch, 3, h, w)
    up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    srs = (up.unsqueeze(1) + 0.05 * torch.randn(batch, cfg.num_experts, 3, 4 * h, 4 * w)).clamp(0, 1)
    feats = [torch.randn(batch, c, h, w) for c in cfg.inputs.feat_channels]
    return lr, srs, feats


def perturb_zero_layers(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0.0, 0.05)


def test_untrained_output_is_exactly_the_experts_mean_default_config() -> None:
    model = FusionNet(config=FusionConfig())
    lr, srs, feats = make_inputs(model.config, batch=1, size=(16, 12))
    srs = quantize_8bit(srs)  # the default fusion reads the SR at 8-bit levels (what the default cache holds)
    with torch.no_grad():
        out = model(lr, srs, [])  # and no features (the default cache holds none)
    assert isinstance(out, FusionOutput)
    assert_close(out.sr, srs.mean(dim=1), atol=1e-6, rtol=0)
    assert out.gates.shape == (1, 3, 64, 48)
    assert_close(out.gates.sum(dim=1), torch.ones(1, 64, 48))
    assert out.difficulty is not None and out.difficulty.shape == (1, 1, 64, 48)
    assert out.load_balance_loss.shape == () and out.load_balance_loss.item() == pytest.approx(1.0)
    assert out.stage_weights is not None and out.stage_weights.shape == (1, 3, 16, 12)
    assert out.dct_split is not None and out.dct_split.shape == (1, 2)


@pytest.mark.parametrize("gating", [True, False])
def test_start_expert_outputs_exactly_that_expert(gating: bool) -> None:
    cfg = dataclasses.replace(tiny_config(gating=gating), start_expert=1)
    model = FusionNet(config=cfg)
    lr, srs, feats = make_inputs(cfg)
    out = model(lr, srs, feats)
    assert torch.equal(out.sr, srs[:, 1])
    assert torch.equal(
        out.gates, torch.nn.functional.one_hot(torch.ones(2, 48, 40, dtype=torch.long), 3).permute(0, 3, 1, 2).float()
    )
    if gating:  # the learnable mix away from the start expert gets a gradient at once
        (out.sr - srs[:, 0]).square().mean().backward()
        assert model.start_mix is not None and model.start_mix.grad is not None
        assert model.start_mix.grad.abs() > 0
    else:
        assert model.start_mix is None


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_gate_prior_starts_the_untrained_fusion_at_that_fixed_blend(temperature: float) -> None:
    prior = (0.6, 0.3, 0.1)
    base = tiny_config()
    cfg = dataclasses.replace(base, gating=dataclasses.replace(base.gating, prior=prior, temperature=temperature))
    model = FusionNet(config=cfg)
    lr, srs, feats = make_inputs(cfg)
    with torch.no_grad():
        out = model(lr, srs, feats)
    blend = sum(w * srs[:, e] for e, w in enumerate(prior))
    assert_close(out.gates, torch.tensor(prior).view(1, 3, 1, 1).expand_as(out.gates), atol=1e-6, rtol=0)
    assert_close(out.sr, blend, atol=1e-5, rtol=0)
    assert (out.sr - srs.mean(dim=1)).abs().max() > 1e-3  # not the mean


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.gating.prior=[0.5,0.5]"], "3 positive weights summing to 1"),
        (["model.gating.prior=[0.5,0.6,-0.1]"], r"gating\.prior\[2\]: must be > 0"),  # the config's range check
        (["model.gating.prior=[0.5,0.3,0.1]"], "3 positive weights summing to 1"),
        (["model.gating.prior=[0.5,0.3,0.2]", "model.start_expert=0"], "needs gating.enabled and no start_expert"),
        (["model.gating.prior=[0.5,0.3,0.2]", "model.gating.enabled=false"], "needs gating.enabled"),
    ],
)
def test_a_gate_prior_must_be_one_positive_weight_per_expert(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FusionNet(config=load_fusion_config(TINY, overrides).with_feat_channels((6, 10, 4)))


def test_every_parameter_gets_a_gradient_default_config() -> None:
    model = FusionNet(
        config=dataclasses.replace(
            FusionConfig(), gating=dataclasses.replace(FusionConfig().gating, learnable_temperature=True)
        )
    )
    lr, srs, feats = make_inputs(model.config, batch=1, size=(16, 16))
    out = model(lr, srs, feats)
    (out.sr.square().mean() + 0.01 * out.load_balance_loss).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_no_dead_parameters_after_two_steps() -> None:
    """Zero-init is only on last layers: once they move, every parameter gets a non-zero gradient (no zero·zero)."""
    cfg = dataclasses.replace(
        tiny_config(), gating=dataclasses.replace(tiny_config().gating, learnable_temperature=True)
    )
    model = FusionNet(config=cfg)
    lr, srs, feats = make_inputs(cfg)
    hr = srs.mean(1) + 0.05 * torch.randn_like(srs[:, 0])
    for _ in range(3):  # plain SGD by hand (torch.optim's first step imports torch._dynamo: ~10 s)
        model.zero_grad(set_to_none=True)
        out = model(lr, srs, feats)
        ((out.sr - hr).square().mean() + 0.01 * out.load_balance_loss).backward()
        dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(0.5 * p.grad)
    assert not dead, f"parameters with zero gradient after two steps: {dead}"


@pytest.mark.parametrize("experts", [1, 2, 3, 5])
def test_any_number_of_experts_and_odd_sizes(experts: int) -> None:
    cfg = tiny_config(feat_channels=tuple(3 + 2 * e for e in range(experts)))
    model = FusionNet(config=cfg)
    perturb_zero_layers(model)  # exercise every branch with non-zero weights
    lr, srs, feats = make_inputs(cfg, batch=1, size=(37, 53))
    out = model(lr, srs, feats)
    assert out.sr.shape == (1, 3, 148, 212) and out.gates.shape == (1, experts, 148, 212)
    assert torch.isfinite(out.sr).all() and torch.isfinite(out.load_balance_loss)
    (out.sr.mean() + out.load_balance_loss).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_phase_can_be_switched_off(switch: str) -> None:
    cfg = tiny_config(**{switch: False})
    model = FusionNet(config=cfg)
    assert getattr(model, switch) is None
    lr, srs, feats = make_inputs(cfg)
    out = model(lr, srs, feats)
    assert_close(out.sr, srs.mean(dim=1), atol=1e-6, rtol=0)
    perturb_zero_layers(model)
    out = model(lr, srs, feats)
    assert torch.isfinite(out.sr).all()
    out.sr.mean().backward()


def test_everything_off_is_the_mean_and_has_no_trunk_modules() -> None:
    cfg = tiny_config(**{s: False for s in SWITCHES})
    model = FusionNet(config=cfg)
    lr, srs, feats = make_inputs(cfg)
    out = model(lr, srs, feats)
    assert torch.equal(out.sr, srs.mean(dim=1))
    assert out.difficulty is None and out.stage_weights is None and out.dct_split is None
    assert out.load_balance_loss.item() == 0.0


def test_freq_off_still_feeds_cross_band_with_learned_bands() -> None:
    model = FusionNet(config=tiny_config(freq=False))
    assert model.band_fusion is not None and model.band_fusion.num_bands == 1
    assert FusionNet(config=tiny_config(cross_band=False, hierarchical=False)).band_fusion is None


def test_input_validation() -> None:
    cfg = tiny_config()
    model = FusionNet(config=cfg)
    lr, srs, feats = make_inputs(cfg)
    with pytest.raises(ValueError, match="srs must be"):
        model(lr, srs[:, :2], feats)
    with pytest.raises(ValueError, match="expected 3 expert feature maps"):
        model(lr, srs, feats[:2])
    with pytest.raises(ValueError, match=r"feats\[1\]"):
        model(lr, srs, [feats[0], torch.randn(2, 7, 12, 10), feats[2]])
    with pytest.raises(ValueError, match="crop any padding"):
        model(lr, srs, [feats[0], torch.randn(2, 10, 16, 16), feats[2]])


def test_forward_is_forward_with_precomputed() -> None:
    """``model(lr, srs, feats)`` (what inference calls after running the experts) is the cached-feature path."""
    cfg = tiny_config()
    model = FusionNet(config=cfg).eval()
    perturb_zero_layers(model)
    lr, srs, feats = make_inputs(cfg)
    with torch.no_grad():
        got = model(lr, srs, feats)
        ref = model.forward_with_precomputed(lr, srs, feats)
    assert torch.equal(got.sr, ref.sr) and torch.equal(got.gates, ref.gates)


# ------------------------------------------------------------------------------ gating.base and gating.signals
def base_config(experts: int, base: tuple[float, ...], *, signals: bool) -> FusionConfig:
    cfg = tiny_config(feat_channels=tuple(4 + e for e in range(experts)))
    return dataclasses.replace(cfg, gating=dataclasses.replace(cfg.gating, base=base, signals=signals))


@pytest.mark.parametrize("signals", [False, True])
@pytest.mark.parametrize("experts", [1, 2, 3, 5])
def test_gating_base_starts_the_untrained_fusion_at_exactly_the_fitted_blend(experts: int, signals: bool) -> None:
    """The untrained fusion is the training-free blend ensembler (negative weights included), for E = 1…5, with or
    without the gate signals; after training steps the gates still sum to the blend's total weight."""
    from pipeline.inference.ensemblers import Blend

    torch.manual_seed(experts)
    weights = tuple([0.9, 0.25, -0.1, 0.05, -0.02][:experts])
    cfg = base_config(experts, weights, signals=signals)
    model = FusionNet(config=cfg)
    lr, srs, feats = make_inputs(cfg)
    with torch.no_grad():
        out = model(lr, srs, feats)
    fps = [{"name": f"e{i}", "sha256": f"{i:064x}"} for i in range(experts)]
    blend = Blend(experts=fps, weights=torch.tensor(weights, dtype=torch.float64)).apply(srs)
    assert_close(out.gates, torch.tensor(weights).view(1, experts, 1, 1).expand_as(out.gates), atol=1e-7, rtol=0)
    inside = (blend > 0) & (blend < 1)  # the ensembler clamps to [0,1], the fusion's output is clamped on saving
    assert_close(out.sr[inside], blend[inside], atol=1e-6, rtol=0)
    # training moves the gates per pixel (with one expert there is nothing to move), never their sum
    perturb_zero_layers(model)
    with torch.no_grad():
        moved = model(lr, srs, feats).gates
    assert (moved - out.gates).abs().max() > (1e-3 if experts > 1 else -1)
    assert_close(moved.sum(dim=1), torch.full_like(moved[:, 0], sum(weights)), atol=1e-5, rtol=0)


def test_gate_signals_reach_the_gate_and_change_it() -> None:
    """With gating.signals, the gate's first conv sees E + 2 more channels; perturbing one expert (so its
    LR-consistency error grows) changes the trained gates although the features are the same."""
    from pipeline.model.signals import num_gate_signals

    cfg = base_config(3, (0.8, 0.2, 0.0), signals=True)
    model = FusionNet(config=cfg)
    assert model.gating.body.in_channels == cfg.width + num_gate_signals(3)
    perturb_zero_layers(model)
    lr, srs, feats = make_inputs(cfg)
    worse = srs.clone()
    worse[:, 2] = (worse[:, 2] + 0.2 * torch.randn_like(worse[:, 2])).clamp(0, 1)
    with torch.no_grad():
        g0, g1 = model(lr, srs, feats).gates, model(lr, worse, feats).gates
    assert (g0 - g1).abs().max() > 1e-4


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.gating.base=[0.5,0.5]"], "3 weights"),
        (["model.gating.base=[0.5,0.3,0.2]", "model.gating.prior=[0.5,0.3,0.2]"], "no gating.prior"),
        (["model.gating.base=[0.5,0.3,0.2]", "model.start_expert=0"], "no start_expert"),
        (["model.gating.base=[0.5,0.3,0.2]", "model.gating.enabled=false"], "needs gating.enabled"),
        (["model.gating.signals=true", "model.gating.enabled=false"], "signals needs gating.enabled"),
    ],
)
def test_gating_base_and_signals_are_checked(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FusionNet(config=load_fusion_config(TINY, overrides).with_feat_channels((6, 10, 4)))


@pytest.mark.parametrize("experts", [1, 3])
def test_sr_only_fusion_never_reads_the_features(experts: int) -> None:
    """inputs.features=false: no feature projection exists, the output is the same for any feats (none at all
    included), the untrained fusion is still the mean, experts stay distinguishable (a learned embedding per expert)
    and every parameter trains."""
    cfg = tiny_config(feat_channels=tuple(3 + 2 * e for e in range(experts)))
    cfg = dataclasses.replace(cfg, inputs=dataclasses.replace(cfg.inputs, features=False))
    model = FusionNet(config=cfg)
    assert not any("feat_proj" in n or "feat_norm" in n for n, _ in model.named_parameters())
    assert model.embed.expert_embed.shape == (experts, cfg.token_channels)
    lr, srs, feats = make_inputs(cfg)
    with torch.no_grad():
        assert_close(model(lr, srs, []).sr, srs.mean(dim=1), atol=1e-6, rtol=0)
    perturb_zero_layers(model)
    with torch.no_grad():
        out = model(lr, srs, []).sr
        assert torch.equal(out, model(lr, srs, feats).sr)
        assert torch.equal(out, model(lr, srs, [f + 1.0 for f in feats]).sr)
    out = model(lr, srs, [])
    (out.sr.square().mean() + 0.01 * out.load_balance_loss).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    # with features the same config reads them: other feats, other output
    with_feats = FusionNet(config=dataclasses.replace(cfg, inputs=dataclasses.replace(cfg.inputs, features=True)))
    perturb_zero_layers(with_feats)
    with torch.no_grad():
        assert not torch.equal(with_feats(lr, srs, feats).sr, with_feats(lr, srs, [f + 1.0 for f in feats]).sr)


def test_uint8_fusion_sees_the_8bit_levels_in_training_and_inference_alike() -> None:
    """inputs.sr_dtype=uint8 (the fusion for an SR-uint8 cache): the output for the experts' float SR images equals
    the output for their 8-bit levels (what the cache returns), so live inference matches training; a float16
    fusion tells them apart."""
    cfg = tiny_config()
    u8 = FusionNet(config=dataclasses.replace(cfg, inputs=dataclasses.replace(cfg.inputs, sr_dtype="uint8")))
    perturb_zero_layers(u8)
    lr, srs, feats = make_inputs(cfg)
    levels = quantize_8bit(srs)
    assert not torch.equal(levels, srs)
    with torch.no_grad():
        assert torch.equal(u8(lr, srs, feats).sr, u8(lr, levels, feats).sr)
        f16 = FusionNet(config=cfg)
        f16.load_state_dict(u8.state_dict())  # same weights, only the input precision differs
        assert not torch.equal(f16(lr, srs, feats).sr, f16(lr, levels, feats).sr)
        assert torch.equal(f16(lr, levels, feats).sr, u8(lr, srs, feats).sr)
