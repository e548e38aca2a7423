"""Stack independently trained set gates into one checkpoint that averages them (a deep ensemble of gates).

    sr-fusion stack-gates runs/pool_s0 runs/pool_s1 runs/pool_s2 runs/pool_s3 --out checkpoints/fusion_esr_pool

Each source is a run (its ``ckpt/last``) or a checkpoint of one set gate; all must share the model configuration and
the experts (train them with the same recipe and ``train.seed=0,1,…``). ``--out`` must be new or an empty folder; the
result is an ordinary checkpoint (``model.set_gate.members`` = the number of sources) with its checksums.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core.cli import command_parser, run_cli
from pipeline.model.members import stack_gates


def parser() -> argparse.ArgumentParser:
    ap = command_parser("stack-gates", __doc__)
    ap.add_argument("sources", type=Path, nargs="+", help="runs or checkpoints of one set gate each (two or more)")
    ap.add_argument("--out", required=True, type=Path, help="the stacked checkpoint's folder (new or empty)")
    return ap


def _main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    model, out = stack_gates(args.sources, args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"stack_gates: {len(args.sources)} gates ({params:,} parameters) → {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("stack_gates", _main, argv)
