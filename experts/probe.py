"""The sanity checks of an expert when it is loaded: a smooth probe image, and the smallest input side a model runs on.

**Probe.** A correctly fed ×s SR model (or a ×1 restorer of a bicubic upscale) returns, on a smooth image, nearly the
bicubic upscale of its LR: measured on the probe below, the 17 real experts of this project (CRAFT, DITN, SPAN of
../shared/weights; the eleven NTIRE 2024 ESR models of configs/experts/esr_pool.yaml; the bundled HAT-S, DAT-S,
NAFNet-SR-S) score 52.4–63.4 dB PSNR against it. A mistake in how a model is fed does not: the eleven team models with
the other ``data_range`` (1 ↔ 255) score 5.4–29.6 dB or return NaN, a model that returns BGR scores far lower, and
seeded random weights 5.7–19.9 dB. :data:`DEFAULT_MIN_PSNR` (40 dB) lies > 12 dB below the weakest real expert and
> 10 dB above the best mistake (experts/README.md: the table). The probe costs one forward pass on a 32×32 LR image —
the dry run that also checks the hook layers — and a failure is one line naming the likely cause, found by re-running
the model with that cause undone (the other data range, the colour channels reversed).

**Minimum side.** A team's model may fail on small inputs (strided pooling: RLFN's ESA blocks need 15 px). When its
YAML gives no ``min_size``, :func:`probe_min_side` finds the smallest side from which every larger one runs, with a
few forward passes on tiny inputs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from pipeline.core.resize import bicubic_upscale, make_lr

__all__ = [
    "DEFAULT_MIN_PSNR",
    "PROBE_LR",
    "ProbeImages",
    "diagnose_probe",
    "probe_images",
    "probe_min_side",
    "probe_psnr",
]

PROBE_LR = 32  # LR side of the probe image (the hooks' dry run uses the same forward pass)
DEFAULT_MIN_PSNR = 40.0  # dB against the bicubic upscale (module docstring)
MIN_SIDE_LIMIT = 128  # the largest side probed for a minimum (the scale check ran at 64 before)
_CONFIRM = 8  # a minimum side counts when it and the next sides (as many) all run


class ProbeImages:
    """The probe's LR ``(1,3,32,32)`` and its MATLAB-bicubic ×scale upscale (the reference), float32 in [0, 1]."""

    def __init__(self, *, lr: torch.Tensor, bicubic: torch.Tensor, scale: int) -> None:
        self.lr, self.bicubic, self.scale = lr, bicubic, scale


def _smooth_field(side: int) -> torch.Tensor:
    """A smooth colour image ``(1,3,side,side)``: a few slow sinusoids, different per channel (so a channel swap
    shows), deterministic (a formula, no random numbers), in [0.05, 0.95]."""
    t = torch.linspace(0, 1, side, dtype=torch.float64)
    y, x = torch.meshgrid(t, t, indexing="ij")
    tau = 2 * math.pi
    r = 0.5 + 0.22 * torch.sin(tau * (1.1 * x + 0.35 * y)) + 0.12 * torch.cos(tau * 1.7 * y)
    g = 0.5 + 0.22 * torch.cos(tau * (0.6 * x - 0.9 * y) + 0.5) + 0.12 * torch.sin(tau * 1.9 * x)
    b = 0.45 + 0.25 * torch.sin(tau * (0.8 * x + 1.2 * y) + 1.0) - 0.1 * (x - 0.5)
    return torch.stack([r, g, b])[None].clamp(0, 1).float()


@functools.lru_cache(maxsize=8)
def probe_images(scale: int) -> ProbeImages:
    """The probe for a ×``scale`` ensemble: HR ``32·scale`` px a side → MATLAB-bicubic LR → bicubic upscale."""
    _, lr = make_lr(_smooth_field(PROBE_LR * scale), scale)
    return ProbeImages(lr=lr, bicubic=bicubic_upscale(lr, scale), scale=scale)


def probe_psnr(sr: torch.Tensor, ref: torch.Tensor, *, border: int) -> float:
    """PSNR (dB, RGB, peak 1) of ``sr`` against ``ref`` without ``border`` pixels at each side (the models' own
    border handling differs); ``-inf`` when ``sr`` holds NaN or Inf."""
    a = sr.detach().to("cpu", torch.float64)[..., border:-border, border:-border]
    b = ref.detach().to("cpu", torch.float64)[..., border:-border, border:-border]
    if not bool(torch.isfinite(a).all()):
        return -math.inf
    mse = float(((a.clamp(0, 1) - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def diagnose_probe(
    *,
    score: float,
    threshold: float,
    output: torch.Tensor,
    ref: torch.Tensor,
    border: int,
    data_range: float | None,
    rerun: Callable[[float], torch.Tensor] | None,
) -> str:
    """The likely cause of a failed probe, found by undoing each candidate: ``rerun(other data range)`` → output
    (code experts, whose ``data_range`` the YAML sets), the colour channels reversed."""
    if score == -math.inf:
        finite = "its output holds NaN or Inf"
    else:
        finite = ""
    if rerun is not None and data_range is not None:
        other = 1.0 if data_range != 1.0 else 255.0
        fixed = probe_psnr(rerun(other), ref, border=border)
        if fixed >= threshold:
            return (
                f"{finite + '; ' if finite else ''}likely cause: code.data_range — the model works on [0, {other:g}], "
                f"not [0, {data_range:g}]: with data_range: {other:g} the probe scores {fixed:.1f} dB"
            )
    if not finite:
        swapped = probe_psnr(output.flip(-3), ref, border=border)
        if swapped >= threshold:
            return (
                f"likely cause: colour order — the model returns BGR for an RGB input (with its output's channels "
                f"reversed the probe scores {swapped:.1f} dB); experts are fed RGB and must return RGB"
            )
    known = "; the other data range does not help either" if rerun is not None else ""
    return (
        f"{finite + '; ' if finite else ''}likely cause: weights that do not belong to this class or its arguments "
        f"(e.g. a training-time form loaded into a deploy form), a model of another scale or degradation, or one "
        f"that is not an SR model{known}; if the model is meant to differ from a bicubic upscale (a GAN, another "
        f"degradation), lower min_probe_psnr for it (0 turns the check off)"
    )


def probe_min_side(
    runs: Callable[[int], bool], *, multiple: int = 1, limit: int = MIN_SIDE_LIMIT
) -> tuple[int | None, list[int]]:
    """The smallest side (a multiple of ``multiple``) from which ``runs(side)`` holds for it and the next
    :data:`_CONFIRM` sides; ``(None, failed sides)`` when there is none up to ``limit``. ``runs`` tries a square
    input of that side."""
    start, failed = None, []
    side = multiple
    while side <= limit:
        if runs(side):
            if start is None:
                start = side
            if (side - start) // multiple >= _CONFIRM:
                return start, failed
        else:
            failed.append(side)
            start = None
        side += multiple
    return None, failed
