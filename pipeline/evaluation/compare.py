"""The fusion against every ensemble a team could submit instead, on one test set, in two regimes.

Regimes: ``none`` — each expert run once; ``x8`` — each expert's ×8 self-ensemble
(:meth:`experts.ensemble.ExpertEnsemble.self_ensemble`). Rows per regime: every expert, the training-free
ensemblers (:mod:`pipeline.inference.ensemblers`: mean, ZZPM, and the fitted files given, e.g. EnsIR and the
least-squares
blend), the fusion checkpoint (in ``x8``: on the ×8 experts, and the ×8 of the whole pipeline), the 16×16-block
oracle (the best expert per block, chosen with the HR in hand: a ceiling, not a method) and its held-out form (each
half block takes the other half's best expert: the part of that ceiling a block-scale gate could learn).

Every expert output (the identity pass and each of the eight transforms) comes from the ensemble's expert-output store
when it has one (experts/store.py: computed once, exact, shared with every other command); the fusion runs on them
each time. Scores are the NTIRE ones (PSNR-Y / SSIM-Y, BT.601 with offsets, border = scale) of the 8-bit-rounded
output, as submitted; every gain carries its paired bootstrap interval over images
(:mod:`pipeline.evaluation.bootstrap`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from experts.store import ExpertStore
from pipeline.core.augment import AUGMENTATIONS, augment, deaugment
from pipeline.core.errors import ToolkitError
from pipeline.core.imageio import quantize_8bit
from pipeline.core.metrics import psnr_y, ssim_y
from pipeline.evaluation.baselines import block_oracle, heldout_block_oracle
from pipeline.evaluation.bootstrap import paired_interval
from pipeline.inference.ensemblers import Ensembler, apply

__all__ = [
    "REGIMES",
    "is_table_json",
    "CompareError",
    "peer_labels",
    "Row",
    "ScoreMemo",
    "block_oracle",
    "expert_outputs",
    "heldout_oracle_label",
    "score_rows",
    "scores_key",
    "table_markdown",
]

REGIMES = ("none", "x8")


def heldout_oracle_label(block: int) -> str:
    """The row label of the held-out block oracle at ``block`` px (``baselines.heldout_block_oracle``)."""
    return f"held-out oracle {block}x{block}"


class CompareError(ToolkitError, RuntimeError):
    """Two rows would share a label, or the inputs do not pair."""


def peer_labels(ensemblers: Sequence[Ensembler], files: Sequence[str | os.PathLike | None]) -> list[str]:
    """The row label of each ensembler: its method, or — where two share a method (a blend fitted on two training
    sets) — the method and its file's stem, ``blend_reg [873_blend_reg]`` (``files[i]`` None: a built-in peer)."""
    if len(files) != len(ensemblers):
        raise ValueError(f"{len(ensemblers)} ensemblers, {len(files)} files")
    methods = [e.method for e in ensemblers]
    labels = [
        m if methods.count(m) == 1 or f is None else f"{m} [{Path(f).stem}]"
        for m, f in zip(methods, files, strict=True)
    ]
    check_labels(labels)
    return labels


def check_labels(labels: Sequence[str]) -> None:
    """Two rows never share a label: their per-image scores would be pooled into one mean."""
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise CompareError(f"two peers would share the table row {dup[0]!r}: give them files with different names")


# ---------------------------------------------------------------------------------------------------------------------
# expert (and fusion) outputs, computed once per image
# ---------------------------------------------------------------------------------------------------------------------
Fuse = Callable[[torch.Tensor, torch.Tensor, list[torch.Tensor]], torch.Tensor]  # (lr, srs, feats) → sr (1,3,sH,sW)


