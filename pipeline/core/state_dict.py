"""Strict state-dict loading shared by the expert and fusion checkpoint formats: before ``load_state_dict`` the keys
and shapes of the file are compared with the model's, so a mismatch is one message naming every kind of difference
(torch's own error stops at the first shape and lists keys without shapes)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

__all__ = ["StateDictMismatch", "load_state_dict_strict", "state_dict_mismatch"]


class StateDictMismatch:
    """How a state dict differs from a model's: keys it lacks, keys it has in excess, and ``"key: <source> (shape) vs
    model (shape)"`` for tensors of another shape."""

    def __init__(self, missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)


def state_dict_mismatch(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "file"
) -> StateDictMismatch:
    """Compare ``state`` with ``model.state_dict()`` (keys and shapes); falsy when they fit."""
    expected = model.state_dict()
    return StateDictMismatch(
        missing=sorted(set(expected) - set(state)),
        unexpected=sorted(set(state) - set(expected)),
        mismatched=[
            f"{k}: {source} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ],
    )


def load_state_dict_strict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    error: Callable[[StateDictMismatch], Exception],
    *,
    source: str = "file",
) -> nn.Module:
    """Load ``state`` into ``model`` strictly; when keys or shapes differ, raise ``error(mismatch)`` (the caller's
    typed error and message) instead of torch's. Returns ``model``."""
    mismatch = state_dict_mismatch(model, state, source=source)
    if mismatch:
        raise error(mismatch)
    model.load_state_dict(state, strict=True)
    return model
