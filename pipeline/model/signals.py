"""Ground-truth-free per-pixel signals about the experts, for the fusion's gate (and for analysis).

* :func:`lr_consistency` — how far each expert's SR, downscaled with the exact MATLAB bicubic kernel of
  :mod:`pipeline.core.resize` (the kernel that made the LR on the bicubic track), lands from the LR it was made from:
  zero for an SR that explains the LR exactly, growing with any error the downscale can see. Available at test time,
  for any expert.
* :func:`expert_spread` — the experts' per-pixel disagreement (standard deviation over experts, mean over RGB).

Both are computed in float64 internally and returned as float32 maps. Shapes: ``srs (B,E,3,sH,sW)``,
``lr (B,3,H,W)``.
"""

from __future__ import annotations

import torch

from pipeline.core.resize import imresize

__all__ = ["expert_spread", "lr_consistency"]


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
