"""The command line both trainers share: ``CONFIG [dotted.overrides ...] [--resume RUN_DIR]`` (``sr-fusion train``,
``sr-fusion train-expert``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["add_run_arguments", "run_arguments"]


def add_run_arguments(ap, *, example: str) -> None:
    """``CONFIG [dotted.overrides ...] [--resume RUN_DIR]`` on an argparse parser (``example``: a config path)."""
    ap.add_argument("config", nargs="?", help=f"run config YAML (e.g. {example}); optional with --resume")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 data.batch_size=8")
    ap.add_argument("--resume", type=Path, default=None, help="run directory to continue (runs/NAME)")


def run_arguments(ap, argv: Sequence[str] | None):
    """Parse a trainer's command line; dotted overrides may follow the options, and with ``--resume`` the config may
    be left out (then the first positional argument is an override)."""
    args = ap.parse_intermixed_args(argv)
    if args.config is not None and "=" in args.config:  # only overrides were given (with --resume)
        args.overrides.insert(0, args.config)
        args.config = None
    if args.resume is None and args.config is None:
        ap.error("a config file is required (or --resume RUN_DIR)")
    return args
