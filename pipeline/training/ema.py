"""Exponential moving average of model weights (evaluation and the saved model use the EMA copy)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["ModelEma"]


class ModelEma(nn.Module):
    """``ema = decay · ema + (1 − decay) · weights`` after every optimiser step; buffers are copied.

    With ``warmup=True`` the effective decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early
    averages are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.999, warmup: bool = False) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            ema_params[name].lerp_(p.detach(), 1.0 - d)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)
        self.num_updates += 1

    def forward(self, *args, **kwargs):  # noqa: D401 - delegate
        return self.module(*args, **kwargs)
