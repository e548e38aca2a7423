"""Merge several caches of the same experts into one training cache, without running the experts again.

    sr-fusion merge-caches caches/df2k.h5 caches/lsdir.h5 --out caches/df2k_lsdir.h5 [--overwrite] [--verify]

Each image's file is hard-linked into the new cache (no extra disk; copied across file systems), in the order of the
sources. The caches must hold the same experts (checkpoints' sha256, hooks), scale, LR method, layout and compression,
and no image name twice: anything else is refused before a file is written, naming the caches and what differs.
Resumable like an extraction (rerun after a kill); ``--out`` must be new or a cache (never another file).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cache.merge import merge_caches
from cache.reader import CacheReader
from pipeline.commands.common import verify_cache
from pipeline.core.cli import command_parser, run_cli


def parser() -> argparse.ArgumentParser:
    ap = command_parser("merge-caches", __doc__)
    ap.add_argument("caches", type=Path, nargs="+", help="the cache indexes to merge (two or more), in order")
    ap.add_argument("--out", required=True, type=Path, help="the new cache index")
    ap.add_argument("--overwrite", action="store_true", help="delete an existing (partial) output cache first")
    ap.add_argument("--verify", action="store_true", help="re-read and check every sample of the new cache")
    return ap


def _main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    merged = merge_caches(args.caches, args.out, overwrite=args.overwrite)
    sizes = []
    for c in args.caches:
        r = CacheReader(c)
        sizes.append(f"{c.name} {len(r)}")
        r.close()
    print(f"merge_caches: {len(merged)} images ({', '.join(sizes)}) → {args.out}")
    merged.close()
    return verify_cache(args.out) if args.verify else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("merge_caches", _main, argv)
