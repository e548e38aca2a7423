"""The fixed linear blends ``Σ_e w_e·sr_e`` of the experts: least squares (``blend``), the mean of the best k
(``topk``) and the cross-validated regularised blend (``blend_reg``); their shared statistics (:class:`BlendStats`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.core.metrics import rgb_to_y
from pipeline.inference.ensemblers.base import (
    Ensembler,
    EnsemblerError,
    Fingerprints,
    FitOptions,
    Pairs,
    _as_param,
    register,
)

__all__ = [
    "CV_FOLDS",
    "RIDGE_GRID",
    "Blend",
    "BlendReg",
    "BlendStats",
    "FixedBlend",
    "TopK",
    "blend_reg_candidates",
    "blend_stats",
    "cross_validate_blends",
]

RIDGE_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # blend_reg's λ, relative to tr(XᵀX)/E

CV_FOLDS = 5


@dataclass(frozen=True, kw_only=True, eq=False)
class FixedBlend(Ensembler):
    """``Σ_e w_e·sr_e`` with fitted ``weights (E,)``: what the three blends share (only their fit differs)."""

    fitted = True
    parameter_keys = ("weights",)

    weights: Any

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "weights", _as_param("weights", self.weights, (self.num_experts,)))

    def combine(self, srs: torch.Tensor) -> torch.Tensor:
        return torch.einsum("e,bechw->bchw", self.weights.to(srs), srs)

    def parameters(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist()}

    def _rounded(self) -> list[float]:
        return [round(float(x), 4) for x in self.weights]


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class Blend(FixedBlend):
    """The ``blend`` method.

    One fixed linear blend ``Σ_e w_e·sr_e`` (any sign, no bias): the least-squares fit of the HR's NTIRE Y channel
    (BT.601, :func:`pipeline.core.metrics.rgb_to_y`) on the experts' Y over every training pixel (border cropped),
    fitted on ``Y − 16``: that is linear in RGB, so the Y of the RGB blend is exactly the fitted one whatever the
    weights sum to. The E×E normal equations are accumulated in float64 image by image (streaming); the same fit as
    ``scripts/research/expert_baselines.py`` ``blend_weights`` and ``scripts/research/fit_gate_prior.py``."""

    method = "blend"

    @classmethod
    def fit_checked(cls, pairs: Pairs, *, experts: Fingerprints, options: FitOptions) -> Ensembler:
        return cls(experts=experts, weights=_fit_blend(pairs))

    def describe(self) -> str:
        return f"a fixed blend with least-squares weights {self._rounded()}"


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class TopK(FixedBlend):
    """The ``topk`` method.

    The plain mean of the best ``k`` experts: experts ranked by their pooled training PSNR-Y, ``k`` the count whose
    mean scores best on the training images (weights ``1/k`` on those, 0 elsewhere). With many comparable experts a
    strong peer: it drops the weakest without fitting a weight per expert."""

    method = "topk"

    @classmethod
    def fit_checked(cls, pairs: Pairs, *, experts: Fingerprints, options: FitOptions) -> Ensembler:
        return cls(experts=experts, weights=_fit_topk(_per_image_stats(pairs)))

    def describe(self) -> str:
        w = self._rounded()
        k = sum(1 for x in w if x)
        return f"the mean of the best {k} experts (ranked on training images), weights {w}"


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class BlendReg(FixedBlend):
    """The ``blend_reg`` method.

    A regularised fixed blend, chosen on the training images by 5-fold cross-validation over whole images among
    ridge blends pulled towards the plain mean (``λ·tr(XᵀX)/E · ‖w − 1/E‖²``, λ on a log grid 1e-6 … 1) and the
    simplex blend (``w ≥ 0``, ``Σw = 1``, least squares on the simplex). The least-squares ``blend`` fits E free
    weights, which with many correlated experts overfit a few hundred images (it can fall below the plain mean);
    the cross-validation picks the form that generalises, then it is refitted on every training image."""

    method = "blend_reg"

    @classmethod
    def fit_checked(cls, pairs: Pairs, *, experts: Fingerprints, options: FitOptions) -> Ensembler:
        return cls(experts=experts, weights=_fit_blend_reg(_per_image_stats(pairs)))

    def describe(self) -> str:
        return f"a regularised fixed blend (cross-validated on training images), weights {self._rounded()}"


@dataclass(frozen=True)
class BlendStats:
    """The normal equations of the least-squares blend of the experts' Y on the HR's Y (float64, 0–255 scale, less
    the 16 offset: Y − 16 is linear in RGB, so the Y of the RGB blend ``Σ_e w_e·sr_e`` is exactly ``16 + Σ_e
    w_e·(Y_e − 16)`` whatever the weights sum to). Every fixed blend's fit and pooled PSNR (one MSE over all pixels)
    follow from them without another pass over the images."""

    xtx: torch.Tensor  # (E,E) Σ (Y_e−16)·(Y_f−16)
    xty: torch.Tensor  # (E,) Σ (Y_e−16)·(Y_hr−16)
    yty: float  # Σ (Y_hr−16)²
    n: int  # pixels

    def solve(self) -> torch.Tensor:
        """Least-squares weights ``w (E,)`` (any sign, no bias), float64."""
        return torch.linalg.solve(self.xtx, self.xty)

    def pooled_psnr(self, w: torch.Tensor) -> float:
        """PSNR-Y (peak 255) of the blend ``w`` over all pixels: MSE = (wᵀXᵀXw − 2wᵀXᵀy + yᵀy) / N."""
        w = w.double()
        mse = (float(w @ self.xtx @ w) - 2.0 * float(w @ self.xty) + self.yty) / self.n
        return 10.0 * math.log10(255.0**2 / max(mse, 1e-20))


def blend_stats(pairs_per_image, *, border: int) -> BlendStats:
    """Accumulate :class:`BlendStats` image by image; ``pairs_per_image`` yields ``(srs (B,E,3,H,W), hr (B,3,H,W))``,
    ``border`` pixels are cropped at each side (the scoring's crop)."""
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    xtx = xty = None
    yty, n = 0.0, 0
    inner = slice(border, -border or None)  # border 0: the whole image
    for srs, hr in pairs_per_image:
        b, e = srs.shape[:2]
        ys = rgb_to_y(srs.flatten(0, 1))[..., inner, inner].reshape(b, e, -1).transpose(0, 1).reshape(e, -1) - 16.0
        yh = rgb_to_y(hr)[..., inner, inner].reshape(-1) - 16.0  # (N,), images in the order of ys' columns
        xtx = ys @ ys.T if xtx is None else xtx + ys @ ys.T
        xty = ys @ yh if xty is None else xty + ys @ yh
        yty += float(yh @ yh)
        n += yh.numel()
    if xtx is None:
        raise ValueError("no images to fit a blend on")
    return BlendStats(xtx=xtx, xty=xty, yty=yty, n=n)


def _fit_blend(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Least-squares ``w (E,)`` of ``Y_hr − 16`` on the experts' ``Y_e − 16`` (0–255): :class:`BlendStats` of the
    (already border-cropped) pairs, solved by SVD least squares — the exact solution of a regular system, the
    minimum-norm one of a singular system (e.g. two identical experts)."""
    try:
        stats = blend_stats(pairs, border=0)
    except EnsemblerError:
        raise
    except ValueError:  # blend_stats: no images at all
        raise EnsemblerError("no pixels to fit a blend on (no samples, or every image within the border)") from None
    if stats.n == 0:
        raise EnsemblerError("no pixels to fit a blend on (no samples, or every image within the border)")
    return torch.linalg.lstsq(
        stats.xtx.cpu(), stats.xty.cpu().unsqueeze(1), rcond=1e-12, driver="gelsd"
    ).solution.squeeze(1)


def _per_image_stats(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[BlendStats]:
    """One :class:`BlendStats` per image (the border is already cropped)."""
    stats = []
    for srs, hr in pairs:
        for b in range(srs.shape[0]):
            st = blend_stats([(srs[b : b + 1], hr[b : b + 1])], border=0)
            if st.n:
                stats.append(st)
    if not stats:
        raise EnsemblerError("no pixels to fit on (no samples, or every image within the border)")
    return stats


def _total(stats: Sequence[BlendStats]) -> BlendStats:
    return BlendStats(
        xtx=sum(s.xtx for s in stats),
        xty=sum(s.xty for s in stats),
        yty=sum(s.yty for s in stats),
        n=sum(s.n for s in stats),
    )


def _fit_topk(stats: Sequence[BlendStats]) -> torch.Tensor:
    """``1/k`` on the ``k`` experts of best pooled training PSNR, ``k`` the best-scoring count (ties: the smaller)."""
    total = _total(stats)
    e = total.xtx.shape[0]
    eye = torch.eye(e, dtype=torch.float64)
    order = sorted(range(e), key=lambda i: -total.pooled_psnr(eye[i]))
    best_w, best_p = None, -math.inf
    for k in range(1, e + 1):
        w = torch.zeros(e, dtype=torch.float64)
        w[order[:k]] = 1.0 / k
        p = total.pooled_psnr(w)
        if p > best_p + 1e-12:
            best_w, best_p = w, p
    return best_w


def _ridge(st: BlendStats, lam: float) -> torch.Tensor:
    e = st.xtx.shape[0]
    reg = lam * float(torch.trace(st.xtx)) / e
    prior = torch.full((e,), 1.0 / e, dtype=torch.float64)
    return torch.linalg.solve(st.xtx + reg * torch.eye(e, dtype=torch.float64), st.xty + reg * prior)


def _simplex(st: BlendStats, *, iters: int = 5000) -> torch.Tensor:
    """Least squares on the probability simplex (``w ≥ 0``, ``Σw = 1``) by projected gradient descent with the exact
    Euclidean projection (E ≤ a few dozen: an E×E problem)."""
    a = st.xtx / st.n
    b = st.xty / st.n
    step = 1.0 / float(torch.linalg.eigvalsh(a)[-1])
    w = torch.full_like(b, 1.0 / b.numel())
    for _ in range(iters):
        w_new = _project_simplex(w - step * (a @ w - b))
        if float((w_new - w).abs().max()) < 1e-12:
            return w_new
        w = w_new
    return w


def _project_simplex(v: torch.Tensor) -> torch.Tensor:
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1.0
    ks = torch.arange(1, v.numel() + 1, dtype=v.dtype)
    rho = int(torch.nonzero(u - css / ks > 0)[-1])
    return torch.clamp(v - css[rho] / (rho + 1), min=0.0)


def _mse(st: BlendStats, w: torch.Tensor) -> float:
    return (float(w @ st.xtx @ w) - 2.0 * float(w @ st.xty) + st.yty) / st.n


def blend_reg_candidates() -> list[tuple[str, Callable[[BlendStats], torch.Tensor]]]:
    """blend_reg's candidate forms: ``(label, fit(stats) → w)``."""
    forms: list[tuple[str, Callable[[BlendStats], torch.Tensor]]] = [
        (f"ridge {lam:g}", lambda st, lam=lam: _ridge(st, lam)) for lam in RIDGE_GRID
    ]
    forms.append(("simplex", _simplex))
    return forms


def cross_validate_blends(stats: Sequence[BlendStats], *, folds: int = CV_FOLDS) -> dict[str, float]:
    """Pooled held-out MSE of each :func:`blend_reg_candidates` form, folds over whole images (image ``i`` is in fold
    ``i mod folds``)."""
    k = min(folds, len(stats))
    parts = [_total(stats[f::k]) for f in range(k)]
    out = {}
    for label, fit_form in blend_reg_candidates():
        err = 0.0
        for f in range(k):
            train = _total([p for g, p in enumerate(parts) if g != f]) if k > 1 else parts[f]
            w = fit_form(train)
            err += _mse(parts[f], w) * parts[f].n
        out[label] = err / sum(p.n for p in parts)
    return out


def _fit_blend_reg(stats: Sequence[BlendStats]) -> torch.Tensor:
    """The :func:`blend_reg_candidates` form of lowest cross-validated MSE, refitted on every image."""
    scores = cross_validate_blends(stats)
    best = min(scores, key=scores.get)
    return dict(blend_reg_candidates())[best](_total(stats))
