"""Phase 1 — inputs: project every expert's hooked feature and SR image to a common width, plus the LR image.

Expert token e (B,T,H,W) = conv1x1_e(LayerNorm(feat_e)) + conv1x1([unshuffle4(sr_e), unshuffle4(sr_e − mean)]),
T = ``token_channels``; the SR part is shared across experts and sees both the expert's image and its disagreement
with the others; the per-expert feature projection's bias acts as the learned expert embedding. The trunk (width C)
starts at ``x0 = conv3x3(lr) + conv1x1(mean_e token_e)``. Feature channel counts may differ per expert
(``feat_channels``), and any number E ≥ 1 of experts works.

``features=False`` (the SR-only ablation, and caches stored without features): the hooked features are not read at
all; a learned per-expert embedding (E,T) replaces the feature projection's bias as each expert's identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.blocks.layer_norm2d import LayerNorm2d

__all__ = ["ExpertEmbed2d"]


class ExpertEmbed2d(nn.Module):
    """(lr, srs (B,E,3,sH,sW), sr_mean (B,3,sH,sW), feats [E×(B,C_e,H,W)]) → (tokens (B,E,T,H,W), x0 (B,C,H,W))."""

    def __init__(
        self,
        *,
        feat_channels: Sequence[int],
        channels: int,
        token_channels: int,
        feat_norm: bool,
        features: bool = True,
        scale: int = 4,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.features = features
        if features:
            norms = [LayerNorm2d(channels=c) if feat_norm else nn.Identity() for c in feat_channels]
            self.feat_norm = nn.ModuleList(norms)
            self.feat_proj = nn.ModuleList([nn.Conv2d(c, token_channels, 1) for c in feat_channels])
            self.expert_embed = None
        else:
            self.feat_norm, self.feat_proj = None, None
            self.expert_embed = nn.Parameter(0.02 * torch.randn(len(feat_channels), token_channels))  # (E,T)
        self.sr_proj = nn.Conv2d(2 * 3 * scale * scale, token_channels, 1)
        self.token_proj = nn.Conv2d(token_channels, channels, 1)
        self.lr_proj = nn.Conv2d(3, channels, 3, padding=1)

    def forward(self, lr: Tensor, srs: Tensor, sr_mean: Tensor, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        b, e, _, hh, ww = srs.shape
        s = self.scale
        sub = F.pixel_unshuffle(srs.reshape(b * e, 3, hh, ww), s).reshape(b, e, 3 * s * s, hh // s, ww // s)
        sub_mean = F.pixel_unshuffle(sr_mean, s).unsqueeze(1)  # unshuffle is linear: unshuffle(sr − mean)
        sr_in = torch.cat([sub, sub - sub_mean], dim=2).flatten(0, 1)  # (B·E, 96, H, W)
        sr_tok = self.sr_proj(sr_in).reshape(b, e, -1, hh // s, ww // s)  # shared over experts
        if self.expert_embed is not None:  # SR only: feats are not read
            t = sr_tok + self.expert_embed[None, :, :, None, None]  # (B,E,T,H,W)
        else:
            tokens = [self.feat_proj[i](self.feat_norm[i](feat)) + sr_tok[:, i] for i, feat in enumerate(feats)]
            t = torch.stack(tokens, dim=1)  # (B,E,T,H,W)
        return t, self.lr_proj(lr) + self.token_proj(t.mean(dim=1))
