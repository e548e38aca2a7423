"""The ensembles with nothing to fit: the plain mean and ZZPM (NTIRE 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.inference.ensemblers.base import Ensembler, Fingerprints, FitOptions, Pairs, register

__all__ = ["Mean", "ZZPM"]

_ZZPM_EPS = 1e-3


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Mean(Ensembler):
    """The ``mean`` method.

    The plain per-pixel mean of the experts (nothing to fit)."""

    method = "mean"

    @classmethod
    def fit_checked(cls, pairs: Pairs, *, experts: Fingerprints, options: FitOptions) -> Ensembler:
        return cls(experts=experts)

    def combine(self, srs: torch.Tensor) -> torch.Tensor:
        return srs.mean(dim=1)

    def describe(self) -> str:
        return "the per-pixel mean"


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class ZZPM(Ensembler):
    """The ``zzpm`` method.

    The image-level ensemble of team ZZPM, NTIRE 2023 image SR ×4 winners. Per image, with the experts' SR on the
    0–255 scale, ``MSE_e`` = the mean over every pixel and channel of ``(sr_e − mean_f sr_f)²``, the weights are
    ``softmax_e(1 / (1e-3 + MSE_e))`` and the output is ``Σ_e w_e·sr_e``. It favours the expert closest to the
    consensus (with two experts both MSEs are equal: it is the mean). Nothing to fit. Checked against the only public
    implementation found, ``ensemble_zzpm`` in the EnsIR authors' code (github.com/sunshangquan/EnsIR @ c8d7fba,
    ``ensemble_util.py``, which reimplements it as their baseline): same formula, same 1e-3, same 0–255 scale, whole
    image. Difference: they read the experts as 8-bit PNGs, here the experts' float output is used as is."""

    method = "zzpm"

    @classmethod
    def fit_checked(cls, pairs: Pairs, *, experts: Fingerprints, options: FitOptions) -> Ensembler:
        return cls(experts=experts)

    def combine(self, srs: torch.Tensor) -> torch.Tensor:
        return torch.einsum("be,bechw->bchw", _zzpm_weights(srs).to(srs.dtype), srs)

    def describe(self) -> str:
        return "ZZPM (per-image softmax weights, NTIRE 2023)"


def _zzpm_weights(srs: torch.Tensor) -> torch.Tensor:
    """``srs (B,E,3,H,W)`` → ZZPM weights ``(B,E)`` float64, one expert at a time in float64 (0–255 scale)."""
    mean = srs.mean(dim=1, dtype=torch.float64)  # (B,3,H,W)
    mse = torch.stack(
        [((srs[:, e].double() - mean) * 255.0).square().mean(dim=(1, 2, 3)) for e in range(srs.shape[1])], dim=1
    )  # (B,E)
    return torch.softmax(1.0 / (_ZZPM_EPS + mse), dim=1)
