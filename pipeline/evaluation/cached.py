"""Score fusion checkpoints and training-free ensemblers on a cached test set (no TTA) — without running the experts.

A cache of a test set (``scripts/extract_features.py --hr SET --lr SET_LR``) holds every expert's SR image: any
number of fusions trained for those experts, and any fitted ensembler, are scored from it in seconds — ablations,
learning curves, recipes. Scores are the NTIRE ones (PSNR-Y / SSIM-Y, border = scale) of the 8-bit output, as
submitted. The experts' SR is read as the cache stores it (8-bit levels in the default layout): a fusion with
``model.inputs.sr_dtype=uint8`` sees exactly what it sees live, an ensembler sees the experts' 8-bit outputs (the
×8 and float rows of ``compare_ensembles.py`` run the experts live instead).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cache.dataset import image_subset
from cache.reader import CacheReader
from pipeline.core.errors import ToolkitError
from pipeline.core.imageio import quantize_8bit
from pipeline.core.metrics import psnr_y, ssim_y
from pipeline.evaluation.baselines import heldout_block_oracle
from pipeline.evaluation.compare import Row, check_labels, heldout_oracle_label
from pipeline.inference.ensemblers import (
    ENSIR_BIN_WIDTH,
    ENSIR_MIN_PIXELS,
    Ensembler,
    EnsemblerError,
    fit,
    method_class,
)
from pipeline.model.fusion_net import FusionNet
from pipeline.model.io import load_pretrained, read_extra, resolve_checkpoint, verify_checksums

__all__ = ["CachedScoreError", "StackCurve", "fit_on_cache", "load_fusion", "score_cached", "stack_curve"]


class CachedScoreError(ToolkitError, ValueError):
    """The cache cannot be scored against (no HR), or a fusion was trained for other experts."""


def load_fusion(path: str | os.PathLike, *, which: str = "last") -> tuple[str, FusionNet, list[dict]]:
    """A run (its ``which`` checkpoint) or a checkpoint, checksums verified, as the ``(label, fusion, its experts'
    fingerprints)`` triple :func:`score_cached` and :func:`stack_curve` take; the label is ``path`` as given."""
    ckpt = resolve_checkpoint(path, which=which)
    verify_checksums(ckpt)
    return str(path), load_pretrained(ckpt), list(read_extra(ckpt).get("experts", []))


def _check_scoreable(
    reader: CacheReader, cache_path: str | os.PathLike, fusions: Sequence[tuple[str, FusionNet, Sequence[dict]]]
) -> None:
    """The cache holds HR images, and every fusion was trained for exactly the cache's experts (names + sha256)."""
    if not reader.has_hr:
        raise CachedScoreError(f"{cache_path}: holds no HR images: nothing to score against")
    have = [(str(fp["name"]), str(fp["sha256"])) for fp in reader.meta.experts]
    for label, _, fps in fusions:
        want = [(str(fp["name"]), str(fp["sha256"])) for fp in fps]
        if want != have:
            raise CachedScoreError(f"fusion {label} was trained with experts {want}, {cache_path} holds {have}")


@torch.inference_mode()
def score_cached(
    cache_path: str | os.PathLike,
    *,
    fusions: Sequence[tuple[str, FusionNet, Sequence[dict]]] = (),
    ensemblers: Sequence[Ensembler] = (),
    held_out_of: int | None = None,
    labels: Sequence[str] | None = None,
    oracle_blocks: Sequence[int] = (),
) -> list[Row]:
    """Rows (regime ``none``) of every expert, every ensembler and every ``(label, fusion, its experts'
    fingerprints)`` on the cache's images; per-image scores kept (:class:`pipeline.evaluation.compare.Row`).
    ``held_out_of``: only the images *outside* the nested subset of that size (``cache.dataset.image_subset``) — the
    training images a run with ``data.images`` = that size never saw: a held-out split of the training cache.
    ``labels``: the ensemblers' row labels (default their methods; :func:`pipeline.evaluation.compare.peer_labels`).
    ``oracle_blocks``: a row per block size B of the held-out block oracle (HR in hand: each half of a B×B block takes
    the expert best on the other half; :func:`pipeline.evaluation.baselines.heldout_block_oracle`) — a diagnostic of
    the room a per-pixel gate could reach at that scale, never a peer."""
    labels = [e.method for e in ensemblers] if labels is None else list(labels)
    blocks = [int(b) for b in oracle_blocks]
    if any(b < 2 for b in blocks):
        raise CachedScoreError(f"held-out oracle blocks must be >= 2 px (a block is split in halves), got {blocks}")
    reader = CacheReader(cache_path)
    try:
        _check_scoreable(reader, cache_path, fusions)
        names = reader.meta.expert_names
        oracle_labels = [heldout_oracle_label(b) for b in blocks]
        check_labels([*names, *labels, *(label for label, _, _ in fusions), *oracle_labels])
        rows: dict[str, Row] = {}
        scale = reader.scale

        def add(method: str, kind: str, sr: torch.Tensor, hr: torch.Tensor) -> None:
            row = rows.setdefault(method, Row(regime="none", method=method, kind=kind, psnr=[], ssim=[]))
            q = quantize_8bit(sr.clamp(0, 1))
            row.psnr.append(float(psnr_y(q, hr, crop_border=scale)[0]))
            row.ssim.append(float(ssim_y(q, hr, crop_border=scale)[0]))

        indices = range(len(reader))
        if held_out_of is not None:
            seen = set(image_subset(len(reader), held_out_of))
            indices = [i for i in indices if i not in seen]
            if not indices:
                raise CachedScoreError(f"{cache_path}: no image is held out of a subset of {held_out_of}")
        for i in indices:
            s = reader.read(i)
            lr, srs, hr = s.lr[None], s.srs[None], s.hr[None]  # (1,3,h,w), (1,E,3,H,W), (1,3,H,W)
            for j, n in enumerate(names):
                add(n, "expert", srs[:, j], hr)
            for ens, label in zip(ensemblers, labels, strict=True):
                add(label, "ensembler", ens.apply(srs), hr)
            for label, fusion, _ in fusions:
                feats = [f[None] for f in s.feats]
                add(label, "fusion", fusion.forward_with_precomputed(lr, srs, feats).sr, hr)
            for b, label in zip(blocks, oracle_labels, strict=True):
                add(label, "oracle", heldout_block_oracle(srs, hr, b), hr)
        return list(rows.values())
    finally:
        reader.close()


