"""Rewrite docs/CLI.md from the commands' parsers (``--check``: exit 1 when it is stale).

The code: :mod:`pipeline.commands.cli_docs`."""

import sys

from pipeline.commands.cli_docs import main

if __name__ == "__main__":
    sys.exit(main())
