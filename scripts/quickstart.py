"""The whole pipeline end to end on real photos, on a CPU, in minutes: experts → HDF5 cache → fusion fine-tuning →
challenge submission → official scoring → HTML report.

The code: :mod:`pipeline.commands.quickstart` (also ``sr-fusion quickstart``); ``--help`` describes it."""

import sys

from pipeline.commands.quickstart import main

if __name__ == "__main__":
    sys.exit(main())
