"""The bicubic baseline: upscale every LR image with the MATLAB-compatible bicubic.

The code: :mod:`pipeline.commands.bicubic` (also ``sr-fusion bicubic``); ``--help`` describes it."""

import sys

from pipeline.commands.bicubic import main

if __name__ == "__main__":
    sys.exit(main())
