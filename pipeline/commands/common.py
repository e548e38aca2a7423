"""Flags several commands share, defined once: the expert-output store (experts/store.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from experts.store import DEFAULT_MAX_GB, ENV_VAR, ExpertStore, default_store_dir

__all__ = ["add_store_arguments", "store_from_args"]


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
