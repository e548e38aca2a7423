"""Make ×s LR images from HR images with the MATLAB-compatible bicubic (antialiased) downscale.

The code: :mod:`pipeline.commands.make_lr` (also ``sr-fusion make-lr``); ``--help`` describes it."""

import sys

from pipeline.commands.make_lr import main

if __name__ == "__main__":
    sys.exit(main())
