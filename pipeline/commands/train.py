"""Train the fusion network: ``sr-fusion train CONFIG [dotted.overrides ...] [--resume runs/NAME]``.

The command line over pipeline/training/fusion.py (data, model, validation, the training loop shared with expert
training: pipeline/training/loop.py).

* ``data.mode=cached`` (default) reads random aligned crops from the HDF5 cache (sr-fusion extract);
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
* Losses by stage (``train.stages``, pipeline/training/losses.py TERMS): L1, Charbonnier, Y-MSE (``mse_y``, the
  scored channel), per-sample PSNR-Y (``psnr_y``: the challenge's average of PSNR over images), FFT, stationary
  wavelet, SSIM, Sobel, gate load-balancing, gate supervision by the per-pixel oracle expert, VGG19 perceptual from a
  local weight file. ``configs/fusion.yaml`` holds the default network; ``scripts/research/count_params.py CONFIG``
  prints its parameter count per phase.
* One process trains a run at a time (``runs/NAME/.lock``). ``--resume`` refuses a changed config except where and
  how often it runs (``train.threads``, ``train.device``, ``train.log_every``, ``train.val_every``,
  ``train.ckpt_every``, ``data.num_workers``, ...): a run begun on one machine goes on on another.
* CONFIG may be a bundled run config's name (``sr-fusion list``); its paths are relative to the current folder (a
  run's caches and runs are work products of that folder), and ``data.experts`` / ``train.init_from`` may also be
  bundled names.
* ``torchrun --nproc_per_node N train.py ...``: DistributedDataParallel (NCCL on GPUs, gloo on CPU); each rank takes
  ``data.batch_size`` crops per step (effective batch N × batch_size); only rank 0 validates, logs and saves.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from pipeline.commands.run_args import add_run_arguments, run_arguments
from pipeline.core import bundled
from pipeline.core.cli import command_parser, run_cli
from pipeline.training.config import check_run_inputs, legacy_run_overrides, load_run_config
from pipeline.training.fusion import train
from pipeline.training.runs import execute_run


def parser() -> argparse.ArgumentParser:
    ap = command_parser("train", __doc__)
    add_run_arguments(ap, example="configs/train/fusion_zoo_small.yaml, or a bundled name: fusion_zoo_small")
    return ap


def train_run(
    config: str | os.PathLike | None, overrides: Sequence[str] = (), *, resume: Path | None = None
) -> tuple[dict, Path]:
    """``sr-fusion train CONFIG OVERRIDES [--resume RUN]``: a run config (a path or a bundled name) with dotted
    overrides, trained to its end → (summary, run directory)."""
    if config is not None:
        config = str(bundled.resolve(config, "train", flag="CONFIG"))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    summary, run_dir = execute_run(
        prog="train",
        config=config,
        overrides=overrides,
        resume=resume,
        load=load_run_config,
        check=check_run_inputs,
        train=lambda cfg, run_dir: train(cfg, run_dir, resume=resume is not None),
        write=rank0,
        legacy=legacy_run_overrides,
    )
    if rank0:
        print(f"train: done at step {summary['step']}; run directory {run_dir}")
    return summary, run_dir


def _main(argv: list[str] | None = None) -> int:
    args = run_arguments(parser(), argv)
    train_run(args.config, args.overrides, resume=args.resume)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``sr-fusion train`` with the toolkit's error handling: input and config errors are one line and exit status 2."""
    return run_cli("train", _main, argv)
