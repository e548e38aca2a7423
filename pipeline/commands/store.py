"""The expert-output store (experts/store.py): where it is, how big, verify it, prune or clear it.

    sr-fusion store [--store DIR]                   # location, entries, size, bound
    sr-fusion store --verify                        # re-read every entry against its checksums (bad ones deleted)
    sr-fusion store --prune 20                      # least recently used entries out until it holds <= 20 GB
    sr-fusion store --clear                         # every entry out

The store keeps each frozen expert's output for each input it ran on, so ``sr-fusion compare`` (the command that runs
the experts on every transform of every image) computes them once (its ``--no-store`` runs every expert live).
Default folder: ``$SR_FUSION_STORE`` or ``~/.cache/sr-fusion/expert-outputs``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experts.store import ExpertStore, default_store_dir
from pipeline.core.cli import command_parser, run_cli


def parser() -> argparse.ArgumentParser:
    ap = command_parser("store", __doc__)
    ap.add_argument("--store", type=Path, default=None, help="the store's folder (default: see above)")
    action = ap.add_mutually_exclusive_group()
    action.add_argument("--verify", action="store_true", help="check every entry's checksums")
    action.add_argument("--prune", type=float, metavar="GB", help="remove least recently used entries down to GB")
    action.add_argument("--clear", action="store_true", help="remove every entry")
    return ap


def _main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.prune is not None and args.prune < 0:
        ap.error(f"--prune {args.prune}: a size in GB >= 0")
    root = args.store or default_store_dir()
    store = ExpertStore(root, max_bytes=None)
    if args.verify:
        problems = store.verify()
        for p in problems:
            print(f"store: {p}")
        print(f"store: {root}: {len(problems)} bad entr{'y' if len(problems) == 1 else 'ies'} (deleted)")
        return 1 if problems else 0
    if args.prune is not None or args.clear:
        removed = store.prune(0 if args.clear else int(args.prune * 1e9))
        print(f"store: removed {removed.entries} entries ({removed.bytes / 1e9:.2f} GB) from {root}")
    usage = store.usage()
    print(f"store: {root}: {usage.entries} entries, {usage.bytes / 1e9:.2f} GB")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("store", _main, argv)
