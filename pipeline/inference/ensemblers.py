"""Training-free ensembles of the experts' SR images: what a challenge team runs instead of a learned fusion.

One frozen :class:`Ensembler` (``method`` + its few parameters + the fingerprints of the experts it was fitted for),
one :func:`fit` (on a training cache: :func:`pipeline.evaluation.cached.fit_on_cache`), one :func:`apply`, and a
small JSON file (:func:`save` / :func:`load`) that refuses to be used with other experts. Images are float RGB in
[0,1], NCHW: ``srs (B,E,3,H,W)`` (E experts, in the fingerprints' order), ``hr (B,3,H,W)``; :func:`apply` returns
``(B,3,H,W)`` clamped to [0,1].

Methods
-------
``mean``
    The plain per-pixel mean of the experts (nothing to fit).

``zzpm``
    The image-level ensemble of team ZZPM, NTIRE 2023 image SR ×4 winners. Per image, with the experts' SR on the
    0–255 scale, ``MSE_e`` = the mean over every pixel and channel of ``(sr_e − mean_f sr_f)²``, the weights are
    ``softmax_e(1 / (1e-3 + MSE_e))`` and the output is ``Σ_e w_e·sr_e``. It favours the expert closest to the
    consensus (with two experts both MSEs are equal: it is the mean). Nothing to fit. Checked against the only public
    implementation found, ``ensemble_zzpm`` in the EnsIR authors' code (github.com/sunshangquan/EnsIR @ c8d7fba,
    ``ensemble_util.py``, which reimplements it as their baseline): same formula, same 1e-3, same 0–255 scale, whole
    image. Difference: they read the experts as 8-bit PNGs, here the experts' float output is used as is.

``blend``
    One fixed linear blend ``Σ_e w_e·sr_e`` (any sign, no bias): the least-squares fit of the HR's NTIRE Y channel
    (BT.601, :func:`pipeline.core.metrics.rgb_to_y`) on the experts' Y over every training pixel (border cropped),
    fitted on ``Y − 16``: that is linear in RGB, so the Y of the RGB blend is exactly the fitted one whatever the
    weights sum to. The E×E normal equations are accumulated in float64 image by image (streaming); the same fit as
    ``scripts/research/expert_baselines.py`` ``blend_weights`` and ``scripts/research/fit_gate_prior.py``.

``topk``
    The plain mean of the best ``k`` experts: experts ranked by their pooled training PSNR-Y, ``k`` the count whose
    mean scores best on the training images (weights ``1/k`` on those, 0 elsewhere). With many comparable experts a
    strong peer: it drops the weakest without fitting a weight per expert.

``blend_reg``
    A regularised fixed blend, chosen on the training images by 5-fold cross-validation over whole images among
    ridge blends pulled towards the plain mean (``λ·tr(XᵀX)/E · ‖w − 1/E‖²``, λ on a log grid 1e-6 … 1) and the
    simplex blend (``w ≥ 0``, ``Σw = 1``, least squares on the simplex). The least-squares ``blend`` fits E free
    weights, which with many correlated experts overfit a few hundred images (it can fall below the plain mean);
    the cross-validation picks the form that generalises, then it is refitted on every training image.

``ensir``
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

Fitting crops ``border`` pixels at each side (the scale, as the NTIRE scoring does); ``mean`` and ``zzpm`` need no
fitting (:func:`fit` just records the experts).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.core.atomic import atomic_write_text
from pipeline.core.config import ConfigError, read_format_json
from pipeline.core.errors import ToolkitError, shorten
from pipeline.core.metrics import rgb_to_y

__all__ = [
    "ENSIR_BIN_WIDTH",
    "ENSIR_MIN_PIXELS",
    "FORMAT",
    "FORMAT_VERSION",
    "FITTED_METHODS",
    "FIXED_WEIGHT_METHODS",
    "METHODS",
    "Ensembler",
    "EnsemblerError",
    "BlendStats",
    "apply",
    "blend_stats",
    "describe",
    "fit",
    "load",
    "save",
]

METHODS = ("mean", "zzpm", "blend", "topk", "blend_reg", "ensir")
FIXED_WEIGHT_METHODS = ("blend", "topk", "blend_reg")  # Σ_e w_e·sr_e with fitted weights (E,)
FITTED_METHODS = (*FIXED_WEIGHT_METHODS, "ensir")  # need a fitted file (scripts/fit_ensembler.py)
RIDGE_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # blend_reg's λ, relative to tr(XᵀX)/E
CV_FOLDS = 5
FORMAT = "sr-ensembler"
FORMAT_VERSION = 1

ENSIR_BIN_WIDTH = 32  # the authors' SR setting (8 bins per expert on 0–255)
ENSIR_MIN_PIXELS = 100  # fewer reference pixels in a bin set: global weights instead of EM
ENSIR_MAX_BIN_SETS = 1 << 15  # 8 bins, 5 experts: LUT 32768×3×5, histograms 200 MB
_EM_MAX_ITER = 1000
_EM_TOL = 1e-5  # on the mean log-likelihood per pixel
_EM_EPS = 1e-6  # added to π's counts and to σ² (as gmm-torch does)
_ZZPM_EPS = 1e-3
_LEVELS = 256  # 8-bit HR levels
MAX_WEIGHT = 1e3  # |weight| of any ensembler parameter: a fitted blend stays within ±10, EnsIR's within [0, 1]


class EnsemblerError(ToolkitError, ValueError):
    """An ensembler file is unreadable or malformed, or does not belong to the experts it is used with."""


# --------------------------------------------------------------------------------------------------------------------
# the ensembler
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class Ensembler:
    """A fitted training-free ensemble. Parameters by method (given as anything ``torch.as_tensor`` takes, kept as
    float64 CPU tensors; absent ones are ``None``):

    * ``blend``: ``weights (E,)``;
    * ``ensir``: ``bin_width``, ``lut (nb**E, 3, E)`` with ``nb = ⌈256 / bin_width⌉`` (row of bin set
      ``(b_1..b_E)`` = ``Σ_e b_e·nb**(E−1−e)``), ``global_weights (3, E)`` (the fallback of sparse bin sets).

    ``experts``: fingerprints of the experts it was fitted for, in order (each with at least ``name`` and
    ``sha256``, as :class:`cache.schema.CacheMeta` ``experts``)."""

    method: str
    experts: tuple[dict[str, Any], ...]
    weights: torch.Tensor | None = None
    bin_width: int | None = None
    lut: torch.Tensor | None = None
    global_weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EnsemblerError(f"method: unknown {shorten(self.method)}, expected one of {list(METHODS)}")
        experts = _check_experts(self.experts)
        object.__setattr__(self, "experts", experts)
        e = len(experts)
        given = {k for k in ("weights", "bin_width", "lut", "global_weights") if getattr(self, k) is not None}
        needed = {m: {"weights"} for m in FIXED_WEIGHT_METHODS}
        needed.update({"mean": set(), "zzpm": set(), "ensir": {"bin_width", "lut", "global_weights"}})
        if given != needed[self.method]:
            raise EnsemblerError(
                f"params: method {self.method!r} takes {sorted(needed[self.method])}, got {sorted(given)}"
            )
        if self.method in FIXED_WEIGHT_METHODS:
            object.__setattr__(self, "weights", _as_param("weights", self.weights, (e,)))
        elif self.method == "ensir":
            bw = self.bin_width
            if isinstance(bw, bool) or not isinstance(bw, int) or not 1 <= bw <= 256:
                raise EnsemblerError(f"bin_width: expected an integer in [1, 256], got {shorten(bw)}")
            nb = math.ceil(256 / bw)
            object.__setattr__(self, "lut", _as_param("lut", self.lut, (nb**e, 3, e)))
            object.__setattr__(self, "global_weights", _as_param("global_weights", self.global_weights, (3, e)))

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def expert_names(self) -> tuple[str, ...]:
        return tuple(str(fp["name"]) for fp in self.experts)


def _check_experts(experts: Any) -> tuple[dict[str, Any], ...]:
    if isinstance(experts, (str, bytes, Mapping)) or not isinstance(experts, Sequence) or not experts:
        raise EnsemblerError(f"experts: expected a non-empty list of fingerprints, got {type(experts).__name__}")
    if len(experts) > 64:
        raise EnsemblerError(f"experts: at most 64 experts, got {len(experts)}")
    out = []
    for i, fp in enumerate(experts):
        if not isinstance(fp, Mapping):
            raise EnsemblerError(f"experts[{i}]: expected a fingerprint mapping, got {type(fp).__name__}")
        for key in ("name", "sha256"):
            if not isinstance(fp.get(key), str) or not fp[key]:
                raise EnsemblerError(f"experts[{i}].{key}: expected a non-empty string, got {shorten(fp.get(key))}")
        try:
            out.append(json.loads(json.dumps(dict(fp), allow_nan=False)))  # a JSON-clean copy (tuples → lists)
        except (TypeError, ValueError) as exc:
            raise EnsemblerError(f"experts[{i}]: not JSON-serialisable ({shorten(str(exc), quote=False)})") from None
    return tuple(out)


def _as_param(key: str, value: Any, shape: tuple[int, ...]) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu().clone()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise EnsemblerError(f"{key}: not an array of numbers ({shorten(str(exc), quote=False)})") from None
    if tuple(t.shape) != shape:
        raise EnsemblerError(f"{key}: expected shape {list(shape)}, got {shorten(list(t.shape))}")
    if not bool(torch.isfinite(t).all()):
        raise EnsemblerError(f"{key}: contains NaN/Inf")
    big = t.abs().max().item() if t.numel() else 0.0
    if big > MAX_WEIGHT:  # finite, but the blended image would overflow (and no fit ever gives such a weight)
        raise EnsemblerError(f"{key}: a weight of {big:g} is outside [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}]")
    return t


def _describe(experts: Sequence[Mapping[str, Any]]) -> str:
    return shorten(
        "[" + ", ".join(f"{fp.get('name')}@{str(fp.get('sha256'))[:12]}" for fp in experts) + "]", quote=False
    )


# --------------------------------------------------------------------------------------------------------------------
# apply
# --------------------------------------------------------------------------------------------------------------------
def apply(ens: Ensembler, srs: torch.Tensor) -> torch.Tensor:
    """``srs (B,E,3,H,W)`` in the fitted experts' order → ``(B,3,H,W)`` in [0,1] (dtype and device of ``srs``)."""
    if srs.ndim != 5 or srs.shape[2] != 3:
        raise EnsemblerError(f"srs must be (B,E,3,H,W), got {tuple(srs.shape)}")
    if srs.shape[1] != ens.num_experts:
        raise EnsemblerError(
            f"the {ens.method} ensembler was fitted for {ens.num_experts} experts "
            f"{list(ens.expert_names)}, got srs with {srs.shape[1]}"
        )
    if ens.method == "mean":
        out = srs.mean(dim=1)
    elif ens.method == "zzpm":
        out = torch.einsum("be,bechw->bchw", _zzpm_weights(srs).to(srs.dtype), srs)
    elif ens.method in FIXED_WEIGHT_METHODS:
        out = torch.einsum("e,bechw->bchw", ens.weights.to(srs), srs)
    elif ens.method == "ensir":
        out = _ensir_apply(ens, srs)
    else:  # unreachable: __post_init__ checks the method
        raise EnsemblerError(f"method: unknown {ens.method!r}")
    return out.clamp(0.0, 1.0)


