"""The one place that uses spandrel's private padding helper (``spandrel.__helpers.size_req.pad_tensor``), so a
spandrel upgrade that moves it breaks one import, not three.

spandrel pads an input to an architecture's :class:`spandrel.SizeRequirements` (minimum side, multiple-of, square)
with reflection at the bottom/right before the model runs; :func:`pad_to_requirements` does exactly that."""

from __future__ import annotations

import torch
from spandrel import SizeRequirements
from spandrel.__helpers.size_req import pad_tensor

__all__ = ["pad_to_requirements"]


def pad_to_requirements(x: torch.Tensor, requirements: SizeRequirements) -> torch.Tensor:
    """x (B,C,h,w) → (B,C,h',w') padded at the bottom/right the way spandrel's model call pads it (unchanged when
    ``x`` already meets ``requirements``)."""
    _, padded = pad_tensor(x, requirements)
    return padded
