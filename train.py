"""Train the fusion network: ``python train.py CONFIG [dotted.overrides ...] [--resume runs/NAME]``.

The code: :mod:`pipeline.commands.train` (also ``sr-fusion train``); ``--help`` describes it."""

import sys

from pipeline.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
