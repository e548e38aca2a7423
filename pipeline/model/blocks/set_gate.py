"""SetGate2d: per-pixel expert weights from one small network shared by every expert (a DeepSets gate).

For E comparable experts the question per pixel is *which deviation from the blend to trust*. Writing the fused luma
as ``Y = Σ_e (b_e + δ_e)·Y_e`` with fixed blend weights ``b`` (e.g. the least-squares blend of the training cache)
and a deviation ``δ`` that sums to 0 over the experts gives ``Y = Y_b + Σ_e δ_e·(Y_e − Y_b)``: the gate predicts, per
HR pixel, how much of each expert's departure from the blend to add. ``δ`` starts at exactly 0 (zero-initialised
head), so the untrained gate *is* the blend, and training can only move away from it where the loss says so.

Every expert is seen through the same layers (its input channels are its own deviation and, optionally, its own
LR-consistency; the rest is shared context), and after each layer every expert's features receive a projection of
the mean over experts (the DeepSets interaction), so the parameter count does not grow with E and the gate is
equivariant to the experts' order: E = 1 … 20 (and more) run through the same weights. Work is at LR resolution on
pixel-unshuffled HR detail (``s²`` sub-pixels per LR pixel), the logits are pixel-shuffled back to HR.

Inputs per LR pixel (``s = scale``): the expert's luma deviation from the blend (``s²`` channels, ×``gain``), and
shared by all experts: the experts' spread (RMS deviation, ``s²``), the blend's detail (its ``s²`` sub-pixels less
their mean) and the LR's luma; with ``signals``, each expert's LR-consistency error
(:func:`pipeline.model.signals.lr_consistency`, log grey levels); with ``feat_channels``, each expert's hooked
feature, layer-normalised and projected to ``feat_dim`` channels by a 1×1 convolution of its own (the only
per-expert weights: the widths differ between experts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.blocks.layer_norm2d import LayerNorm2d
from pipeline.model.signals import lr_consistency

__all__ = ["SetGate2d", "SetGateMembers", "luma"]

_LUMA = (0.299, 0.587, 0.114)  # BT.601 weights (the scored Y up to an affine map)


def luma(rgb: Tensor, dim: int = -3) -> Tensor:
    """BT.601 luma of the RGB axis ``dim`` (kept as a size-1 axis), same scale as the input."""
    r, g, b = rgb.unbind(dim)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(dim)


class SetGate2d(nn.Module):
    """``(lr (B,3,H,W), srs (B,E,3,sH,sW))`` → gates ``(B,E,sH,sW)``, the per-pixel weights of the experts' RGB:
    ``base + δ`` with ``Σ_e δ_e = 0`` (see the module docstring)."""

    def __init__(
        self,
        *,
        num_experts: int,
        base: Sequence[float] | None,
        channels: int,
        depth: int,
        scale: int = 4,
        signals: bool = False,
        feat_channels: Sequence[int] | None = None,
        feat_dim: int = 8,
        gain: float = 32.0,
        dilations: Sequence[int] | None = None,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if base is not None and len(base) != num_experts:
            raise ValueError(f"base must be {num_experts} weights, got {len(base)}")
        weights = [1.0 / num_experts] * num_experts if base is None else [float(w) for w in base]
        self.register_buffer("base", torch.tensor(weights, dtype=torch.float32), persistent=False)
        self.num_experts = num_experts
        self.scale = scale
        dilations = (1,) * depth if dilations is None else tuple(int(d) for d in dilations)
        if len(dilations) != depth or min(dilations, default=1) < 1:
            raise ValueError(f"dilations must be {depth} positive integers (one per layer), got {dilations}")
        self.signals = signals
        self.gain = gain
        sub = scale * scale
        if feat_channels is not None:
            if len(feat_channels) != num_experts or min(feat_channels, default=1) < 1:
                raise ValueError(f"feat_channels must be {num_experts} positive widths, got {feat_channels}")
            self.feat_proj = nn.ModuleList(
                nn.Sequential(LayerNorm2d(channels=c), nn.Conv2d(c, feat_dim, 1)) for c in feat_channels
            )
        else:
            self.feat_proj = None
        own = sub + (1 if signals else 0) + (feat_dim if feat_channels is not None else 0)
        shared = 2 * sub + 1
        self.inp = nn.Conv2d(own + shared, channels, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=d, dilation=d) for d in dilations)
        self.mix = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(depth))
        self.head = nn.Conv2d(2 * channels, sub, 1)
        nn.init.zeros_(self.head.weight)  # δ = 0: the untrained gate is the base blend, exactly
        nn.init.zeros_(self.head.bias)
        # residual: a luma correction outside the experts' span, read from what all experts share (the pooled state)
        self.residual = nn.Conv2d(channels, sub, 1) if residual else None
        if self.residual is not None:
            nn.init.zeros_(self.residual.weight)  # 0 at the start: the untrained fusion is still the blend, exactly
            nn.init.zeros_(self.residual.bias)

    def forward(self, lr: Tensor, srs: Tensor, feats: Sequence[Tensor] | None = None) -> Tensor:
        """``feats``: E tensors ``(B,C_e,H,W)``, read only when built with ``feat_channels``."""
        return self._gates_and_state(lr, srs, feats)[0]

    def fuse(self, lr: Tensor, srs: Tensor, feats: Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """``(sr (B,3,sH,sW), gates (B,E,sH,sW))``: the gated blend of the experts' RGB, plus (built with
        ``residual``) the learned luma correction, added to R, G and B alike."""
        gates, pooled = self._gates_and_state(lr, srs, feats)
        sr = torch.einsum("behw,bechw->bchw", gates, srs)
        if self.residual is not None:
            sr = sr + F.pixel_shuffle(self.residual(pooled), self.scale) / self.gain  # (B,1,sH,sW) broadcast
        return sr, gates

    def _gates_and_state(self, lr: Tensor, srs: Tensor, feats: Sequence[Tensor] | None) -> tuple[Tensor, Tensor]:
        """gates ``(B,E,sH,sW)`` and the experts' pooled final state ``(B,C,H,W)``."""
        b, e, _, hh, ww = srs.shape
        if e != self.num_experts:
            raise ValueError(f"SetGate2d was built for {self.num_experts} experts, got srs with {e}")
        s = self.scale
        h, w = hh // s, ww // s
        base = self.base.to(srs.dtype)
        ys = luma(srs, dim=2)[:, :, 0]  # (B,E,sH,sW)
        y_base = torch.einsum("e,behw->bhw", base, ys).unsqueeze(1)  # (B,1,sH,sW)
        dev = ys - y_base  # (B,E,sH,sW)
        own = F.pixel_unshuffle(dev.reshape(b * e, 1, hh, ww), s) * self.gain  # (B·E,s²,H,W)
        if self.signals:
            cons = torch.log1p(255.0 * lr_consistency(srs.detach(), lr, scale=s)).reshape(b * e, 1, h, w)
            own = torch.cat([own, cons.to(own.dtype)], dim=1)
        if self.feat_proj is not None:
            if feats is None or len(feats) != e:
                raise ValueError(f"SetGate2d reads the experts' features: expected {e} maps")
            proj = torch.stack([p(f.to(own.dtype)) for p, f in zip(self.feat_proj, feats, strict=True)], dim=1)
            own = torch.cat([own, proj.reshape(b * e, -1, h, w)], dim=1)
        spread = F.pixel_unshuffle(dev.square().mean(dim=1, keepdim=True).sqrt(), s) * self.gain  # (B,s²,H,W)
        detail = F.pixel_unshuffle(y_base, s)
        detail = (detail - detail.mean(dim=1, keepdim=True)) * (self.gain / 4)
        context = torch.cat([spread, detail, luma(lr, dim=1) - 0.5], dim=1)  # (B,2s²+1,H,W)
        context = context.unsqueeze(1).expand(b, e, *context.shape[1:]).reshape(b * e, -1, h, w)
        x = F.gelu(self.inp(torch.cat([own, context], dim=1)))  # (B·E,C,H,W)
        for conv, mix in zip(self.convs, self.mix, strict=True):
            pooled = x.reshape(b, e, -1, h, w).mean(dim=1)  # (B,C,H,W): what all experts see
            x = x + F.gelu(conv(x) + mix(pooled).repeat_interleave(e, dim=0))
        pooled = x.reshape(b, e, -1, h, w).mean(dim=1)  # (B,C,H,W)
        logits = self.head(torch.cat([x, pooled.repeat_interleave(e, dim=0)], dim=1))
        logits = F.pixel_shuffle(logits, s).reshape(b, e, hh, ww)
        delta = logits - logits.mean(dim=1, keepdim=True)  # Σ_e δ_e = 0
        return base.view(1, e, 1, 1) + delta, pooled  # (B,E,sH,sW), (B,C,H,W)


class SetGateMembers(nn.Module):
    """K set gates of one configuration, trained independently (different seeds), averaged: a deep ensemble of gates.
    The gates are the members' mean, and so is the fused image (each member's blend plus its residual): a member's
    error that is its own (its initialisation, its batches) averages out, what all learned stays. The call and
    :meth:`fuse` are those of :class:`SetGate2d`; ``members[k]`` holds member k's weights."""

    def __init__(self, *, members: Sequence[SetGate2d]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"SetGateMembers needs two or more gates, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, lr: Tensor, srs: Tensor, feats: Sequence[Tensor] | None = None) -> Tensor:
        return torch.stack([m(lr, srs, feats) for m in self.members]).mean(dim=0)  # (B,E,sH,sW)

    def fuse(self, lr: Tensor, srs: Tensor, feats: Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """``(sr (B,3,sH,sW), gates (B,E,sH,sW))``: the members' mean of each."""
        fused = [m.fuse(lr, srs, feats) for m in self.members]
        k = len(fused)
        return sum(f[0] for f in fused) / k, sum(f[1] for f in fused) / k
