"""Merge several caches of the same experts into one training cache (hard links; no expert runs).

The code: :mod:`pipeline.commands.merge_caches` (also ``sr-fusion merge-caches``); ``--help`` describes it."""

import sys

from pipeline.commands.merge_caches import main

if __name__ == "__main__":
    sys.exit(main())
