"""The fusion against every ensemble a team could submit instead: one table, two regimes (no TTA / ×8 per expert).

The code: :mod:`pipeline.commands.compare_ensembles` (also ``sr-fusion compare``); ``--help`` describes it."""

import sys

from pipeline.commands.compare_ensembles import main

if __name__ == "__main__":
    sys.exit(main())
