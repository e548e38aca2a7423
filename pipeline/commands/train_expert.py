"""Train — or fine-tune — one ×4 SR expert of any architecture the expert loader can detect.

    sr-fusion train-expert CONFIG [dotted.overrides ...] [--resume runs/NAME] [--export DIR]
    sr-fusion train-expert --resume runs/NAME --export experts/zoo/NAME     # export a finished run

The command line over pipeline/training/expert/ (trainer.py: model, data and the training loop shared with the
fusion network; validation.py; export.py: the zoo entry and its model card).

* The config (pipeline/training/expert/config.py) names the architecture and its constructor arguments
  (``model: {architecture: HAT, params: {...}}``): the arguments are checked against the class's ``__init__``
  (experts/architectures.py), and before training starts the expert loader must rebuild the model exactly from its
  state dict — so every checkpoint this script writes is a checkpoint ``experts.loading`` accepts.
* ``model.init_from`` fine-tunes from existing weights (a ``.safetensors``/``.pth`` file or a checkpoint / zoo / run
  directory), loaded strictly; a missing file is an error naming it.
* Data: random HR crops from one or more folders, LR made on the fly with the MATLAB-compatible bicubic
  (or read from pre-made LR folders), random flips/rotations (pipeline/training/patch_data.py); item ``k`` of the
  stream is
  a pure function of ``(seed, k)``.
* L1 or Charbonnier loss, AdamW, linear warm-up + cosine decay, optional gradient clipping, EMA of the weights
  (validation, checkpoints and exports use the EMA), the NaN guard of ``sr-fusion train`` (pipeline/training/loop.py).
* Validation: full images of each ``data.val_hr`` set (LR = MATLAB bicubic ×1/4), 8-bit output, PSNR/SSIM on the Y
  channel with a 4-pixel border (NTIRE's formula, pipeline/core/metrics.py), next to bicubic on the same images.
* ``runs/<name>/``: ``config.yaml``, ``metrics.csv`` + ``tb/``, ``ckpt/step_*/`` (``model.safetensors`` — the EMA
  state dict, loadable by ``experts.loading`` — ``config.json`` with architecture + params (experts/zoo.py),
  ``SHA256SUMS``, ``train_state.pt``) with ``last`` / ``best`` links. ``--resume`` continues the run.
* ``--export DIR`` (after training, or with ``--resume`` of a finished run): the final EMA weights as
  ``DIR/model.safetensors`` + ``config.json`` + ``expert.yaml`` (a one-expert YAML pinning sha256 and
  hyper-parameters) + ``MODEL_CARD.md`` (data, steps, validation PSNR measured through the expert loader).
  Resuming is bit-identical on the CPU (on GPUs, kernels and the CUDA RNG are not made deterministic).
* ``model.init_from`` fine-tunes from an export, a run or a weights file; exporting a fine-tuned run writes its whole
  history (the model card lists every stage, ``config.json`` keeps them under ``extra.history``). The bundled
  experts were trained in such stages (configs/experts/zoo_recipe.yaml, run by scripts/reproduce_zoo.sh).
* One process (CPU threads: ``train.threads``, or one GPU); seconds per step of configs:
  scripts/bench/bench_train_expert.py.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.commands.run_args import add_run_arguments, run_arguments
from pipeline.core import bundled
from pipeline.core.cli import command_parser, run_cli
from pipeline.training.expert.config import check_expert_run_inputs, load_expert_run_config
from pipeline.training.expert.export import export_expert
from pipeline.training.expert.trainer import PROG, train
from pipeline.training.runs import RunError, execute_run


def parser() -> argparse.ArgumentParser:
    ap = command_parser("train-expert", __doc__)
    add_run_arguments(ap, example="configs/experts/train/nafnet_sr.yaml, or a bundled name: nafnet_sr")
    ap.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="DIR",
        help="afterwards, write the final EMA weights as a zoo entry DIR (e.g. experts/zoo/NAME)",
    )
    ap.add_argument(
        "--export-which",
        choices=("last", "best"),
        default="last",
        help="checkpoint to export: the final one (default) or the best by validation PSNR",
    )
    ap.add_argument(
        "--export-val",
        nargs="+",
        default=None,
        metavar="HR_DIR",
        help="validation HR folders for the model card (default: the run's data.val_hr)",
    )
    return ap


def _main(argv: list[str] | None = None) -> int:
    args = run_arguments(parser(), argv)
    if args.config is not None:
        args.config = str(bundled.resolve(args.config, "expert-train", flag="CONFIG"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError("runs in one process (no torchrun / DDP): the small experts it trains do not need it")
    summary, run_dir = execute_run(
        prog=PROG,
        config=args.config,
        overrides=args.overrides,
        resume=args.resume,
        load=load_expert_run_config,
        check=check_expert_run_inputs,
        train=lambda cfg, run_dir: train(cfg, run_dir, resume=args.resume is not None),
    )
    print(f"{PROG}: done at step {summary['step']}; run directory {run_dir}")
    if args.export is not None:
        out = export_expert(run_dir, args.export, which=args.export_which, val_hr=args.export_val)
        print(f"{PROG}: exported to {out} ({out / 'MODEL_CARD.md'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _main, argv)
