"""Training (layer 4): the run config, losses, EMA, the loop pieces shared by train.py and
scripts/train_expert.py, checkpoints of a run, patch/live datasets, the expert-training config and zoo recipe."""