@torch.inference_mode()
def expert_outputs(ensemble, lr: torch.Tensor, *, fuse: Fuse | None = None) -> dict[str, Any]:
    """One LR image ``(1,3,H,W)`` through the 8 dihedral transforms: ``srs`` (identity pass, ``(E,3,sH,sW)``),
    ``srs_x8`` (each expert's ×8 mean), ``feats`` (identity pass), and with ``fuse``: ``fusion`` (identity),
    ``fusion_x8_pipeline`` (the ×8 of the whole pipeline) and ``fusion_x8_experts`` (the fusion on the ×8 experts)."""
    total_srs, total_fused = None, None
    out: dict[str, Any] = {}
    for k in range(AUGMENTATIONS):
        x = augment(lr, k)
        res = ensemble(x)  # srs (1,E,3,sH,sW), feats E × (1,C,H,W)
        back = deaugment(res.srs, k).double()
        total_srs = back if total_srs is None else total_srs + back
        if k == 0:
            out["srs"], out["feats"] = res.srs[0].float(), [f[0].float() for f in res.feats]
        if fuse is not None:
            fused = deaugment(fuse(x, res.srs, res.feats).clamp(0, 1), k).double()
            total_fused = fused if total_fused is None else total_fused + fused
            if k == 0:
                out["fusion"] = fused[0].float()
    out["srs_x8"] = (total_srs / AUGMENTATIONS)[0].float()
    if fuse is not None:
        out["fusion_x8_pipeline"] = (total_fused / AUGMENTATIONS)[0].float()
        out["fusion_x8_experts"] = fuse(lr, out["srs_x8"][None], [f[None] for f in out["feats"]]).clamp(0, 1)[0].float()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    regime: str
    method: str
    kind: str  # "expert" | "ensembler" | "fusion" | "oracle"
    psnr: list[float]
    ssim: list[float]

    @property
    def mean_psnr(self) -> float:
        return sum(self.psnr) / len(self.psnr)

    @property
    def mean_ssim(self) -> float:
        return sum(self.ssim) / len(self.ssim)


