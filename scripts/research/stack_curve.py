"""What averaging more independently trained gates buys, on a cached test set (no TTA): every subset of the members
stacked, the mean score per stack size k, and the extrapolated score of an infinite stack.

    python scripts/research/stack_curve.py --cache caches/pool_set5_feat.h5 \\
        --members runs/fusion_esr_pool_s0 runs/fusion_esr_pool_s1 ... [--out results/stack/set5] [--threads 1]

Members are single set gates of one recipe trained with different ``train.seed`` (runs or checkpoints); a subset's
output is the mean of its members' outputs — what ``sr-fusion stack-gates`` would build from them. Per k: the mean
over all subsets of size k (an unbiased estimate of a k-stack's score), the worst and best subset (the luck of the
draw), and the limit L of score(k) = L − c/k fitted through k = 1 and k = K. The whole stack − the members' average
carries a paired bootstrap 95 % interval over the images. ``--out`` writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pipeline.core.atomic import atomic_write_text
from pipeline.core.cli import run_cli
from pipeline.core.outputs import check_table_outputs
from pipeline.evaluation.bootstrap import paired_interval
from pipeline.evaluation.cached import load_fusion, stack_curve


def _is_curve(path: Path) -> bool:
    try:
        return "stack_sizes" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="stack_curve.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cache", required=True, type=Path, help="cache of a test set with HR")
    ap.add_argument("--members", required=True, type=Path, nargs="+", help="2 to 12 runs or checkpoints")
    ap.add_argument("--which", choices=("last", "best"), default="last", help="a run's checkpoint to use")
    ap.add_argument("--out", type=Path, default=None, help="OUT.json and OUT.md are written")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out is not None:
        out_json, out_md = check_table_outputs(args.out, ours=_is_curve)
    members = [load_fusion(path, which=args.which) for path in args.members]
    curve = stack_curve(args.cache, members=members)
    sizes, limit = curve.by_size(), curve.limit()
    k = len(members)
    whole = curve.psnr[tuple(range(k))]
    singles = [sum(curve.psnr[(j,)][i] for j in range(k)) / k for i in range(len(whole))]
    gain = paired_interval(whole, singles)
    lines = [
        f"# {args.cache.name}: stacks of {k} gates ({len(whole)} images, PSNR-Y dB, no TTA)",
        "",
        "| k | mean over subsets | worst subset | best subset | subsets |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {s['k']} | {s['mean']:.4f} | {s['min']:.4f} | {s['max']:.4f} | {s['subsets']} |" for s in sizes),
        "",
        f"members: {', '.join(curve.members)}; singles: "
        + ", ".join(f"{sum(curve.psnr[(j,)]) / len(whole):.4f}" for j in range(k)),
        f"the whole stack − the members' average: {gain.describe()} ({gain.resamples:,} resamples)",
        f"extrapolated infinite stack (score(k) = L − c/k through k = 1 and {k}): {limit:.4f}",
    ]
    md = "\n".join(lines) + "\n"
    if args.out is not None:
        payload = {
            "cache": str(args.cache),
            "members": list(curve.members),
            "stack_sizes": sizes,
            "limit": limit,
            "whole_minus_members_average": gain.to_dict(),
            "per_image_psnr": {"+".join(map(str, s)): v for s, v in curve.psnr.items()},
        }
        atomic_write_text(out_json, json.dumps(payload, indent=1))
        atomic_write_text(out_md, md)
    print(md, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("stack_curve", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
