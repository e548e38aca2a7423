"""Ablation of the fusion network: the default and each phase switched off, same data and budget, one table.

    python scripts/research/ablation.py CONFIG --val-cache caches/bsd100.h5 [--steps 750] [--runs-dir runs/ablation] \\
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
import json
import sys
from pathlib import Path

from pipeline.core.cli import run_cli, run_program
from pipeline.training.ablation import VARIANTS, Variant, final_scores, format_table

REPO = Path(__file__).resolve().parents[2]


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
    if run_program(REPO / "train.py", argv) != 0:
        raise SystemExit(f"ablation: training {v.name} failed")
    done = final_scores(run, steps)
    if done is None:
        raise SystemExit(f"ablation: {run} has no validation at step {steps}")
    return done


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
