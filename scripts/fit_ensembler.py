"""Fit a training-free ensembler on a training cache that holds HR (pipeline/inference/ensemblers.py) → a small JSON
file.

The code: :mod:`pipeline.commands.fit_ensembler` (also ``sr-fusion fit``); ``--help`` describes it."""

import sys

from pipeline.commands.fit_ensembler import main

if __name__ == "__main__":
    sys.exit(main())
