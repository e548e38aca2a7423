"""HTML report of a trained fusion run on a set of images: the fusion next to every expert, where and how it differs.

The code: :mod:`pipeline.commands.report` (also ``sr-fusion report``); ``--help`` describes it."""

import sys

from pipeline.commands.report import main

if __name__ == "__main__":
    sys.exit(main())
