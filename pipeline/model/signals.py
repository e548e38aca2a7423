"""Ground-truth-free per-pixel signals about the experts, for the fusion's gate (and for analysis).

* :func:`lr_consistency` — how far each expert's SR, downscaled with the exact MATLAB bicubic kernel of
  :mod:`pipeline.core.resize` (the kernel that made the LR on the bicubic track), lands from the LR it was made from:
  zero for an SR that explains the LR exactly, growing with any error the downscale can see. Available at test time,
  for any expert.
* :func:`expert_spread` — the experts' per-pixel disagreement (standard deviation over experts, mean over RGB).
* :func:`gate_signals` — both, plus the LR's luma, as LR-resolution input channels for the fusion's gate
  (``E + 2`` channels, log-compressed grey levels).

Both are computed in float64 internally and returned as float32 maps. Shapes: ``srs (B,E,3,sH,sW)``,
``lr (B,3,H,W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.core.resize import imresize

__all__ = ["expert_spread", "gate_signals", "lr_consistency", "num_gate_signals"]


def lr_consistency(srs: torch.Tensor, lr: torch.Tensor, *, scale: int) -> torch.Tensor:
    """``srs (B,E,3,sH,sW)``, ``lr (B,3,H,W)`` → ``(B,E,1,H,W)``: per LR pixel, the mean over RGB of
    ``|imresize(sr_e, 1/scale) − lr|`` (MATLAB bicubic, antialiased, float path)."""
    b, e, c, sh, sw = srs.shape
    if lr.shape != (b, c, sh // scale, sw // scale) or sh % scale or sw % scale:
        raise ValueError(f"srs {tuple(srs.shape)} is not the x{scale} of lr {tuple(lr.shape)}")
    down = imresize(srs.reshape(b * e, c, sh, sw).double(), 1.0 / scale)  # (B·E,3,H,W)
    err = (down.view(b, e, c, sh // scale, sw // scale) - lr.double().unsqueeze(1)).abs()
    return err.mean(dim=2, keepdim=True).float()


def expert_spread(srs: torch.Tensor) -> torch.Tensor:
    """``srs (B,E,3,sH,sW)`` → ``(B,1,sH,sW)``: the standard deviation over experts (population), mean over RGB."""
    return srs.double().std(dim=1, correction=0).mean(dim=1, keepdim=True).float()


def num_gate_signals(num_experts: int) -> int:
    """Channels of :func:`gate_signals` for ``num_experts`` experts."""
    return num_experts + 2


def gate_signals(lr: torch.Tensor, srs: torch.Tensor, *, scale: int) -> torch.Tensor:
    """``lr (B,3,H,W)``, ``srs (B,E,3,sH,sW)`` → ``(B,E+2,H,W)`` float32, per LR pixel: each expert's
    :func:`lr_consistency`, the experts' :func:`expert_spread` averaged over the ``scale×scale`` block, both as
    ``log1p(255·x)`` (log grey levels: errors span orders of magnitude), and the LR's BT.601 luma in [0,1] (the
    intensity the experts' reliability depends on). No gradient flows into ``lr`` or ``srs``."""
    with torch.no_grad():
        b, e = srs.shape[:2]
        h, w = lr.shape[-2:]
        cons = lr_consistency(srs, lr, scale=scale).view(b, e, h, w)  # (B,E,H,W)
        spread = F.avg_pool2d(expert_spread(srs), scale)  # (B,1,H,W)
        luma = (0.299 * lr[:, 0:1] + 0.587 * lr[:, 1:2] + 0.114 * lr[:, 2:3]).float()  # (B,1,H,W)
        return torch.cat([torch.log1p(255.0 * cons), torch.log1p(255.0 * spread), luma], dim=1)
