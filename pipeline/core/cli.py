"""One top-level error handler for every command-line entry point.

    def main(argv=None) -> int:
        return run_cli("submit", _main, argv)

:func:`run_cli` strips a ``--debug`` flag from ``argv``, calls the real ``main`` and turns the library's typed errors
(:class:`pipeline.core.errors.ToolkitError`) into one line on stderr — ``prog: message`` — and exit status 2. With
``--debug`` (or ``SR_FUSION_DEBUG=1``) the traceback is shown instead. Any other exception is a bug and keeps its
traceback. A ``KeyboardInterrupt`` is one line and status 130. A
:class:`pipeline.core.errors.BadInputsError` prints one line per bad input, then its summary.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from pipeline.core.errors import BadInputsError, ToolkitError

__all__ = ["DEBUG_FLAG", "one_line", "run_cli"]

DEBUG_FLAG = "--debug"


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (newlines folded), never empty."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


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
                print(f"{prog}: {problem}", file=sys.stderr)
            print(f"{prog}: {' '.join(exc.summary.split())}", file=sys.stderr)
        else:
            print(f"{prog}: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
