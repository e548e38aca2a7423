"""Train the fusion network: ``python train.py CONFIG [dotted.overrides ...] [--resume runs/NAME]``.

The command line over pipeline/training/fusion.py (data, model, validation, the training loop shared with expert
training: pipeline/training/loop.py).

* ``data.mode=cached`` (default) reads random aligned crops from the HDF5 cache (scripts/extract_features.py);
  ``data.mode=live`` runs the frozen experts on every batch instead (slow; for comparison or when no cache exists).
* AdamW, linear warm-up + cosine decay, gradient clipping, EMA of the weights (validation and saved models use the
  EMA), bf16 autocast on CUDA (fp32 on CPU), multi-stage loss schedule (``train.stages``).
* A NaN/Inf loss or gradient skips the step and is counted; ``train.max_nonfinite`` in a row saves a checkpoint and
  aborts.
* ``runs/<name>/``: ``config.yaml`` (resolved), ``ckpt/step_*/`` with ``last``/``best`` links
  (pipeline/training/checkpoint.py), ``metrics.csv`` (every logged scalar), ``tb/`` (TensorBoard).
* ``--resume runs/<name>`` continues exactly (bit-identical on CPU): the data stream is a function of the step, and
  the optimiser, EMA, step and RNG state are restored; a different config or cache is refused, naming what differs.
* ``train.init_from=DIR`` fine-tunes a trained fusion (a checkpoint dir or a run dir's best checkpoint): same network
  config and same experts (names + sha256) as the checkpoint, else an error naming the difference.
* ``torchrun --nproc_per_node N train.py ...``: DistributedDataParallel (NCCL on GPUs, gloo on CPU); each rank takes
  ``data.batch_size`` crops per step (effective batch N × batch_size); only rank 0 validates, logs and saves.
"""

from __future__ import annotations

import argparse
import os

from pipeline.core import bundled
from pipeline.core.cli import program_name, run_cli
from pipeline.training.config import check_run_inputs, legacy_run_overrides, load_run_config
from pipeline.training.fusion import train
from pipeline.training.loop import add_run_arguments, execute_run, run_arguments


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog=program_name("train.py"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_arguments(ap, example="configs/fusion.yaml")
    args = run_arguments(ap, argv)
    if args.config is not None:
        args.config = str(bundled.resolve(args.config, "train", flag="CONFIG"))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    summary, run_dir = execute_run(
        prog="train",
        args=args,
        load=load_run_config,
        check=check_run_inputs,
        train=lambda cfg, run_dir: train(cfg, run_dir, resume=args.resume is not None),
        write=rank0,
        legacy=legacy_run_overrides,
    )
    if rank0:
        print(f"train: done at step {summary['step']}; run directory {run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``train.py`` with the toolkit's error handling: input and config errors are one line and exit status 2."""
    return run_cli("train", _main, argv)
