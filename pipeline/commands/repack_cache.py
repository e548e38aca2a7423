"""Re-pack a cache into a leaner layout — no experts run (library: cache/repack.py).

    sr-fusion repack caches/train.h5 caches/train_lean.h5 --features none --sr-dtype uint8 [--verify]

Features ``full`` → ``none`` and SR ``float16`` → ``uint8`` (the same rounding as ``sr-fusion extract
--sr-dtype uint8``), with any ``--compression``. Crash-safe and resumable like extraction: rerun after a kill.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cache.repack import repack
from cache.schema import COMPRESSIONS, EXTRACT_LAYOUT, FEATURE_MODES, SR_DTYPES, CacheLayout
from cache.writer import cache_bytes
from pipeline.commands.common import verify_cache
from pipeline.core.cli import command_parser, run_cli


def parser() -> argparse.ArgumentParser:
    ap = command_parser("repack", __doc__)
    ap.add_argument("src", type=Path, help="the cache index to read")
    ap.add_argument("out", type=Path, help="the new cache index")
    ap.add_argument("--features", choices=FEATURE_MODES, default=EXTRACT_LAYOUT.features)
    ap.add_argument("--sr-dtype", choices=SR_DTYPES, default=EXTRACT_LAYOUT.sr_dtype)
    ap.add_argument("--compression", choices=COMPRESSIONS, default="none")
    ap.add_argument("--overwrite", action="store_true", help="delete an existing (partial) output cache first")
    ap.add_argument("--verify", action="store_true", help="re-read and check every sample of the new cache")
    return ap


def _main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    layout = CacheLayout(features=args.features, sr_dtype=args.sr_dtype)
    new = repack(args.src, args.out, layout=layout, compression=args.compression, overwrite=args.overwrite)
    before, after = cache_bytes(args.src), cache_bytes(args.out)
    print(
        f"repack_cache: {len(new)} images, {layout.describe()} → {args.out}: {after / 1e6:.1f} MB "
        f"({after / before:.1%} of {args.src}, {before / 1e6:.1f} MB)"
    )
    return verify_cache(args.out) if args.verify else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("repack_cache", _main, argv)
