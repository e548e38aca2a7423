"""Train or fine-tune one x4 SR expert (the bundled zoo's recipe).

The code: :mod:`pipeline.commands.train_expert` (also ``sr-fusion train-expert``); ``--help`` describes it."""

import sys

from pipeline.commands.train_expert import main

if __name__ == "__main__":
    sys.exit(main())
