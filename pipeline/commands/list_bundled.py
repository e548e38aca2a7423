"""Every file the toolkit ships, by name, and where it lives.

    sr-fusion list

A command that takes one of these files also takes its name, from any folder: ``sr-fusion submit --run
fusion_zoo_small``, ``sr-fusion run-experts --config zoo_small``, ``sr-fusion extract --experts zoo_small``. A path that
exists always wins over a name. In a checkout the files are the repository's own (configs/, checkpoints/,
experts/zoo/); in an installed wheel, its package data (pipeline/_bundled/, the same folders). Relative paths inside an
expert YAML are relative to the YAML's own folder.
"""

from __future__ import annotations

import argparse

from pipeline.core import bundled
from pipeline.core.cli import command_parser, run_cli

__all__ = ["listing", "main", "parser"]


def listing() -> str:
    """The text ``sr-fusion list`` prints: the root, then each kind's names and paths."""
    root = bundled.root()
    where = "installed package data" if bundled.installed() else "the checkout"
    lines = [f"bundled files in {root} ({where})"]
    for kind, k in bundled.KINDS.items():
        found = bundled.names(kind)
        lines += ["", f"{k.what} [{kind}] — {k.flags}"]
        width = max((len(n) for n in found), default=0)
        lines += [f"  {name:<{width}}  {path}" for name, path in found.items()] or ["  (none)"]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    return command_parser("list", __doc__)


def _main(argv: list[str] | None = None) -> int:
    parser().parse_args(argv)
    print(listing())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("list", _main, argv)
