"""The trainable fusion network: LR image + E expert SR images + their hooked features → fused ×4 SR image.

Data flow (LR = H×W, HR = 4H×4W; C = ``width``, T = ``token_channels``; every phase can be switched off):

1. inputs        ExpertEmbed2d            tokens (B,E,T,H,W) from features + SR images, trunk x (B,C,H,W)
2. freq          FrequencyDecomposition2d 9 bands of a narrow projection of x (block DCT 3, Haar 4, FFT 2)
                 BandFusion2d             → 3 guidance bands (B,3,T,H,W); with freq off: 3 projections of x
3. cross_band    CrossBandAttention2d     x and the 3 guidance bands attend to each other per pixel, + LKA
4. cross_expert  CrossExpertAttention2d   expert tokens attend to each other per pixel, modulated merge, + LKA
   fourier_unit  FourierUnit2d            global FFT branch on the trunk (SFHformer-style)
5. hierarchical  HierarchicalFusion2d     stage 1 (LR structure U-Net) …
6. gating        ExpertGating2d           per-pixel softmax gates (B,E,HR) + difficulty → base = Σ gates·srs
5. hierarchical  … stages 2-3 (½ HR, HR) + frequency-guided blending → residual, scaled by 2·difficulty
7. hessian       HessianAttention2d       DeFiAN-style detail attention on the LR feature that drives phase 7
   refine        RefineCNN2d              LR-resolution residual CNN on the unshuffled SR, scaled by 2·difficulty
   lr_residual   LRResidual2d             learnable-gain back-projection of the LR error
   edge          LaplacianEdgeEnhance2d   3-level Laplacian-pyramid gains

Every branch that adds to the image ends in a zero-initialised layer and the gates start uniform, so an untrained
model returns the experts' mean (to float rounding; with ``start_expert``, exactly that expert; with
``gating.prior`` or ``gating.base``, that fixed blend). Only the last
layer of each branch is zero, never two factors of one product, so after at most two optimiser steps every
parameter receives a non-zero gradient (tests/test_fusion_net.py checks it).

Attention is only across a few tokens per pixel (bands or experts), so memory and time are linear in image size;
nearly all the work runs at LR resolution (the HR stages are 8-channel and the gates are pixel-shuffled).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
from torch import Tensor, nn

from pipeline.core.config import (
    ConfigError,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    Range,
    apply_overrides,
    config_from_dict,
    load_yaml,
)
from pipeline.core.imageio import quantize_8bit
from pipeline.model.blocks import (
    GUIDANCE_GROUPS,
    BandFusion2d,
    CrossBandAttention2d,
    CrossExpertAttention2d,
    ExpertEmbed2d,
    ExpertGating2d,
    FourierUnit2d,
    FrequencyDecomposition2d,
    HessianAttention2d,
    HierarchicalFusion2d,
    LaplacianEdgeEnhance2d,
    LRResidual2d,
    RefineCNN2d,
    SetGate2d,
    load_balance_loss,
)
from pipeline.model.signals import gate_signals, num_gate_signals

__all__ = [
    "SCALE",
    "SetGateConfig",
    "InputsConfig",
    "FreqConfig",
    "CrossBandConfig",
    "CrossExpertConfig",
    "FourierUnitConfig",
    "HierarchicalConfig",
    "GatingConfig",
    "RefineConfig",
    "LRResidualConfig",
    "EdgeConfig",
    "HessianConfig",
    "FusionConfig",
    "FusionOutput",
    "FusionNet",
    "load_fusion_config",
    "validate_config",
]

SCALE = 4

# Upper bounds of the size-like fields: generous for any real fusion (the committed ones use widths <= 96), and they
# stop a checkpoint's config.json or a training config from asking for terabytes before anything is allocated.
MAX_EXPERTS = 64
Width = Annotated[int, Range(ge=1, le=1024)]  # a layer's channel count
Count = Annotated[int, Range(ge=1, le=64)]  # depths, heads, blocks, kernels, dilations
FeatWidth = Annotated[int, Range(ge=0, le=4096)]  # an expert's hooked feature channels (0: no hooks)


# --------------------------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputsConfig:
    # Channel count of each expert's hooked feature, in ensemble order. Defaults: the real experts CRAFT (embed
    # dim 48), DITN (dim 60), SPAN (28) — the input of each model's upsampler, at LR resolution.
    # An expert without hooked layers has 0 channels (a code expert without `hooks:`): allowed when features=false.
    feat_channels: tuple[FeatWidth, ...] = (48, 60, 28)
    feat_norm: bool = True  # LayerNorm each expert's feature (their scales differ wildly)
    # False (default): the fusion sees the experts' SR images only — the hooked features are never read (a cache
    # made with --features none holds none); feat_channels then only counts the experts. True: it also reads each
    # expert's hooked feature. Measured with the real experts (docs/RESULTS.md), the features earned -0.004 to
    # +0.001 dB on BSD100 for 44 % of the cache's bytes (71 % with HAT-L-class widths): off by default.
    features: bool = False
    # "uint8" (default): the fusion rounds the experts' SR images to 8-bit levels before anything else, in training
    # and at inference alike — what a cache of SR uint8 (half the bytes) holds (-0.001 dB on BSD100 against
    # float16); "float16": they are used as given. Checkpoints saved before these two fields existed read as
    # features=true, sr_dtype=float16 (pipeline.model.io).
    sr_dtype: Literal["float16", "uint8"] = "uint8"


@dataclass(frozen=True)
class FreqConfig:
    enabled: bool = True
    channels: Width = 16  # width of the band components (the trunk is projected down before the transforms)
    dct_block: Annotated[int, Range(ge=1, le=64)] = 8
    dct_split: tuple[NonNegFloat, NonNegFloat] = (2.5, 6.5)  # initial (or fixed) DCT radius (u+v, 0..14) thresholds
    dct_softness: PosFloat = 0.25
    adaptive_split: bool = True  # predict the DCT split per image
    split_hidden: Width = 32
    fft_cutoff: Annotated[float, Range(gt=0, le=0.5)] = 0.15  # initial FFT low-pass cutoff, cycles/pixel (learnable)
    fft_softness: PosFloat = 0.02


@dataclass(frozen=True)
class CrossBandConfig:
    enabled: bool = True
    depth: Count = 1
    heads: Count = 2


@dataclass(frozen=True)
class CrossExpertConfig:
    enabled: bool = True
    depth: Count = 1
    heads: Count = 2


@dataclass(frozen=True)
class FourierUnitConfig:
    enabled: bool = True
    hidden: Width = 48
    kernels: Count = 4  # frequency dynamic convolution: number of 1×1 kernels mixed per frequency


@dataclass(frozen=True)
class HierarchicalConfig:
    enabled: bool = True
    inner_channels: Width = 96  # stage 1 (LR) U-Net body width (runs at half LR resolution)
    blocks: Count = 3  # stage 1 dense residual blocks
    mid_channels: Width = 24  # stage 2 (½ HR) width
    hr_channels: Width = 8  # stage 3 (HR) width


@dataclass(frozen=True)
class GatingConfig:
    enabled: bool = True
    hidden: Width = 64
    temperature: PosFloat = 1.0
    learnable_temperature: bool = False
    # Initial gate of each expert (positive, summing to 1): the untrained fusion is then this fixed blend instead of
    # the plain mean — e.g. the least-squares blend of the training cache (scripts/research/fit_gate_prior.py).
    # None: uniform.
    prior: tuple[PosFloat, ...] | None = None
    # Fixed blend weights (any sign) the gates deviate from additively instead of a softmax: gates = base + a learned
    # deviation that starts at 0 and sums to 0 over the experts, so the untrained fusion is exactly this blend — e.g.
    # the training-free blend fitted on the training cache (scripts/fit_ensembler.py --method blend). Not with prior.
    base: tuple[Annotated[float, Range(ge=-2, le=2)], ...] | None = None
    # Feed the gate ground-truth-free signals (pipeline/model/signals.py): each expert's LR-consistency error, the
    # experts' spread and the LR's luma (E + 2 channels at LR resolution).
    signals: bool = False


@dataclass(frozen=True)
class SetGateConfig:
    """The gate for many comparable experts (pipeline/model/blocks/set_gate.py): one small network shared by every
    expert predicts a zero-sum, per-pixel deviation from the fixed blend ``base``, so the untrained fusion is exactly
    that blend and the parameter count does not grow with E. Replaces ``gating`` (which must then be off)."""

    enabled: bool = False
    channels: Width = 32
    depth: Annotated[int, Range(ge=0, le=64)] = 3
    # Fixed blend weights (any sign) the gates start at and deviate from — the best training-free peer fitted on the
    # training cache (scripts/fit_ensembler.py --method blend_reg). None: the plain mean.
    base: tuple[Annotated[float, Range(ge=-2, le=2)], ...] | None = None
    signals: bool = False  # also feed each expert's LR-consistency error (pipeline/model/signals.py)
    # with model.inputs.features=true, each expert's hooked feature enters the gate projected to this many channels
    feat_dim: Width = 8


@dataclass(frozen=True)
class RefineConfig:
    enabled: bool = True
    blocks: Count = 1


@dataclass(frozen=True)
class LRResidualConfig:
    enabled: bool = True
    mode: Literal["bicubic", "bilinear"] = "bicubic"


@dataclass(frozen=True)
class EdgeConfig:
    enabled: bool = True
    levels: Annotated[int, Range(ge=1, le=8)] = 3


@dataclass(frozen=True)
class HessianConfig:
    enabled: bool = True  # needs edge or refine (it builds their detail feature)
    channels: Width = 16
    dilations: tuple[Count, ...] = (1, 2, 3)


# The config sections that switch a phase on/off (ablations, benchmarks, tests).
PHASE_SWITCHES = (
    "freq",
    "cross_band",
    "cross_expert",
    "fourier_unit",
    "hierarchical",
    "gating",
    "set_gate",
    "refine",
    "lr_residual",
    "edge",
    "hessian",
)


@dataclass(frozen=True)
class FusionConfig:
    width: Width = 64  # trunk width at LR resolution
    # Width of the per-pixel tokens that attention runs over (guidance bands, experts): narrower than the trunk,
    # because per-pixel attention over K tokens costs K× a 1×1 conv at this width.
    token_channels: Width = 32
    # None: start as the experts' mean. An index: start exactly as that expert (a learnable mix, initially 0,
    # moves towards the gated mixture; needs gating to learn to use the others).
    start_expert: NonNegInt | None = None
    inputs: InputsConfig = field(default_factory=InputsConfig)
    freq: FreqConfig = field(default_factory=FreqConfig)
    cross_band: CrossBandConfig = field(default_factory=CrossBandConfig)
    cross_expert: CrossExpertConfig = field(default_factory=CrossExpertConfig)
    fourier_unit: FourierUnitConfig = field(default_factory=FourierUnitConfig)
    hierarchical: HierarchicalConfig = field(default_factory=HierarchicalConfig)
    gating: GatingConfig = field(default_factory=GatingConfig)
    set_gate: SetGateConfig = field(default_factory=SetGateConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    lr_residual: LRResidualConfig = field(default_factory=LRResidualConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    hessian: HessianConfig = field(default_factory=HessianConfig)

    @property
    def num_experts(self) -> int:
        return len(self.inputs.feat_channels)

    def with_feat_channels(self, feat_channels: Sequence[int]) -> FusionConfig:
        """Copy with the experts' feature widths replaced (e.g. read from the expert fingerprints)."""
        return dataclasses.replace(
            self, inputs=dataclasses.replace(self.inputs, feat_channels=tuple(int(c) for c in feat_channels))
        )


