"""The fusion ablation's variants (the default and each phase switched off) and its table, read back from the runs'
``metrics.csv``. The command line that trains them: scripts/research/ablation.py."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from pipeline.model.io import load_pretrained, resolve_checkpoint

__all__ = ["VARIANTS", "Variant", "final_scores", "format_table"]


@dataclass(frozen=True)
class Variant:
    name: str
    off: str  # what is switched off, for the table
    overrides: tuple[str, ...]


VARIANTS = (
    Variant("default", "—", ()),
    Variant("no_freq", "9-band DCT/DWT/FFT decomposition", ("model.freq.enabled=false",)),
    Variant("no_cross_band", "cross-band attention + LKA", ("model.cross_band.enabled=false",)),
    Variant("no_cross_expert", "cross-expert attention", ("model.cross_expert.enabled=false",)),
    Variant("no_hierarchical", "hierarchical multi-resolution fusion", ("model.hierarchical.enabled=false",)),
    Variant("no_gating", "per-pixel expert gating (plain mean as the base)", ("model.gating.enabled=false",)),
    Variant("no_edge", "Laplacian edge enhancement", ("model.edge.enabled=false",)),
    Variant(
        "no_refine_edge",
        "refinement CNN + edge enhancement (+ Hessian, which feeds them)",
        ("model.refine.enabled=false", "model.edge.enabled=false", "model.hessian.enabled=false"),
    ),
    Variant("no_fourier_unit", "Fourier-unit branch", ("model.fourier_unit.enabled=false",)),
    Variant("no_hessian", "Hessian detail attention", ("model.hessian.enabled=false",)),
    Variant(
        "gating_only",
        "every residual branch (hierarchical, refine, edge, Hessian, LR residual)",
        (
            "model.hierarchical.enabled=false",
            "model.refine.enabled=false",
            "model.edge.enabled=false",
            "model.hessian.enabled=false",
            "model.lr_residual.enabled=false",
        ),
    ),
)


def _read_rows(run: Path) -> list[tuple[int, str, float]]:
    with open(run / "metrics.csv", newline="") as fh:
        return [(int(r[0]), r[1], float(r[2])) for r in list(csv.reader(fh))[1:]]


def final_scores(run: Path, steps: int) -> dict | None:
    """The validation row of the last step (``None`` while the run is unfinished)."""
    if not (run / "metrics.csv").is_file():
        return None
    last = {tag: v for s, tag, v in _read_rows(run) if s == steps and tag.startswith("val/")}
    if "val/psnr" not in last:
        return None
    experts = {
        t.removeprefix("val/expert_"): v
        for t, v in last.items()
        if t.startswith("val/expert_") and t != "val/expert_mean"
    }
    best = max(experts, key=experts.get)
    params = sum(p.numel() for p in load_pretrained(resolve_checkpoint(run, which="last")).parameters())
    return {
        "psnr": last["val/psnr"],
        "ssim": last["val/ssim"],
        "params": params,
        "best_expert": best,
        "best_expert_psnr": experts[best],
        "mean_psnr": last["val/expert_mean"],
    }


def format_table(results: dict[str, dict], variants: tuple[Variant, ...], *, steps: int, val: str) -> str:
    ref = results.get("default")
    lines = [
        "| variant | switched off | parameters | PSNR-Y / SSIM-Y | Δ vs default | Δ vs best expert |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        r = results.get(v.name)
        if r is None:
            continue
        d_ref = f"{r['psnr'] - ref['psnr']:+.4f}" if ref is not None and v.name != "default" else "—"
        lines.append(
            f"| {v.name} | {v.off} | {r['params']:,} | {r['psnr']:.4f} / {r['ssim']:.4f} | {d_ref} | "
            f"{r['psnr'] - r['best_expert_psnr']:+.4f} ({r['best_expert']}) |"
        )
    any_r = next(iter(results.values()))
    lines.append(
        f"\n{steps} steps each, scored with the final EMA weights on {val} (best expert "
        f"{any_r['best_expert']} {any_r['best_expert_psnr']:.3f} dB, plain mean {any_r['mean_psnr']:.3f} dB)."
    )
    return "\n".join(lines)
