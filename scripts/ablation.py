"""Ablation of the fusion network: the default and each phase switched off, same data and budget, one table.

    python scripts/ablation.py CONFIG --val-cache caches/bsd100.h5 [--steps 750] [--runs-dir runs/ablation] \\
        [--only default,no_gating] [dotted.overrides ...]

Every variant is ``train.py CONFIG`` with the same overrides plus its own ``model.*.enabled=false`` switches, the
same seed, steps and data; validation only at the last step, on ``--val-cache`` (a full-image cache made by
scripts/extract_features.py — the issue's table is on BSD100), so no checkpoint is *selected* on the evaluation set:
each variant is scored with its final EMA weights. Finished variants are not retrained and an interrupted one
resumes from its last checkpoint: rerun the same command. Writes ``RUNS_DIR/ablation.json`` and prints a Markdown
table: parameters, PSNR-Y/SSIM-Y, Δ against the default and against the best single expert.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import train as train_mod
from pipeline.core.cli import run_cli
from pipeline.model.io import load_pretrained, resolve_checkpoint

__all__ = ["VARIANTS", "Variant", "final_scores", "format_table", "main", "run_variant"]


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


def run_variant(v: Variant, *, config: str, runs_dir: Path, steps: int, val_cache: str, overrides: list[str]) -> dict:
    run = runs_dir / v.name
    done = final_scores(run, steps)
    if done is not None:
        print(f"ablation: {v.name}: finished earlier ({done['psnr']:.3f} dB)")
        return done
    common = [
        f"train.runs_dir={runs_dir}",
        f"train.name={v.name}",
        f"train.steps={steps}",
        f"train.val_every={steps}",
        f"data.val_cache={val_cache}",
    ]
    # a checkpoint every 250 steps unless the overrides say otherwise (they come after it, so they win)
    argv = [config, f"train.ckpt_every={min(250, steps)}", *overrides, *common, *v.overrides]
    if (run / "ckpt").exists():
        argv += ["--resume", str(run)]
    print(f"ablation: {v.name}: train.py {' '.join(argv)}", flush=True)
    if train_mod.main(argv) != 0:
        raise SystemExit(f"ablation: training {v.name} failed")
    done = final_scores(run, steps)
    if done is None:
        raise SystemExit(f"ablation: {run} has no validation at step {steps}")
    return done


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


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "config", help="train config of the default network (e.g. configs/train/fusion_craft_ditn_span.yaml)"
    )
    ap.add_argument("overrides", nargs="*", help="dotted overrides applied to every variant")
    ap.add_argument("--val-cache", required=True, help="full-image cache to score on (e.g. caches/bsd100.h5)")
    ap.add_argument("--steps", type=int, default=750)
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--only", default=None, help="comma-separated variant names (default: all)")
    args = ap.parse_intermixed_args(argv)  # dotted overrides may follow the options
    names = [v.name for v in VARIANTS]
    chosen = VARIANTS
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            ap.error(f"unknown variant(s) {unknown}; known: {names}")
        chosen = tuple(v for v in VARIANTS if v.name in wanted)
    if not Path(args.val_cache).exists():
        ap.error(f"--val-cache {args.val_cache} not found (make it with scripts/extract_features.py)")
    results = {
        v.name: run_variant(
            v,
            config=args.config,
            runs_dir=args.runs_dir,
            steps=args.steps,
            val_cache=args.val_cache,
            overrides=list(args.overrides),
        )
        for v in chosen
    }
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    (args.runs_dir / "ablation.json").write_text(
        json.dumps(
            {
                "config": args.config,
                "overrides": args.overrides,
                "steps": args.steps,
                "val_cache": args.val_cache,
                "results": results,
                "switches": {v.name: list(v.overrides) for v in chosen},
            },
            indent=2,
        )
    )
    print(format_table(results, chosen, steps=args.steps, val=args.val_cache))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("ablation", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
