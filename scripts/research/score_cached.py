"""Score fusion checkpoints and fitted ensemblers on a cached test set, without running the experts (no TTA).

    python scripts/research/score_cached.py --cache caches/pool_set14.h5 --fusion runs/A runs/B [--which last|best] \\
        [--ensemblers fits/pool_blend_reg.json ...] [--held-out-of N] [--heldout-oracle 4 8 16] \\
        [--out results/set14_table] [--threads 2]

Rows (pipeline/evaluation/cached.py): every expert, the mean, ZZPM, every ensembler file given (fitted for the
cache's experts), every fusion (a checkpoint, or a run's ``last`` / ``best`` checkpoint; labelled by its path) and,
per ``--heldout-oracle`` block size, the held-out block oracle (HR in hand: the room a gate could reach at that scale);
mean PSNR-Y / SSIM-Y of the 8-bit output, Δ vs the best expert, images below it. ``--out`` writes OUT.json and OUT.md.
The experts' full ×8 comparison is ``compare_ensembles.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from cache.reader import CacheReader
from pipeline.core.atomic import atomic_write_text
from pipeline.core.cli import run_cli
from pipeline.core.outputs import check_table_outputs
from pipeline.evaluation.cached import load_fusion, score_cached
from pipeline.evaluation.compare import is_table_json, peer_labels, summarise, table_markdown
from pipeline.inference.ensemblers import fit, load


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="score_cached.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cache", required=True, type=Path, help="cache of a test set with HR")
    ap.add_argument("--fusion", type=Path, nargs="*", default=[], help="fusion checkpoints or run directories")
    ap.add_argument("--which", choices=("last", "best"), default="last", help="a run's checkpoint to score")
    ap.add_argument("--ensemblers", type=Path, nargs="*", default=[], help="fitted ensembler files (JSON)")
    ap.add_argument(
        "--held-out-of",
        type=int,
        default=None,
        metavar="N",
        help="a training cache: score only the images a run with data.images=N never saw",
    )
    ap.add_argument(
        "--heldout-oracle",
        type=int,
        nargs="*",
        default=[],
        metavar="B",
        help="a row per block size B: the held-out B×B block oracle (HR in hand; a diagnostic, not a peer)",
    )
    ap.add_argument("--out", type=Path, default=None, help="OUT.json and OUT.md are written")
    ap.add_argument("--title", default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out is not None:
        out_json, out_md = check_table_outputs(args.out, ours=is_table_json)
    reader = CacheReader(args.cache)
    fps = list(reader.meta.experts)
    reader.close()
    peers = [fit("mean", [], experts=fps), fit("zzpm", [], experts=fps)]
    peers += [load(p, experts=fps) for p in args.ensemblers]
    labels = peer_labels(peers, [None, None, *args.ensemblers])
    fusions = [load_fusion(path, which=args.which) for path in args.fusion]
    rows = score_cached(
        args.cache,
        fusions=fusions,
        ensemblers=peers,
        labels=labels,
        held_out_of=args.held_out_of,
        oracle_blocks=args.heldout_oracle,
    )
    summary = summarise(rows)
    title = args.title or args.cache.name
    md = table_markdown(summary, title=f"{title} (no TTA, experts' 8-bit SR from the cache)")
    if args.out is not None:
        payload = {
            "title": title,
            "cache": str(args.cache),
            "rows": summary,
            "per_image_psnr": {r.method: r.psnr for r in rows},
            "fusions": [str(p) for p in args.fusion],
            "which": args.which,
            "ensemblers": [str(p) for p in args.ensemblers],
            "heldout_oracle_blocks": list(args.heldout_oracle),
        }
        atomic_write_text(out_json, json.dumps(payload, indent=1))
        atomic_write_text(out_md, md)
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("score_cached", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