def _score(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> tuple[float, float]:
    q = quantize_8bit(sr[None])  # what an 8-bit PNG holds
    return float(psnr_y(q, hr[None], crop_border=scale)[0]), float(ssim_y(q, hr[None], crop_border=scale)[0])


def score_rows(
    items: Iterable[tuple[dict[str, Any], torch.Tensor, str | None]],
    *,
    expert_names: Sequence[str],
    ensemblers: Sequence[Ensembler],
    with_fusion: bool,
    scale: int,
    oracle_block: int = 16,
    labels: Sequence[str] | None = None,
    memo: ScoreMemo | None = None,
) -> list[Row]:
    """``items``: ``(stored outputs, hr (3,sH,sW), memo key)`` per image → every row of both regimes, per-image scores
    kept. ``labels``: the ensemblers' row labels (default their methods; :func:`peer_labels`), all distinct. With a
    ``memo`` and a key (:func:`scores_key`), an image's expert, peer and oracle scores are read from it when there
    (only the fusion's rows are scored) and saved when not."""
    labels = [e.method for e in ensemblers] if labels is None else list(labels)
    check_labels([*expert_names, *labels])
    rows: dict[tuple[str, str], Row] = {}
    for out, hr, key in items:
        known = memo.get(key) if memo is not None and key is not None else None
        scored = _image_scores(
            out,
            hr,
            known=known,
            expert_names=expert_names,
            ensemblers=ensemblers,
            labels=labels,
            with_fusion=with_fusion,
            scale=scale,
            oracle_block=oracle_block,
        )
        for regime, method, kind, p, s in scored:
            row = rows.setdefault((regime, method), Row(regime=regime, method=method, kind=kind, psnr=[], ssim=[]))
            row.psnr.append(p)
            row.ssim.append(s)
        if memo is not None and key is not None and known is None:
            memo.put(key, {(g, m): (p, s) for g, m, kind, p, s in scored if kind != "fusion"})
    return list(rows.values())


def _image_scores(
    out: dict[str, Any],
    hr: torch.Tensor,
    *,
    known: dict[tuple[str, str], tuple[float, float]] | None,
    expert_names: Sequence[str],
    ensemblers: Sequence[Ensembler],
    labels: Sequence[str],
    with_fusion: bool,
    scale: int,
    oracle_block: int,
) -> list[tuple[str, str, str, float, float]]:
    """One image's ``(regime, method, kind, psnr, ssim)`` in table order; a non-fusion row in ``known`` is taken
    from it, without computing its output."""
    scored: list[tuple[str, str, str, float, float]] = []

    def add(regime: str, method: str, kind: str, sr: Callable[[], torch.Tensor]) -> None:
        if kind != "fusion" and known is not None and (regime, method) in known:
            p, s = known[(regime, method)]
        else:
            p, s = _score(sr(), hr, scale)
        scored.append((regime, method, kind, p, s))

    b = oracle_block
    for regime, name in (("none", "srs"), ("x8", "srs_x8")):
        srs = out[name]  # (E,3,sH,sW)
        for j, n in enumerate(expert_names):
            add(regime, n, "expert", lambda srs=srs, j=j: srs[j])
        for ens, label in zip(ensemblers, labels, strict=True):
            add(regime, label, "ensembler", lambda srs=srs, ens=ens: apply(ens, srs[None])[0])
        if with_fusion and regime == "none":
            add(regime, "fusion", "fusion", lambda: out["fusion"])
        elif with_fusion:
            add(regime, "fusion on x8 experts", "fusion", lambda: out["fusion_x8_experts"])
            add(regime, "fusion, x8 of the pipeline", "fusion", lambda: out["fusion_x8_pipeline"])
        add(regime, f"oracle {b}x{b} blocks", "oracle", lambda srs=srs: block_oracle(srs[None], hr[None], b)[0])
        add(
            regime,
            heldout_oracle_label(b),
            "oracle",
            lambda srs=srs: heldout_block_oracle(srs[None], hr[None], b)[0],
        )
    return scored


# ---------------------------------------------------------------------------------------------------------------------
# the expert, peer and oracle rows of an image, scored once (a second table for another fusion scores only its rows)
# ---------------------------------------------------------------------------------------------------------------------
SCORES_VERSION = 1
# the code a stored score depends on besides its inputs: a change to any of these files is another key
_SCORING_CODE = (
    "pipeline/core/metrics.py",
    "pipeline/core/imageio.py",
    "pipeline/core/augment.py",
    "pipeline/evaluation/baselines.py",
    "pipeline/evaluation/compare.py",
    "pipeline/inference/ensemblers",
)


@functools.lru_cache(maxsize=1)
def scoring_code_sha() -> str:
    """sha256 over the source of the scoring code (:data:`_SCORING_CODE`)."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256(str(SCORES_VERSION).encode())
    for rel in _SCORING_CODE:
        path = root / rel
        for f in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def scores_key(
    *,
    expert_keys: Sequence[str],
    hr: torch.Tensor,
    peers: Sequence[tuple[str, Ensembler]],
    scale: int,
    oracle_block: int = 16,
) -> str:
    """The key of one image's non-fusion scores: its experts' outputs (``expert_keys``: each expert's store key for
    this LR, :meth:`experts.ensemble.ExpertEnsemble.output_keys`), the HR's bytes, every peer's label, method and
    parameters, the scale, the oracle block and the scoring code (:func:`scoring_code_sha`)."""
    material = {
        "experts": list(expert_keys),
        "hr": [list(hr.shape), str(hr.dtype), hashlib.sha256(hr.contiguous().cpu().numpy().tobytes()).hexdigest()],
        "peers": [[label, e.method, json.dumps(e.parameters(), sort_keys=True, default=str)] for label, e in peers],
        "scale": scale,
        "oracle_block": oracle_block,
        "code": scoring_code_sha(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class ScoreMemo:
    """Per-image expert, peer and oracle scores in the expert-output store's ``scores`` records."""

    def __init__(self, store: ExpertStore) -> None:
        self.store = store
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict[tuple[str, str], tuple[float, float]] | None:
        record = self.store.get_record("scores", key)
        rows = record.get("rows") if record is not None else None
        if not isinstance(rows, list):
            self.misses += 1
            return None
        self.hits += 1
        return {(str(r[0]), str(r[1])): (float(r[2]), float(r[3])) for r in rows}

    def put(self, key: str, scores: dict[tuple[str, str], tuple[float, float]]) -> None:
        self.store.put_record("scores", key, {"rows": [[g, m, p, s] for (g, m), (p, s) in scores.items()]})


def summarise(rows: Sequence[Row], *, mean_label: str | None = "mean") -> list[dict[str, Any]]:
    """Per row: mean PSNR/SSIM, Δ PSNR vs the best expert of the same regime and vs the experts' plain mean (the row
    labelled ``mean_label``, when present), each with its paired bootstrap 95 % interval over images and verdict
    (:mod:`pipeline.evaluation.bootstrap`), the images below that expert; for every fusion row also Δ vs each
    training-free peer of its regime (``vs_peers``, strongest peer first)."""
    out = []
    for regime in REGIMES:
        mine = [r for r in rows if r.regime == regime]
        experts = [r for r in mine if r.kind == "expert"]
        if not experts:
            continue
        best = max(experts, key=lambda r: r.mean_psnr)
        mean_row = next((r for r in mine if r.kind == "ensembler" and r.method == mean_label), None)
        peers = sorted((r for r in mine if r.kind == "ensembler"), key=lambda r: -r.mean_psnr)
        for r in mine:
            below = sum(p < b - 1e-9 for p, b in zip(r.psnr, best.psnr))
            entry = {
                "regime": regime,
                "method": r.method,
                "kind": r.kind,
                "psnr": r.mean_psnr,
                "ssim": r.mean_ssim,
                "delta_vs_best_expert": r.mean_psnr - best.mean_psnr,
                "best_expert": best.method,
                "vs_best_expert": paired_interval(r.psnr, best.psnr).to_dict(),
                "vs_mean": paired_interval(r.psnr, mean_row.psnr).to_dict() if mean_row is not None else None,
                "images_below_best_expert": int(below),
                "images": len(r.psnr),
            }
            if r.kind == "fusion":
                entry["vs_peers"] = [
                    {"peer": p.method, "peer_psnr": p.mean_psnr, **paired_interval(r.psnr, p.psnr).to_dict()}
                    for p in peers
                ]
            out.append(entry)
    return out


def is_table_json(path: Path) -> bool:
    """Whether ``path`` is a table JSON these tools wrote (it has ``rows``) — what their output guard may replace."""
    try:
        return "rows" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _interval(d: dict[str, Any] | None) -> str:
    return "" if d is None else f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def table_markdown(summary: Sequence[dict[str, Any]], *, title: str) -> str:
    """The summary as Markdown: one row per method (Δ vs the best expert and vs the plain mean, each with its 95 %
    paired bootstrap interval over images), then every fusion against every peer of its regime with a verdict."""
    lines = [
        f"### {title}",
        "",
        "| regime | method | PSNR-Y | SSIM-Y | Δ vs best expert [95 % interval] | Δ vs mean [95 % interval] | "
        "images below best expert |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['regime']} | {s['method']} | {s['psnr']:.4f} | {s['ssim']:.4f} | "
            f"{_interval(s.get('vs_best_expert'))} ({s['best_expert']}) | {_interval(s.get('vs_mean'))} | "
            f"{s['images_below_best_expert']}/{s['images']} |"
        )
    duels = [(s, v) for s in summary for v in s.get("vs_peers", [])]
    if duels:
        first = duels[0][1]
        lines += [
            "",
            f"Fusion − each training-free peer of the same regime: mean over images and its "
            f"{100 * first['confidence']:g} % paired bootstrap interval ({first['resamples']:,} resamples of the "
            f"{first['images']} images, seeded); verdict at that confidence.",
            "",
            "| regime | fusion | peer | peer PSNR-Y | fusion − peer [95 % interval] | verdict |",
            "|---|---|---|---:|---:|---|",
        ]
        for s, v in duels:
            lines.append(
                f"| {s['regime']} | {s['method']} | {v['peer']} | {v['peer_psnr']:.4f} | {_interval(v)} | "
                f"{v['verdict']} |"
            )
    return "\n".join(lines) + "\n"
