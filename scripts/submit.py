"""Turn a trained run into an NTIRE ×4 submission: SR PNGs with the input file names, readme.txt, optional zip.

The code: :mod:`pipeline.commands.submit` (also ``sr-fusion submit``); ``--help`` describes it."""

import sys

from pipeline.commands.submit import main

if __name__ == "__main__":
    sys.exit(main())
