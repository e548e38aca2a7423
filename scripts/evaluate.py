"""Score SR results exactly as the NTIRE ×4 organisers do.

The code: :mod:`pipeline.commands.evaluate` (also ``sr-fusion evaluate``); ``--help`` describes it."""

import sys

from pipeline.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
