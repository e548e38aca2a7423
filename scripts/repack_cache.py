"""Re-pack a cache into a leaner layout (no experts run).

The code: :mod:`pipeline.commands.repack_cache` (also ``sr-fusion repack``); ``--help`` describes it."""

import sys

from pipeline.commands.repack_cache import main

if __name__ == "__main__":
    sys.exit(main())
