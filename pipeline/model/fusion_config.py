"""The fusion network's configuration (``model:`` of a run config, ``config.json`` of a checkpoint): one frozen
dataclass per phase of :class:`pipeline.model.fusion_net.FusionNet` (each can be switched off: :data:`PHASE_SWITCHES`),
:class:`FusionConfig` holding them, :func:`load_fusion_config` and the checks across fields (:func:`validate_config`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

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

__all__ = [
    "MAX_EXPERTS",
    "PHASE_SWITCHES",
    "SCALE",
    "CrossBandConfig",
    "CrossExpertConfig",
    "EdgeConfig",
    "FourierUnitConfig",
    "FreqConfig",
    "FusionConfig",
    "GatingConfig",
    "HessianConfig",
    "HierarchicalConfig",
    "InputsConfig",
    "LRResidualConfig",
    "RefineConfig",
    "SetGateConfig",
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
    # the dilation of each of the ``depth`` 3×3 layers (None: all 1); larger ones widen what a pixel's gate sees
    dilations: tuple[Annotated[int, Range(ge=1, le=16)], ...] | None = None
    # also learn a luma correction outside the experts' span (zero-initialised; from the experts' pooled state)
    residual: bool = False
    # independently trained gates of this configuration whose outputs are averaged (a deep ensemble of gates):
    # built by `sr-fusion stack-gates` from runs that differ only in train.seed, never trained as one
    # (pipeline/model/members.py)
    members: Annotated[int, Range(ge=1, le=16)] = 1


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
    if sg.dilations is not None and len(sg.dilations) != sg.depth:
        raise ConfigError(f"set_gate.dilations must be {sg.depth} values (one per layer: depth), got {sg.dilations}")
    for name, sub in (("cross_band", cfg.cross_band), ("cross_expert", cfg.cross_expert)):
        if sub.enabled and (sub.heads < 1 or cfg.token_channels % sub.heads):
            raise ConfigError(f"{name}.heads={sub.heads} must divide token_channels={cfg.token_channels}")
    split = cfg.freq.dct_split
    if len(split) != 2 or not 0.0 <= split[0] < split[1]:
        raise ConfigError(f"freq.dct_split must be two increasing non-negative radii, got {split}")
    if cfg.hessian.enabled and not (cfg.edge.enabled or cfg.refine.enabled):
        raise ConfigError("hessian.enabled needs edge.enabled or refine.enabled (it feeds their detail feature)")
