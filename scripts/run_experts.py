"""Run every expert of an expert YAML on a folder of LR images.

The code: :mod:`pipeline.commands.run_experts` (also ``sr-fusion run-experts``); ``--help`` describes it."""

import sys

from pipeline.commands.run_experts import main

if __name__ == "__main__":
    sys.exit(main())