def load_fusion_config(path: str | Path, overrides: Sequence[str] = ()) -> FusionConfig:
    """Read the ``model:`` section of a YAML file (other top-level sections belong to other schemas) with dotted
    overrides such as ``model.freq.enabled=false``; validated strictly."""
    data = apply_overrides(load_yaml(path), overrides)
    if "model" not in data:
        raise ConfigError(f"{path}: no 'model' section")
    try:
        return config_from_dict(FusionConfig, data["model"])
    except ConfigError as exc:
        raise ConfigError(f"{path}, section 'model': {exc}") from exc


def validate_config(cfg: FusionConfig) -> None:
    """The checks across fields (the ranges of each field are the schema's): raises :class:`ConfigError`."""
    e = cfg.num_experts
    if not 1 <= e <= MAX_EXPERTS:
        raise ConfigError(f"inputs.feat_channels must list one width per expert (1 to {MAX_EXPERTS} experts), got {e}")
    if cfg.inputs.features and any(c < 1 for c in cfg.inputs.feat_channels):
        raise ConfigError(
            f"inputs.features=true needs every expert's hooked feature, but inputs.feat_channels has a 0 "
            f"(an expert without hook layers): {cfg.inputs.feat_channels}"
        )
    if cfg.start_expert is not None and not 0 <= cfg.start_expert < e:
        raise ConfigError(f"start_expert={cfg.start_expert} is not an expert index (E={e})")
    prior = cfg.gating.prior
    if prior is not None:
        if not cfg.gating.enabled or cfg.start_expert is not None:
            raise ConfigError("gating.prior needs gating.enabled and no start_expert (it is where the gates start)")
        if len(prior) != e or min(prior) <= 0 or abs(sum(prior) - 1.0) > 1e-3:
            raise ConfigError(f"gating.prior must be {e} positive weights summing to 1 (one per expert), got {prior}")
    base = cfg.gating.base
    if base is not None:
        if not cfg.gating.enabled or cfg.start_expert is not None or prior is not None:
            raise ConfigError("gating.base needs gating.enabled, no start_expert and no gating.prior")
        if len(base) != e:
            raise ConfigError(f"gating.base must be {e} weights (one per expert), got {base}")
    if cfg.gating.signals and not cfg.gating.enabled:
        raise ConfigError("gating.signals needs gating.enabled")
    sg = cfg.set_gate
    if sg.enabled and (cfg.gating.enabled or cfg.start_expert is not None):
        raise ConfigError("set_gate.enabled replaces the trunk gate: set gating.enabled=false and no start_expert")
    if sg.base is not None and len(sg.base) != e:
        raise ConfigError(f"set_gate.base must be {e} weights (one per expert), got {len(sg.base)}")
    for name, sub in (("cross_band", cfg.cross_band), ("cross_expert", cfg.cross_expert)):
        if sub.enabled and (sub.heads < 1 or cfg.token_channels % sub.heads):
            raise ConfigError(f"{name}.heads={sub.heads} must divide token_channels={cfg.token_channels}")
    split = cfg.freq.dct_split
    if len(split) != 2 or not 0.0 <= split[0] < split[1]:
        raise ConfigError(f"freq.dct_split must be two increasing non-negative radii, got {split}")
    if cfg.hessian.enabled and not (cfg.edge.enabled or cfg.refine.enabled):
        raise ConfigError("hessian.enabled needs edge.enabled or refine.enabled (it feeds their detail feature)")


