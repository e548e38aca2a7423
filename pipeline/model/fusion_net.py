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

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
    SetGateMembers,
    load_balance_loss,
)
from pipeline.model.fusion_config import SCALE, FusionConfig, validate_config
from pipeline.model.signals import gate_signals, num_gate_signals

__all__ = ["FusionNet", "FusionOutput"]  # its configuration: pipeline/model/fusion_config.py


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

        def set_gate() -> SetGate2d:
            return SetGate2d(
                num_experts=e,
                base=sg.base,
                channels=sg.channels,
                depth=sg.depth,
                scale=SCALE,
                signals=sg.signals,
                feat_channels=cfg.inputs.feat_channels if cfg.inputs.features else None,
                feat_dim=sg.feat_dim,
                dilations=sg.dilations,
                residual=sg.residual,
            )

        self.set_gate: SetGate2d | SetGateMembers | None = None
        if sg.enabled:
            one = sg.members == 1  # one gate keeps its own keys (set_gate.*): every single-gate checkpoint loads
            self.set_gate = set_gate() if one else SetGateMembers(members=[set_gate() for _ in range(sg.members)])
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
            base, gates = self.set_gate.fuse(lr, srs, feats)  # (B,3,4H,4W), (B,E,4H,4W)
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
            sr, gates = self.set_gate.fuse(lr, srs, feats)  # (B,3,4H,4W), (B,E,4H,4W)
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
