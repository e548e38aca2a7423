"""Export a trained run as an NTIRE 2025 ImageSR ×4 code submission (the layout of the organisers' repository).

The code: :mod:`pipeline.commands.export_ntire` (also ``sr-fusion export``); ``--help`` describes it."""

import sys

from pipeline.commands.export_ntire import main

if __name__ == "__main__":
    sys.exit(main())
