"""Run the frozen experts once and cache their SR outputs + hooked features in HDF5 (layout: cache/schema.py).

The code: :mod:`pipeline.commands.extract_features` (also ``sr-fusion extract``); ``--help`` describes it."""

import sys

from pipeline.commands.extract_features import main

if __name__ == "__main__":
    sys.exit(main())
