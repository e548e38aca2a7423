"""docs/CLI.md, generated from the commands' own parsers: each ``sr-fusion`` subcommand's ``--help`` (its module's
docstring, usage and options), so the reference cannot drift from the code. Never edit docs/CLI.md by hand:

    python scripts/write_cli_docs.py            # rewrite docs/CLI.md
    python scripts/write_cli_docs.py --check    # exit 1 when docs/CLI.md is stale (tests/test_package.py checks it)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.app import COMMANDS, module
from pipeline.core.atomic import atomic_write_text
from pipeline.core.cli import PROG, run_cli

__all__ = ["HEADER", "main", "render"]

HEADER = f"""# Command-line reference

Generated from the commands' parsers by `python scripts/write_cli_docs.py` (pipeline/commands/cli_docs.py): do not
edit by hand. Every program is a subcommand of `{PROG}` (installed with the package; in a checkout also the thin file
named under each heading, run with `.venv/bin/python`). Every command checks all of its inputs and outputs before
any work (one line per bad file, all of them in one run, exit status 2), never replaces a file it did not write, and
holds a lock on its output folder while it writes. A bundled file can be named instead of given by path
(`{PROG} list`). `--debug` (any subcommand) shows the traceback of an input or config error instead of one line.

Research tools and benchmarks (`scripts/research/`, `scripts/bench/`): docs/TOOLS.md.
"""


def render() -> str:
    """The text of docs/CLI.md."""
    parts = [HEADER]
    for name, command in COMMANDS.items():
        shim = f" (`{command.shim}`)" if command.shim else ""
        help_text = module(name).parser().format_help().rstrip()
        parts.append(f"## `{PROG} {name}`{shim} — {command.summary}\n\n```text\n{help_text}\n```\n")
    return "\n".join(parts)


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="write_cli_docs.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "CLI.md")
    ap.add_argument("--check", action="store_true", help="only compare: exit 1 when the file differs")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is stale: run python scripts/write_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("write_cli_docs", _main, argv)