# --------------------------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class FusionOutput:
    sr: Tensor  # (B,3,4H,4W) fused image (not clamped; clamp when saving)
    gates: Tensor  # (B,E,4H,4W) per-pixel expert weights actually used (sum to 1 over E)
    difficulty: Tensor | None  # (B,1,4H,4W) in (0,1); None when gating is off
    load_balance_loss: Tensor  # scalar, 1.0 = balanced, E = collapsed; 0 when gating is off
    stage_weights: Tensor | None  # (B,3,H,W) hierarchical blend weights (sum to 3); None when off
    dct_split: Tensor | None  # (B,2) DCT low/high radius thresholds; None when freq is off


class FusionNet(nn.Module):
    """Fuse E expert outputs. ``forward(lr, srs, feats)`` = :meth:`forward_with_precomputed`."""

    def __init__(self, *, config: FusionConfig) -> None:
        super().__init__()
        validate_config(config)
        self.config = config
        cfg, c, t, e = config, config.width, config.token_channels, config.num_experts
        self.num_experts = e

        # the LR trunk (expert tokens + x) feeds every phase but the set gate and the LR back-projection
        trunk_users = (
            "freq", "cross_band", "cross_expert", "fourier_unit", "hierarchical", "gating", "refine", "edge", "hessian"
        )  # fmt: skip
        needs_trunk = any(getattr(cfg, name).enabled for name in trunk_users)
        self.embed = (
            ExpertEmbed2d(
                feat_channels=cfg.inputs.feat_channels,
                channels=c,
                token_channels=t,
                feat_norm=cfg.inputs.feat_norm,
                features=cfg.inputs.features,
            )
            if needs_trunk
            else None
        )

        needs_guidance = cfg.cross_band.enabled or cfg.hierarchical.enabled
        f = cfg.freq
        self.freq = (
            FrequencyDecomposition2d(
                channels=c,
                band_channels=f.channels,
                block=f.dct_block,
                init_split=f.dct_split,
                dct_softness=f.dct_softness,
                adaptive_split=f.adaptive_split,
                split_hidden=f.split_hidden,
                fft_cutoff=f.fft_cutoff,
                fft_softness=f.fft_softness,
            )
            if f.enabled and needs_guidance
            else None
        )
        if not needs_guidance:
            self.band_fusion = None
        elif self.freq is not None:
            self.band_fusion = BandFusion2d(in_channels=f.channels, channels=t, num_bands=9, groups=GUIDANCE_GROUPS)
        else:  # no transform: the 3 guidance bands are learned projections of x itself
            self.band_fusion = BandFusion2d(in_channels=c, channels=t, num_bands=1, groups=((0,), (0,), (0,)))

        cb = cfg.cross_band
        self.cross_band = (
            CrossBandAttention2d(channels=c, token_channels=t, num_bands=3, depth=cb.depth, heads=cb.heads)
            if cb.enabled
            else None
        )
        ce = cfg.cross_expert
        self.cross_expert = (
            CrossExpertAttention2d(channels=c, token_channels=t, num_experts=e, depth=ce.depth, heads=ce.heads)
            if ce.enabled
            else None
        )
        fu = cfg.fourier_unit
        self.fourier_unit = FourierUnit2d(channels=c, hidden=fu.hidden, kernels=fu.kernels) if fu.enabled else None
        hi = cfg.hierarchical
        self.hierarchical = (
            HierarchicalFusion2d(
                channels=c,
                inner_channels=hi.inner_channels,
                blocks=hi.blocks,
                mid_channels=hi.mid_channels,
                hr_channels=hi.hr_channels,
                band_channels=t,
            )
            if hi.enabled
            else None
        )
        g = cfg.gating
        self.gating = (
            ExpertGating2d(
                channels=c,
                num_experts=e,
                hidden=g.hidden,
                temperature=g.temperature,
                learnable_temperature=g.learnable_temperature,
                scale=SCALE,
                prior=g.prior,
                base=g.base,
                signal_channels=num_gate_signals(e) if g.signals else 0,
            )
            if g.enabled
            else None
        )
        sg = cfg.set_gate
        self.set_gate = (
            SetGate2d(
                num_experts=e,
                base=sg.base,
                channels=sg.channels,
                depth=sg.depth,
                scale=SCALE,
                signals=sg.signals,
                feat_channels=cfg.inputs.feat_channels if cfg.inputs.features else None,
                feat_dim=sg.feat_dim,
            )
            if sg.enabled
            else None
        )
        # start_expert with gating: gates = mix·learned + (1−mix)·one_hot(start), mix a learnable scalar from 0
        self.start_mix = nn.Parameter(torch.zeros(())) if (cfg.start_expert is not None and g.enabled) else None
        self.hessian = (
            HessianAttention2d(channels=c, hessian_channels=cfg.hessian.channels, dilations=cfg.hessian.dilations)
            if cfg.hessian.enabled
            else None
        )
        self.refine = RefineCNN2d(channels=c, blocks=cfg.refine.blocks, scale=SCALE) if cfg.refine.enabled else None
        self.lr_residual = LRResidual2d(mode=cfg.lr_residual.mode) if cfg.lr_residual.enabled else None
        self.edge = LaplacianEdgeEnhance2d(channels=c, levels=cfg.edge.levels) if cfg.edge.enabled else None

    # ----------------------------------------------------------------------------------------------------------------
    def _check_inputs(self, lr: Tensor, srs: Tensor, feats: Sequence[Tensor]) -> None:
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise ValueError(f"lr must be (B,3,H,W), got {tuple(lr.shape)}")
        b, _, h, w = lr.shape
        e = self.num_experts
        if tuple(srs.shape) != (b, e, 3, SCALE * h, SCALE * w):
            raise ValueError(
                f"srs must be (B,E,3,4H,4W) = {(b, e, 3, SCALE * h, SCALE * w)} for lr {tuple(lr.shape)}, "
                f"got {tuple(srs.shape)}"
            )
        if not self.config.inputs.features:
            return  # SR only: feats are not read (any list, e.g. [] from a cache without features)
        if len(feats) != e:
            raise ValueError(f"expected {e} expert feature maps, got {len(feats)}")
        for i, (feat, c) in enumerate(zip(feats, self.config.inputs.feat_channels, strict=True)):
            if tuple(feat.shape) != (b, c, h, w):
                raise ValueError(
                    f"feats[{i}] must be (B,C_e,H,W) = {(b, c, h, w)} (LR-aligned, crop any padding), "
                    f"got {tuple(feat.shape)}"
                )

    def _base(self, srs: Tensor, learned: Tensor | None) -> tuple[Tensor, Tensor]:
        """Combine the experts: (base (B,3,4H,4W), gates actually used (B,E,4H,4W))."""
        b, e, _, hh, ww = srs.shape
        start = self.config.start_expert
        if learned is None:
            if start is None:
                return srs.mean(dim=1), srs.new_full((1, 1, 1, 1), 1.0 / e).expand(b, e, hh, ww)
            one_hot = torch.zeros(1, e, 1, 1, dtype=srs.dtype, device=srs.device)
            one_hot[:, start] = 1.0
            return srs[:, start], one_hot.expand(b, e, hh, ww)
        gates = learned
        if self.start_mix is not None:
            # straight-through clamp to [0, 1]: the value stays a convex mix, the gradient always flows
            mix = self.start_mix + (self.start_mix.clamp(0.0, 1.0) - self.start_mix).detach()
            one_hot = torch.zeros(1, e, 1, 1, dtype=srs.dtype, device=srs.device)
            one_hot[:, start] = 1.0
            gates = mix * learned + (1.0 - mix) * one_hot
        base = gates[:, 0:1] * srs[:, 0]
        for i in range(1, e):
            base = base + gates[:, i : i + 1] * srs[:, i]
        return base, gates

    def forward_with_precomputed(self, lr: Tensor, srs: Tensor, feats: Sequence[Tensor]) -> FusionOutput:
        """lr (B,3,H,W), srs (B,E,3,4H,4W), feats: E tensors (B,C_e,H,W) → :class:`FusionOutput`."""
        self._check_inputs(lr, srs, feats)
        if self.config.inputs.sr_dtype == "uint8":
            srs = quantize_8bit(srs)  # identical in training (a uint8 cache holds these levels) and at inference
        if self.embed is None:  # nothing reads the trunk: the set gate (or the mean) and the LR back-projection only
            return self._forward_without_trunk(lr, srs, feats)
        sr_mean = srs.mean(dim=1)
        tokens, x = self.embed(lr, srs, sr_mean, feats)  # (B,E,T,H,W), (B,C,H,W)

        # phase 2: guidance bands
        bands, dct_split = None, None
        if self.band_fusion is not None:
            if self.freq is not None:
                band_list, dct_split = self.freq(x)
                bands = self.band_fusion(band_list)  # (B,3,T,H,W)
                del band_list
            else:
                bands = self.band_fusion((x,))
        # phase 3, 4 and the global FFT branch
        if self.cross_band is not None:
            x, bands = self.cross_band(x, bands)
        if self.cross_expert is not None:
            x = self.cross_expert(tokens, x)
        del tokens
        if self.fourier_unit is not None:
            x = self.fourier_unit(x)
        # phase 5 (stage 1) and phase 6
        s1 = self.hierarchical.encode(x) if self.hierarchical is not None else x
        signals = gate_signals(lr, srs, scale=SCALE) if self.config.gating.signals else None  # (B,E+2,H,W)
        learned, difficulty = self.gating(s1, signals) if self.gating is not None else (None, None)
        if self.set_gate is not None:
            gates = self.set_gate(lr, srs, feats)  # (B,E,4H,4W)
            base = torch.einsum("behw,bechw->bchw", gates, srs)
        else:
            base, gates = self._base(srs, learned)
        lb_loss = load_balance_loss(gates) if self.gating is not None else lr.new_zeros(())
        res_scale = 2.0 * difficulty if difficulty is not None else None  # 1 at init

        def scaled(r: Tensor) -> Tensor:
            return r * res_scale if res_scale is not None else r

        sr = base
        stage_weights = None
        if self.hierarchical is not None:
            r, stage_weights = self.hierarchical(s1, base, bands)
            sr = sr + scaled(r)
        # phase 7
        detail = self.hessian(s1) if self.hessian is not None else s1
        if self.refine is not None:
            sr = sr + scaled(self.refine(detail, sr))
        if self.lr_residual is not None:
            sr = self.lr_residual(lr, sr)
        if self.edge is not None:
            sr = self.edge(detail, sr)
        return FusionOutput(
            sr=sr,
            gates=gates,
            difficulty=difficulty,
            load_balance_loss=lb_loss,
            stage_weights=stage_weights,
            dct_split=dct_split,
        )

    def _forward_without_trunk(self, lr: Tensor, srs: Tensor, feats: Sequence[Tensor]) -> FusionOutput:
        if self.set_gate is not None:
            gates = self.set_gate(lr, srs, feats)  # (B,E,4H,4W)
            sr = torch.einsum("behw,bechw->bchw", gates, srs)
        else:
            b, e, _, hh, ww = srs.shape
            sr, gates = srs.mean(dim=1), srs.new_full((1, 1, 1, 1), 1.0 / e).expand(b, e, hh, ww)
        if self.lr_residual is not None:
            sr = self.lr_residual(lr, sr)
        return FusionOutput(
            sr=sr, gates=gates, difficulty=None, load_balance_loss=lr.new_zeros(()), stage_weights=None, dct_split=None
        )

    def forward(self, lr: Tensor, srs: Tensor, feats: Sequence[Tensor]) -> FusionOutput:
        return self.forward_with_precomputed(lr, srs, feats)
