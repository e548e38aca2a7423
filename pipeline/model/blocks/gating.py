"""Phase 6 — dynamic expert selection: per-pixel softmax gates over the E experts, a difficulty map, and the
mixture-of-experts load-balancing loss.

Gates and difficulty are predicted at LR resolution and brought to HR by pixel shuffle (16 sub-pixel values per
LR pixel), so every HR pixel has its own gate vector at LR cost. Both heads end in zero-initialised 1×1 convs:
untrained, the gates are uniform (the output is the experts' mean) — or, with a ``prior``, equal to it everywhere
(the gate head's bias is ``T·log prior``) — and the difficulty is 0.5 everywhere.

With ``base`` (fixed blend weights of any sign, e.g. the least-squares blend of the training cache) the gates are
not a softmax but ``base + (d − mean_E d)``: the learned deviation ``d`` starts at zero, so the untrained gates are
exactly the blend, and it sums to zero over the experts, so the gates always sum to ``Σ base`` (the blend's own
brightness). Unlike a softmax prior this keeps a negative weight (an expert whose error the others cancel).

``signal_channels`` extra input channels (ground-truth-free signals about the experts, pipeline/model/signals.py)
are concatenated to the features before the gate's first conv.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ExpertGating2d", "load_balance_loss"]


def load_balance_loss(gates: Tensor) -> Tensor:
    """Switch-Transformer load-balancing loss over all pixels of ``gates`` (B,E,H,W), each pixel summing to 1.

    ``E · Σ_e f_e · P_e`` with ``f_e`` the fraction of pixels whose top gate is expert e (not differentiable) and
    ``P_e`` the mean gate of expert e (differentiable). It is 1.0 when routing is balanced and E when the gates
    have collapsed onto one expert, so minimising it (with a small weight) keeps every expert in use.
    """
    e = gates.shape[1]
    p = gates.mean(dim=(0, 2, 3))  # (E,)
    top = gates.detach().argmax(dim=1).flatten()
    f = torch.bincount(top, minlength=e).to(gates.dtype) / top.numel()
    return e * (f * p).sum()


class ExpertGating2d(nn.Module):
    """x (B,C,H,W) → gates (B,E,sH,sW) (softmax over E, temperature T) and difficulty (B,1,sH,sW) in (0,1)."""

    def __init__(
        self,
        *,
        channels: int,
        num_experts: int,
        hidden: int,
        temperature: float,
        learnable_temperature: bool,
        scale: int = 4,
        prior: Sequence[float] | None = None,
        base: Sequence[float] | None = None,
        signal_channels: int = 0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if prior is not None and (len(prior) != num_experts or min(prior) <= 0):
            raise ValueError(f"prior must be {num_experts} positive weights, got {prior}")
        if base is not None and (len(base) != num_experts or prior is not None):
            raise ValueError(f"base must be {num_experts} weights (and no prior), got {base}")
        self.num_experts = num_experts
        self.scale = scale
        self.signal_channels = signal_channels
        self.body = nn.Conv2d(channels + signal_channels, hidden, 3, padding=1)
        self.gate_head = nn.Conv2d(hidden, num_experts * scale * scale, 1)
        self.difficulty_head = nn.Conv2d(hidden, scale * scale, 1)
        for head in (self.gate_head, self.difficulty_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        if prior is not None:  # channel e·s² + k is sub-pixel k of expert e after the pixel shuffle
            p = torch.tensor([float(v) for v in prior], dtype=torch.float64)
            bias = (temperature * (p / p.sum()).log()).repeat_interleave(scale * scale)
            with torch.no_grad():
                self.gate_head.bias.copy_(bias.float())
        if base is not None:
            base_w = torch.tensor([float(v) for v in base]).view(1, num_experts, 1, 1)
            self.register_buffer("base", base_w, persistent=False)  # from the config, not a weight
        else:
            self.base = None
        log_t = torch.tensor(math.log(temperature))
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t, persistent=False)

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp()

    def forward(self, x: Tensor, signals: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B,C,H,W) [+ signals (B,S,H,W)] → gates (B,E,sH,sW), difficulty (B,1,sH,sW)."""
        if (signals is None) != (self.signal_channels == 0) or (
            signals is not None and signals.shape[1] != self.signal_channels
        ):
            raise ValueError(
                f"the gate takes {self.signal_channels} signal channels, got "
                f"{None if signals is None else tuple(signals.shape)}"
            )
        h = F.gelu(self.body(x if signals is None else torch.cat([x, signals.to(x.dtype)], dim=1)))
        logits = F.pixel_shuffle(self.gate_head(h), self.scale)  # (B,E,sH,sW)
        if self.base is not None:
            gates = self.base.to(logits.dtype) + (logits - logits.mean(dim=1, keepdim=True))
        else:
            gates = (logits / self.temperature).softmax(dim=1)
        difficulty = torch.sigmoid(F.pixel_shuffle(self.difficulty_head(h), self.scale))  # (B,1,sH,sW)
        return gates, difficulty