def _zzpm_weights(srs: torch.Tensor) -> torch.Tensor:
    """``srs (B,E,3,H,W)`` → ZZPM weights ``(B,E)`` float64, one expert at a time in float64 (0–255 scale)."""
    mean = srs.mean(dim=1, dtype=torch.float64)  # (B,3,H,W)
    mse = torch.stack(
        [((srs[:, e].double() - mean) * 255.0).square().mean(dim=(1, 2, 3)) for e in range(srs.shape[1])], dim=1
    )  # (B,E)
    return torch.softmax(1.0 / (_ZZPM_EPS + mse), dim=1)


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


def _ensir_apply(ens: Ensembler, srs: torch.Tensor) -> torch.Tensor:
    rows = _bin_sets(srs, ens.bin_width)  # (B,3,H,W)
    channel = torch.arange(3, device=srs.device).view(1, 3, 1, 1)
    lut = ens.lut.to(srs)  # (R,3,E)
    out = torch.zeros_like(srs[:, 0])
    for e in range(srs.shape[1]):  # one expert at a time: no (B,3,H,W,E) weight tensor
        out += lut[:, :, e][rows, channel] * srs[:, e]
    return out


# --------------------------------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------------------------------
def fit(
    method: str,
    samples: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    experts: Sequence[Mapping[str, Any]],
    border: int = 4,
    bin_width: int = ENSIR_BIN_WIDTH,
    min_pixels: int = ENSIR_MIN_PIXELS,
) -> Ensembler:
    """Fit ``method`` on ``samples``, an iterable of ``(srs (B,E,3,H,W), hr (B,3,H,W))`` (usually B = 1, one image
    at a time: the statistics stream), ``border`` pixels cropped at each side. ``experts``: fingerprints of the E
    experts, in ``srs`` order. ``bin_width`` and ``min_pixels`` are EnsIR's. ``mean`` / ``zzpm`` read no samples."""
    if method not in METHODS:
        raise EnsemblerError(f"method: unknown {shorten(method)}, expected one of {list(METHODS)}")
    if isinstance(border, bool) or not isinstance(border, int) or border < 0:
        raise EnsemblerError(f"border: expected an integer >= 0, got {border!r}")
    fps = _check_experts(experts)
    if method in ("mean", "zzpm"):
        return Ensembler(method=method, experts=fps)
    pairs = _checked(samples, len(fps), border)
    if method == "blend":
        return Ensembler(method="blend", experts=fps, weights=_fit_blend(pairs))
    if method == "topk":
        return Ensembler(method="topk", experts=fps, weights=_fit_topk(_per_image_stats(pairs)))
    if method == "blend_reg":
        return Ensembler(method="blend_reg", experts=fps, weights=_fit_blend_reg(_per_image_stats(pairs)))
    if isinstance(bin_width, bool) or not isinstance(bin_width, int) or not 1 <= bin_width <= 256:
        raise EnsemblerError(f"bin_width: expected an integer in [1, 256], got {bin_width!r}")
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1:
        raise EnsemblerError(f"min_pixels: expected an integer >= 1, got {min_pixels!r}")
    lut, global_weights = _fit_ensir(pairs, len(fps), bin_width=bin_width, min_pixels=min_pixels)
    return Ensembler(method="ensir", experts=fps, bin_width=bin_width, lut=lut, global_weights=global_weights)


