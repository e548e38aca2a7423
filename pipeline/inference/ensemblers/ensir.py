"""EnsIR (NeurIPS 2024): per-intensity-bin expert weights by EM on a Gaussian mixture."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.core.errors import shorten
from pipeline.inference.ensemblers.base import (
    Ensembler,
    EnsemblerError,
    Fingerprints,
    FitOptions,
    Pairs,
    _as_param,
    register,
)

__all__ = ["ENSIR_MAX_BIN_SETS", "EnsIR"]

ENSIR_MAX_BIN_SETS = 1 << 15  # 8 bins, 5 experts: LUT 32768×3×5, histograms 200 MB

_EM_MAX_ITER = 1000

_EM_TOL = 1e-5  # on the mean log-likelihood per pixel

_EM_EPS = 1e-6  # added to π's counts and to σ² (as gmm-torch does)

_LEVELS = 256  # 8-bit HR levels


@register
@dataclass(frozen=True, kw_only=True, eq=False)
class EnsIR(Ensembler):
    """The ``ensir`` method.

    EnsIR (Sun et al., "EnsIR: An Ensemble Algorithm for Image Restoration via Gaussian Mixture Models", NeurIPS
    2024, arXiv 2410.22959). Learned from the paper's abstract and figures and, for the details, from the authors'
    code (github.com/sunshangquan/EnsIR @ c8d7fba: ``ensemble_util.py`` ``reorganize`` / ``learn_gmm`` / ``GMM`` /
    ``ensemble_single`` and their copy of gmm-torch, whose mean update is switched off); written anew here:

    * Range-wise bins: on the 0–255 scale each expert's value falls in bin ``⌊v / bin_width⌋`` (``bin_width`` 32,
      the authors' SR setting: 8 bins); a pixel's *bin set* is the tuple of its E experts' bins (8**E bin sets),
      separately per colour channel.
    * Per bin set and channel, a univariate Gaussian mixture models the HR value ``y`` over the reference pixels in
      it: ``y ~ Σ_e π_e·N(μ_e, σ_e²)``, with ``μ_e`` fixed to the mean of expert e's values in the bin set. EM
      updates ``π`` and ``σ²`` from ``σ_e²`` = the variance of expert e's values in the bin set and ``π`` =
      ``softmax_e(1 / (1e-10 + RMS_e))`` (``RMS_e`` = root mean square of expert e minus the experts' mean) until the
      mean log-likelihood gains less than 1e-5 or after 1000 iterations (the authors' settings). ``π`` is the bin
      set's row of the lookup table (LUT, ``(8**E, 3, E)``).
    * Inference: each pixel and channel takes the weights of its bin set, ``Σ_e π_e·sr_e``.

    Deviations: bin sets with fewer than ``min_pixels`` (100, the authors' threshold) reference pixels, and unseen
    ones, get the *global* weights — the same EM over every pixel of the channel as one bin set — where the authors
    use the initial softmax weights (and, for empty bins, the previous bin's). The HR is 8-bit, so its values are
    counted in a 256-level histogram per bin set and channel: EM then runs on these histograms, which makes fitting
    stream over any number of images in a few MB (exact for 8-bit HR; a float HR is rounded to the 8-bit level).
    The experts' float output is used as is (the authors read 8-bit PNGs), clamped to [0,255] for the bin index only.

    Parameters: ``bin_width``, ``lut (nb**E, 3, E)`` with ``nb = ⌈256 / bin_width⌉`` (row of bin set ``(b_1..b_E)``
    = ``Σ_e b_e·nb**(E−1−e)``), ``global_weights (3, E)`` (the fallback of sparse bin sets)."""

    method = "ensir"
    fitted = True
    parameter_keys = ("bin_width", "global_weights", "lut")

    bin_width: Any
    lut: Any
    global_weights: Any

    def __post_init__(self) -> None:
        super().__post_init__()
        e = self.num_experts
        bw = self.bin_width
        if isinstance(bw, bool) or not isinstance(bw, int) or not 1 <= bw <= 256:
            raise EnsemblerError(f"bin_width: expected an integer in [1, 256], got {shorten(bw)}")
        nb = math.ceil(256 / bw)
        object.__setattr__(self, "lut", _as_param("lut", self.lut, (nb**e, 3, e)))
        object.__setattr__(self, "global_weights", _as_param("global_weights", self.global_weights, (3, e)))

    @classmethod
    def fit_checked(cls, pairs: Pairs, *, experts: Fingerprints, options: FitOptions) -> Ensembler:
        bin_width, min_pixels = options.bin_width, options.min_pixels
        if isinstance(bin_width, bool) or not isinstance(bin_width, int) or not 1 <= bin_width <= 256:
            raise EnsemblerError(f"bin_width: expected an integer in [1, 256], got {bin_width!r}")
        if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1:
            raise EnsemblerError(f"min_pixels: expected an integer >= 1, got {min_pixels!r}")
        lut, global_weights = _fit_ensir(pairs, len(experts), bin_width=bin_width, min_pixels=min_pixels)
        return cls(experts=experts, bin_width=bin_width, lut=lut, global_weights=global_weights)

    def combine(self, srs: torch.Tensor) -> torch.Tensor:
        rows = _bin_sets(srs, self.bin_width)  # (B,3,H,W)
        channel = torch.arange(3, device=srs.device).view(1, 3, 1, 1)
        lut = self.lut.to(srs)  # (R,3,E)
        out = torch.zeros_like(srs[:, 0])
        for e in range(srs.shape[1]):  # one expert at a time: no (B,3,H,W,E) weight tensor
            out += lut[:, :, e][rows, channel] * srs[:, e]
        return out

    def describe(self) -> str:
        return "EnsIR (per-intensity-bin weights by EM on a Gaussian mixture, NeurIPS 2024)"

    def parameters(self) -> dict[str, Any]:
        return {"bin_width": self.bin_width, "global_weights": self.global_weights.tolist(), "lut": self.lut.tolist()}


def _bin_sets(srs: torch.Tensor, bin_width: int) -> torch.Tensor:
    """``srs (B,E,3,H,W)`` → the LUT row of every pixel and channel, ``(B,3,H,W)`` int64 (expert 0 is the most
    significant digit). Fitting and inference both come here, on float32 values, so that a pixel lands in the same
    bin set in both."""
    nb = math.ceil(256 / bin_width)
    row = torch.zeros(srs[:, 0].shape, dtype=torch.long, device=srs.device)
    for e in range(srs.shape[1]):
        level = srs[:, e].float().mul(255.0).clamp(0.0, 255.0)  # (B,3,H,W)
        row = row * nb + torch.div(level, bin_width, rounding_mode="floor").long().clamp_(max=nb - 1)
    return row


def _fit_ensir(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], num_experts: int, *, bin_width: int, min_pixels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """EnsIR's LUT ``(nb**E, 3, E)`` and global weights ``(3, E)`` from per-(bin set, channel) statistics, accumulated
    one image channel at a time (float64, CPU)."""
    e = num_experts
    rows = math.ceil(256 / bin_width) ** e
    if rows > ENSIR_MAX_BIN_SETS:
        raise EnsemblerError(
            f"bin_width {bin_width} with {e} experts makes {rows} bin sets (at most "
            f"{ENSIR_MAX_BIN_SETS}): use a larger bin_width"
        )
    count = torch.zeros(3, rows, dtype=torch.float64)  # pixels per (channel, bin set)
    s1 = torch.zeros(3, rows, e, dtype=torch.float64)  # Σ x_e          (x on 0–255)
    s2 = torch.zeros(3, rows, e, dtype=torch.float64)  # Σ x_e²
    dev = torch.zeros(3, rows, e, dtype=torch.float64)  # Σ (x_e − mean_f x_f)²
    hist = torch.zeros(3, rows * _LEVELS, dtype=torch.float64)  # HR level counts, (rows, 256) flattened
    for srs, hr in pairs:
        row = _bin_sets(srs, bin_width).cpu()  # (B,3,h,w)
        for b in range(srs.shape[0]):
            for c in range(3):
                r = row[b, c].reshape(-1)  # (N,)
                x = srs[b, :, c].double().mul(255.0).reshape(e, -1).T.cpu()  # (N,E)
                level = hr[b, c].double().mul(255.0).round().clamp(0, _LEVELS - 1).long().reshape(-1).cpu()  # (N,)
                count[c] += torch.bincount(r, minlength=rows).double()
                s1[c].index_add_(0, r, x)
                s2[c].index_add_(0, r, x.square())
                dev[c].index_add_(0, r, (x - x.mean(dim=1, keepdim=True)).square())
                hist[c] += torch.bincount(r * _LEVELS + level, minlength=rows * _LEVELS).double()
    hist = hist.view(3, rows, _LEVELS)
    if bool((count.sum(dim=1) == 0).any()):
        raise EnsemblerError("no pixels to fit EnsIR on (no samples, or every image within the border)")
    fitted = count >= min_pixels  # (3,rows)
    stats = (count, s1, s2, dev, hist)
    pooled = [t.sum(dim=1) for t in stats]  # each channel's bin sets as one: the global mixture
    pi = _em(*(torch.cat([g, t[fitted]]) for g, t in zip(pooled, stats, strict=True)))  # (3 + fitted cells, E)
    global_weights = pi[:3]  # (3,E)
    lut = global_weights.unsqueeze(1).repeat(1, rows, 1)  # (3,rows,E): the fallback everywhere ...
    lut[fitted] = pi[3:]  # ... except where EM had enough pixels
    return lut.transpose(0, 1).contiguous(), global_weights  # (rows,3,E)


def _em(
    count: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, dev: torch.Tensor, hist: torch.Tensor, *, block: int = 1024
) -> torch.Tensor:
    """EnsIR's EM for M independent mixtures (``block`` at a time) → ``π (M,E)``.

    Mixture m: ``count (M,)`` pixels; ``s1, s2, dev (M,E)`` sums of the experts' values (0–255), of their squares
    and of their squared deviations from the experts' mean; ``hist (M,256)`` counts of the HR level. Model:
    ``y ~ Σ_e π_e·N(μ_e, σ_e²)`` with ``μ_e = s1/count`` fixed; ``σ²`` starts at each expert's variance, ``π`` at
    ``softmax(1 / (1e-10 + RMS))``; both are updated until the mean log-likelihood gains < 1e-5 (≤ 1000 steps)."""
    n = count.unsqueeze(1)  # (M,1)
    mu = s1 / n  # (M,E)
    var = (s2 / n - mu.square()).clamp_min(_EM_EPS)  # (M,E)
    pi = torch.softmax(1.0 / (1e-10 + (dev / n).sqrt()), dim=1)  # (M,E)
    levels = torch.arange(_LEVELS, dtype=torch.float64).view(1, -1, 1)  # (1,256,1)
    for lo in range(0, mu.shape[0], block):
        sl = slice(lo, lo + block)
        pi[sl], var[sl] = _em_block(count[sl], hist[sl], (levels - mu[sl].unsqueeze(1)).square(), var[sl], pi[sl])
    return pi


def _em_block(
    count: torch.Tensor, hist: torch.Tensor, d2: torch.Tensor, var: torch.Tensor, pi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """EM steps on ``count (M,)``, ``hist (M,256)``, ``d2 (M,256,E)`` = (level − μ)², from ``var, pi (M,E)``;
    each mixture stops on its own."""
    var, pi = var.clone(), pi.clone()
    e = pi.shape[1]
    prev = torch.full(count.shape, -math.inf, dtype=torch.float64)
    active = torch.arange(count.shape[0])
    for _ in range(_EM_MAX_ITER):
        if active.numel() == 0:
            break
        h, dd, v, p, n = hist[active], d2[active], var[active], pi[active], count[active]
        logp = -0.5 * (dd / v.unsqueeze(1) + torch.log(2 * math.pi * v).unsqueeze(1)) + p.log().unsqueeze(1)
        lse = torch.logsumexp(logp, dim=2)  # (A,256)
        ll = (h * lse).sum(dim=1) / n  # (A,) mean log-likelihood at the current parameters
        go = ll - prev[active] >= _EM_TOL  # still improving: take an M-step
        prev[active] = ll
        resp = torch.exp(logp - lse.unsqueeze(2)) * h.unsqueeze(2)  # (A,256,E) responsibilities × counts
        nk = resp.sum(dim=1)  # (A,E)
        new_pi = (nk + _EM_EPS) / (n.unsqueeze(1) + e * _EM_EPS)
        new_var = (resp * dd).sum(dim=1) / nk.clamp_min(1e-300) + _EM_EPS
        pi[active[go]] = new_pi[go]
        var[active[go]] = new_var[go]
        active = active[go]
    return pi, var
