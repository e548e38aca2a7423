"""The eight dihedral transforms (rot90 × horizontal flip) shared by training crops and ×8 test-time augmentation."""

from __future__ import annotations

import torch

__all__ = ["AUGMENTATIONS", "augment", "deaugment"]

AUGMENTATIONS = 8  # 4 rotations × optional horizontal flip


def augment(x: torch.Tensor, k: int) -> torch.Tensor:
    """Dihedral transform ``k`` in [0, 8) on the last two dims: rot90 by (k % 4), then flip if k >= 4."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def deaugment(x: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`augment` (flip first, then rotate back)."""
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -(k % 4), dims=(-2, -1))