def _checked(
    samples: Iterable[tuple[torch.Tensor, torch.Tensor]], num_experts: int, border: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The samples with their ``border`` cropped, shapes checked: ``srs (B,E,3,h,w)``, ``hr (B,3,h,w)``."""
    inner = slice(border, -border or None)  # border 0: the whole image
    for i, (srs, hr) in enumerate(samples):
        if srs.ndim != 5 or srs.shape[1:3] != (num_experts, 3) or hr.shape != srs[:, 0].shape:
            raise EnsemblerError(
                f"sample {i}: expected srs (B,{num_experts},3,H,W) and hr (B,3,H,W), got "
                f"{tuple(srs.shape)} and {tuple(hr.shape)}"
            )
        yield srs[..., inner, inner], hr[..., inner, inner]


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


# --------------------------------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------------------------------
def describe(ens: Ensembler) -> str:
    """One sentence on what ``ens`` computes (submission readme, tables)."""
    w = [round(float(x), 4) for x in ens.weights] if ens.weights is not None else None
    k = sum(1 for x in (w or []) if x)
    return {
        "mean": "the per-pixel mean",
        "zzpm": "ZZPM (per-image softmax weights, NTIRE 2023)",
        "blend": f"a fixed blend with least-squares weights {w}",
        "topk": f"the mean of the best {k} experts (ranked on training images), weights {w}",
        "blend_reg": f"a regularised fixed blend (cross-validated on training images), weights {w}",
        "ensir": "EnsIR (per-intensity-bin weights by EM on a Gaussian mixture, NeurIPS 2024)",
    }[ens.method]


def save(ens: Ensembler, path: str | os.PathLike) -> Path:
    """Write ``ens`` to a small JSON file (atomically): format tag, method, expert fingerprints, parameters."""
    params: dict[str, Any] = {}
    if ens.method in FIXED_WEIGHT_METHODS:
        params = {"weights": ens.weights.tolist()}
    elif ens.method == "ensir":
        params = {"bin_width": ens.bin_width, "global_weights": ens.global_weights.tolist(), "lut": ens.lut.tolist()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": ens.method,
        "experts": list(ens.experts),
        "params": params,
    }
    # one top-level key per line, each value compact (an EnsIR LUT is thousands of numbers)
    lines = [f"  {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in payload.items()]
    return atomic_write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")


_FILE_KEYS = frozenset({"format", "format_version", "method", "experts", "params"})
# An expert's fingerprint as a fit file records it (experts.expert.ExpertFingerprint.to_dict() and the cache's
# self_ensemble): its keys, their JSON types, and the most characters a value may take (a path fits PATH_MAX).
_FINGERPRINT_KEYS: dict[str, tuple[type, int]] = {
    "name": (str, 256),
    "architecture": (str, 256),
    "checkpoint": (str, 4096),
    "sha256": (str, 64),
    "scale": (int, 0),
    "input": (str, 300),
    "hook_layers": (list, 16384),
    "feature_channels": (int, 0),
    "precision": (str, 16),
    "num_params": (int, 0),
    "tags": (list, 4096),
    "hyperparameters": (dict, 65536),
    "code": (dict, 65536),
    "self_ensemble": (int, 0),
}
_CODE_KEYS = frozenset({"file", "sha256", "class_name", "kwargs", "data_range", "pad_multiple", "min_size"})


def _check_file_fingerprint(fp: Any, where: str) -> None:
    """A fingerprint read from a fit file: known keys only, JSON types, bounded sizes (messages cut what they echo)."""
    if not isinstance(fp, dict):
        raise EnsemblerError(f"{where}: expected a fingerprint mapping, got {shorten(fp)}")
    unknown = sorted(set(fp) - set(_FINGERPRINT_KEYS))
    if unknown:
        raise EnsemblerError(
            f"{where}: unknown keys {shorten(unknown)}; a fingerprint holds {sorted(_FINGERPRINT_KEYS)}"
        )
    for key, value in fp.items():
        kind, limit = _FINGERPRINT_KEYS[key]
        bad = not isinstance(value, kind) or isinstance(value, bool)
        if bad or (kind is list and not all(isinstance(v, str) for v in value)):
            what = "list of strings" if kind is list else kind.__name__
            raise EnsemblerError(f"{where}.{key}: expected a JSON {what}, got {shorten(value)}")
        size = len(value) if isinstance(value, str) else len(json.dumps(value)) if kind in (list, dict) else 0
        if size > limit:
            raise EnsemblerError(f"{where}.{key}: {shorten(value, 80)} is longer than {limit} characters")
    unknown = sorted(set(fp.get("code", {})) - _CODE_KEYS)
    if unknown:
        raise EnsemblerError(f"{where}.code: unknown keys {shorten(unknown)}; it holds {sorted(_CODE_KEYS)}")


def load(path: str | os.PathLike, *, experts: Sequence[Mapping[str, Any]] | None = None) -> Ensembler:
    """Read an ensembler written by :func:`save`. ``experts``: fingerprints of the experts the caller will run;
    their names and sha256, in order, must be the ones it was fitted for. Every problem is an
    :class:`EnsemblerError` naming the file (and the key)."""
    p = Path(path)
    try:
        payload = read_format_json(p, fmt=FORMAT, version=FORMAT_VERSION, what="ensembler file")
    except ConfigError as exc:
        raise EnsemblerError(str(exc)) from None
    unknown = sorted(set(payload) - _FILE_KEYS)
    if unknown:
        raise EnsemblerError(
            f"{p}: unknown top-level keys {shorten(unknown)}; an ensembler file holds {sorted(_FILE_KEYS)}"
        )
    for key, kind in (("method", str), ("experts", list), ("params", dict)):
        if not isinstance(payload.get(key), kind):
            raise EnsemblerError(f"{p}: {key}: expected a JSON {kind.__name__}, got {shorten(payload.get(key))}")
    for i, fp in enumerate(payload["experts"][:65]):  # more than 64 are refused by the Ensembler itself
        _check_file_fingerprint(fp, f"{p}: experts[{i}]")
    params = payload["params"]
    unknown = sorted(set(params) - {"weights", "bin_width", "lut", "global_weights"})
    if unknown:
        raise EnsemblerError(f"{p}: params: unknown keys {shorten(unknown)}")
    try:
        ens = Ensembler(
            method=payload["method"],
            experts=payload["experts"],
            weights=params.get("weights"),
            bin_width=params.get("bin_width"),
            lut=params.get("lut"),
            global_weights=params.get("global_weights"),
        )
    except EnsemblerError as exc:
        raise EnsemblerError(f"{p}: {exc}") from exc
    if experts is not None:
        want = _check_experts(experts)
        if [(fp["name"], fp["sha256"]) for fp in ens.experts] != [(fp["name"], fp["sha256"]) for fp in want]:
            raise EnsemblerError(
                f"{p} was fitted for the experts {_describe(ens.experts)}, "
                f"not for the experts to run {_describe(want)} (name@sha256)"
            )
    return ens