def fit_on_cache(
    method: str,
    cache_path: str | os.PathLike,
    *,
    border: int | None = None,
    bin_width: int = ENSIR_BIN_WIDTH,
    min_pixels: int = ENSIR_MIN_PIXELS,
    images: int | None = None,
) -> Ensembler:
    """:func:`pipeline.inference.ensemblers.fit` on every whole image of a training cache that holds HR
    (``scripts/extract_features.py --hr``), for the cache's experts; ``border`` defaults to the cache's scale. A cache
    without HR is refused, except for ``mean`` / ``zzpm``, which only record the experts. ``images``: fit on that many
    of them only, the subset a training run with ``data.images`` samples (``cache.dataset.image_subset``). Here, not
    in the inference layer: the ensemblers run without a cache, only fitting reads one."""
    reader = CacheReader(cache_path)
    try:
        border = reader.scale if border is None else border
        if method_class(method).fitted and not reader.has_hr:
            raise EnsemblerError(
                f"{cache_path}: holds no HR images (extracted without --hr): nothing to fit {method} against"
            )
        subset = image_subset(len(reader), images)
        samples = ((s.srs[None], s.hr[None]) for s in (reader.read(i) for i in subset))
        return fit(
            method, samples, experts=reader.meta.experts, border=border, bin_width=bin_width, min_pixels=min_pixels
        )
    finally:
        reader.close()


@dataclass(frozen=True)
class StackCurve:
    """What averaging more independently trained gates buys: ``psnr[subset]`` = per-image PSNR-Y of the mean of those
    members' outputs (a stack of them, exactly as ``sr-fusion stack-gates`` would build it), for every non-empty
    subset of the members (tuples of member indices)."""

    members: tuple[str, ...]
    psnr: dict[tuple[int, ...], list[float]]

    def by_size(self) -> list[dict]:
        """Per stack size k: the mean over all subsets of size k of their mean PSNR (an unbiased estimate of a
        k-stack's score), its minimum and maximum (the luck of the draw), and how many subsets."""
        out = []
        for k in range(1, len(self.members) + 1):
            means = [sum(v) / len(v) for s, v in self.psnr.items() if len(s) == k]
            out.append(
                {"k": k, "mean": sum(means) / len(means), "min": min(means), "max": max(means), "subsets": len(means)}
            )
        return out

    def limit(self) -> float:
        """The score of an infinite stack, extrapolated from k = 1 and k = K on the model score(k) = L − c/k (the
        members' own errors average out as 1/k; what they share stays): L = m₁ + (m_K − m₁)·K/(K − 1)."""
        sizes = self.by_size()
        k = len(self.members)
        if k < 2:
            raise ValueError("a stack curve needs two or more members to extrapolate")
        m1, mk = sizes[0]["mean"], sizes[-1]["mean"]
        return m1 + (mk - m1) * k / (k - 1)


@torch.inference_mode()
def stack_curve(
    cache_path: str | os.PathLike,
    *,
    members: Sequence[tuple[str, FusionNet, Sequence[dict]]],
) -> StackCurve:
    """Score every subset-stack of ``members`` (``(label, fusion, its experts' fingerprints)``, two to twelve) on the
    cache's images: each member runs once per image, each subset's output is the mean of its members' outputs."""
    if not 2 <= len(members) <= 12:
        raise CachedScoreError(f"a stack curve takes 2 to 12 members (all subsets are scored), got {len(members)}")
    subsets = [s for k in range(1, len(members) + 1) for s in itertools.combinations(range(len(members)), k)]
    psnr: dict[tuple[int, ...], list[float]] = {s: [] for s in subsets}
    reader = CacheReader(cache_path)
    try:
        _check_scoreable(reader, cache_path, members)
        for i in range(len(reader)):
            s = reader.read(i)
            lr, srs, hr = s.lr[None], s.srs[None], s.hr[None]  # (1,3,h,w), (1,E,3,H,W), (1,3,H,W)
            feats = [f[None] for f in s.feats]
            outs = [fusion.forward_with_precomputed(lr, srs, feats).sr for _, fusion, _ in members]  # K × (1,3,H,W)
            for sub in subsets:
                sr = sum(outs[j] for j in sub) / len(sub)
                psnr[sub].append(float(psnr_y(quantize_8bit(sr.clamp(0, 1)), hr, crop_border=reader.scale)[0]))
        return StackCurve(members=tuple(label for label, _, _ in members), psnr=psnr)
    finally:
        reader.close()
