"""One top-level error handler for every command-line entry point.

    def main(argv=None) -> int:
        return run_cli("submit", _main, argv)

:func:`run_cli` strips a ``--debug`` flag from ``argv``, calls the real ``main`` and turns the library's typed errors
(:class:`pipeline.core.errors.ToolkitError`) into one line on stderr — ``prog: message`` — and exit status 2. With
``--debug`` (or ``SR_FUSION_DEBUG=1``) the traceback is shown instead. Any other exception is a bug and keeps its
traceback — except an ``OSError`` for a full disk or quota (``ENOSPC``/``EDQUOT``): that is the machine's state, not a
bug, so it is one line and status 2 too. A ``KeyboardInterrupt`` is one line and status 130. A
:class:`pipeline.core.errors.BadInputsError` prints one line per bad input, then its summary.

:func:`command_parser` makes a subcommand's parser (``sr-fusion NAME`` in its usage, the command module's docstring
as its description). :func:`run_program` runs a command-line program file (a script, ``train.py``) in this process
exactly as ``python FILE ARGS`` would, and returns its exit status: how tests run the real command lines without
anything importing a script as a module.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.core.errors import BadInputsError, ToolkitError, is_disk_full, shorten

__all__ = [
    "DEBUG_FLAG",
    "LINE_LIMIT",
    "PROG",
    "call_main",
    "command_parser",
    "one_line",
    "run_cli",
    "run_program",
]

DEBUG_FLAG = "--debug"
LINE_LIMIT = 4000  # the most characters of one error line: the library caps what it echoes, this is the backstop


PROG = "sr-fusion"  # the console command; every program is one of its subcommands (pipeline/app.py)
HELP_WIDTH = 120  # columns of --help and of docs/CLI.md, whatever the terminal


def command_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of the subcommand ``name``: its usage says ``sr-fusion NAME`` however it is started (the
    console command, a thin file of scripts/, or a test), ``doc`` (the command module's docstring) is the description,
    kept as written, and the help is ``HELP_WIDTH`` columns wide."""
    return argparse.ArgumentParser(
        prog=f"{PROG} {name}",
        description=doc,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=HELP_WIDTH),
    )


def one_line(exc: BaseException | str, limit: int = LINE_LIMIT) -> str:
    """The exception's message on one line (newlines folded), never empty, at most ``limit`` characters (and a note
    of the full length)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return shorten(text, limit, quote=False)


def run_cli(prog: str, main: Callable[[list[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a :class:`ToolkitError` becomes ``prog: message`` on stderr and status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args or os.environ.get("SR_FUSION_DEBUG") == "1"
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        return main(args)
    except ToolkitError as exc:
        if debug:
            raise
        if isinstance(exc, BadInputsError):
            for problem in exc.problems:
                print(f"{prog}: {one_line(problem)}", file=sys.stderr)
            print(f"{prog}: {one_line(exc.summary)}", file=sys.stderr)
        else:
            print(f"{prog}: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk where no writer named it (the writers raise DiskFullError themselves)
        if debug or not is_disk_full(exc):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{prog}: {one_line(exc.strerror or exc)}{where}: free some space and rerun", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def run_program(path: str | os.PathLike, argv: Sequence[str]) -> int:
    """Run the program file ``path`` (it ends in ``sys.exit(main())``) with ``argv`` in this process, as
    ``python path argv...`` would, → its exit status. ``sys.argv`` is restored afterwards; an exception the program
    does not handle (e.g. a typed error under ``--debug``) propagates."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"program not found: {path}")

    def run(_: list[str]) -> int:
        runpy.run_path(str(path), run_name="__main__")
        return 0  # a program that ends without sys.exit

    saved = sys.argv
    sys.argv = [str(path), *argv]
    try:
        return call_main(run, argv)
    finally:
        sys.argv = saved


def call_main(main: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """``main(argv)`` → its exit status, as the interpreter would report it: a ``SystemExit`` (argparse's ``--help`` and
    usage errors, ``sys.exit(...)``) becomes its code; an exception it does not handle propagates."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"): the interpreter prints it and exits with 1
    return 1
