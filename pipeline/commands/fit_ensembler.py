"""Fit a training-free ensembler on a training cache that holds HR (pipeline/inference/ensemblers/) → a small JSON
file.

    sr-fusion fit caches/train.h5 --method mean|zzpm|blend|topk|blend_reg|ensir --out fits/X.json [--bin-width 32]

The file records the experts' fingerprints: ``sr-fusion submit --method`` and ``sr-fusion compare`` refuse it for other
experts. Fit on training images only (e.g. the T91 + BSD200 cache), never on the set that will be scored.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.core.cli import command_parser, run_cli
from pipeline.core.outputs import check_output_file
from pipeline.evaluation.cached import fit_on_cache
from pipeline.inference.ensemblers import ENSIR_BIN_WIDTH, METHODS, describe, load, save


def _ours(path: Path) -> bool:
    try:
        load(path)
    except Exception:  # noqa: BLE001 - anything unreadable as an ensembler file is not ours to replace
        return False
    return True


def parser() -> argparse.ArgumentParser:
    ap = command_parser("fit", __doc__)
    ap.add_argument("cache", type=Path, help="training cache with HR (sr-fusion extract --hr ...)")
    ap.add_argument("--method", required=True, choices=list(METHODS))
    ap.add_argument("--out", required=True, type=Path, help="the ensembler file (JSON)")
    ap.add_argument(
        "--bin-width",
        type=int,
        default=ENSIR_BIN_WIDTH,
        help="EnsIR: intensity bin width on 0-255 (the LUT has (256/width)^E rows: 128 for 9-15 experts)",
    )
    ap.add_argument(
        "--images", type=int, default=None, help="fit on this many of the cache's images (the data.images subset)"
    )
    return ap


def _main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_output_file(args.out, ours=_ours, create_parents=True, label="--out")
    t0 = time.time()
    ens = fit_on_cache(args.method, args.cache, bin_width=args.bin_width, images=args.images)
    save(ens, args.out)
    print(
        f"fit_ensembler: {args.method} for experts {list(ens.expert_names)} fitted on {args.cache} in "
        f"{time.time() - t0:.1f} s: {describe(ens)} → {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("fit_ensembler", _main, argv)
