"""What several commands share, defined once: the expert-output store's flags (experts/store.py) and the report of a
cache's verification."""

from __future__ import annotations

import argparse
from pathlib import Path

from cache.extract import verify
from experts.store import DEFAULT_MAX_GB, ENV_VAR, ExpertStore, default_store_dir

__all__ = ["add_store_arguments", "store_from_args", "verify_cache"]


def add_store_arguments(ap: argparse.ArgumentParser) -> None:
    """``--store DIR``, ``--store-max-gb GB`` and ``--no-store``."""
    group = ap.add_argument_group("expert-output store (each expert's output computed once, reused by every command)")
    group.add_argument(
        "--store",
        type=Path,
        default=None,
        help=f"its folder (default: ${ENV_VAR} or ~/.cache/sr-fusion/expert-outputs; `sr-fusion store` prunes it)",
    )
    group.add_argument(
        "--store-max-gb",
        type=float,
        default=DEFAULT_MAX_GB,
        help="least recently used outputs are deleted beyond this size",
    )
    group.add_argument("--no-store", action="store_true", help="run every expert live, store nothing")


def store_from_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> ExpertStore | None:
    """The store the flags ask for (None with ``--no-store``); a usage error for contradictory flags."""
    if args.no_store:
        if args.store is not None:
            ap.error("--store and --no-store exclude each other")
        return None
    if args.store_max_gb <= 0:
        ap.error(f"--store-max-gb {args.store_max_gb}: a size in GB > 0")
    return ExpertStore(args.store or default_store_dir(), max_bytes=int(args.store_max_gb * 1e9))


def verify_cache(path: Path) -> int:
    """Re-read every sample of the cache at ``path`` against its checksums, print one line per problem → exit status."""
    reader, problems, seconds = verify(path)
    print(f"verify: {len(reader)} images in {path}, {len(problems)} problem(s), {seconds:.1f} s")
    for p in problems:
        print(f"verify: {p}")
    if reader.skipped:
        print(
            f"verify: {len(reader.skipped)} input(s) were skipped at extraction: "
            + "; ".join(f"{s['name']}: {s['reason']}" for s in reader.skipped)
        )
    return 1 if problems else 0
