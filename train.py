"""Fusion training entry point: ``python train.py CONFIG [dotted.overrides ...]``.

Not implemented yet: cached/live training with EMA, checkpoints and resume is the training issue. This file exits
with an error rather than pretending to train.
"""

import sys

if __name__ == "__main__":
    print("train.py: training is not implemented yet (see the 'train.py: cached and live training' issue).", file=sys.stderr)
    sys.exit(2)
