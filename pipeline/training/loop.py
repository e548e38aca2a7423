"""The training loop shared by the fusion network (pipeline/training/fusion.py, ``sr-fusion train``) and expert
training (pipeline/training/expert/, ``sr-fusion train-expert``): :class:`TrainLoop` — learning-rate schedule, the
caller's step, NaN guard and abort, EMA, logging, validation, checkpoints (``best`` follows validation PSNR), exact
state save/restore for ``--resume``.

Its parts: ``steps`` (device, the step-keyed batch sampler, the schedule, the NaN guard), ``scalar_log`` (metrics.csv
and TensorBoard), ``runs`` (the run folder: creation, lock, resume checks, :func:`~pipeline.training.runs.execute_run`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from pipeline.training.checkpoint import prune_checkpoints
from pipeline.training.config import LoopConfig
from pipeline.training.ema import ModelEma
from pipeline.training.runs import RunError
from pipeline.training.scalar_log import ScalarLog
from pipeline.training.steps import count_nonfinite, scheduled_lr

__all__ = ["StepResult", "TrainLoop", "Validation"]


@dataclass(frozen=True)
class StepResult:
    """What the trainer's step function returns for one batch."""

    loss: torch.Tensor  # the step's total loss (logged as train/loss)
    ok: bool  # whether the optimiser step was taken (guarded_step: False for a non-finite loss or gradient)
    scalars: Callable[[], dict[str, float]] = dict  # extra scalars, computed only on logging steps


@dataclass(frozen=True)
class Validation:
    """What the trainer's validation returns: the PSNR that ``best`` follows, and anything its ``save`` records."""

    psnr: float
    data: Any = None


@dataclass
class TrainLoop:
    """The training loop of both trainers (the fusion network and one SR expert).

    Per step: set the learning rate (:func:`scheduled_lr` of ``train``), run the caller's
    ``step(batch, step) → StepResult`` (forward, loss, :func:`guarded_step`), count non-finite steps
    (``max_nonfinite`` in a row: save a checkpoint and raise :class:`RunError`), update the EMA after a taken step,
    log ``train/loss``, ``train/lr``, ``train/steps_per_s``, ``train/nonfinite_total`` and the step's extra scalars
    every ``log_every`` steps, validate every ``val_every`` steps, and checkpoint every ``ckpt_every`` steps, at the
    end and after each validation (``best`` = highest validation PSNR; without validation, the latest). The caller's
    ``save(step, validation, is_best)`` writes the checkpoint (with :meth:`state` as its train state); the loop
    prunes old ones. Only rank 0 logs and saves (``log`` is None elsewhere). :meth:`state` / :meth:`restore` are the
    exact train state (weights, EMA, optimiser, CPU RNG, counters) that makes ``--resume`` bit-identical on the CPU.
    """

    prog: str
    model: torch.nn.Module  # the unwrapped model (not the DDP wrapper): its state dict is what is saved
    ema: ModelEma
    optimizer: torch.optim.Optimizer
    train: LoopConfig  # the run's train section: schedule, cadence, NaN limit, checkpoints kept
    ckpt_root: Path
    log: ScalarLog | None
    rank: int = 0
    world: int = 1
    counters: dict[str, Any] = field(
        default_factory=lambda: {"nonfinite_total": 0, "nonfinite_run": 0, "best_psnr": -math.inf}
    )

    def restore(self, state: dict) -> None:
        """Continue from a train state written by :meth:`state` (weights, EMA, optimiser, RNG, counters)."""
        self.model.load_state_dict(state["model"], strict=True)
        self.ema.load_state_dict(state["ema"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        self.counters.update({k: state["counters"][k] for k in self.counters})

    def state(self, step: int, extra: dict) -> dict:
        """The train state of ``step``; ``extra`` (the data signature, the config) is stored beside it."""
        return {
            "step": step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "counters": dict(self.counters),
            **extra,
        }

    def run(
        self,
        loader: Iterable[dict],
        *,
        start_step: int,
        step: Callable[[dict, int], StepResult],
        validate: Callable[[int], Validation] | None,
        save: Callable[[int, Validation | None, bool], None],
    ) -> int:
        """Train over ``loader`` (one batch per step, from ``start_step``) → the final step."""
        sch = self.train
        bar = tqdm(
            total=sch.steps, initial=start_step, desc=self.prog, unit="step", disable=self.rank != 0, dynamic_ncols=True
        )
        t_last, steps_since = time.time(), 0
        s = start_step
        for batch in loader:
            lr_now = scheduled_lr(s, sch)
            for g in self.optimizer.param_groups:
                g["lr"] = lr_now
            result = step(batch, s)
            in_a_row = count_nonfinite(self.counters, result.ok)
            if result.ok:
                self.ema.update(self.model)
            else:
                if self.rank == 0:
                    tqdm.write(
                        f"{self.prog}: step {s}: non-finite loss or gradient, step skipped ({in_a_row} in a row, "
                        f"{self.counters['nonfinite_total']} in total)"
                    )
                if in_a_row >= sch.max_nonfinite:
                    self._checkpoint(s, None, save, validated=validate is not None)
                    raise RunError(
                        f"{in_a_row} non-finite steps in a row at step {s}: aborting "
                        f"(checkpoint saved to {self.ckpt_root / 'last'}); lower train.lr or check the data"
                    )
            s += 1
            steps_since += 1
            bar.update(1)
            if self.log is not None and (s % sch.log_every == 0 or s == sch.steps):
                now = time.time()
                scalars = {
                    "train/loss": float(result.loss.detach()),
                    "train/lr": lr_now,
                    "train/steps_per_s": steps_since / (now - t_last),
                    "train/nonfinite_total": self.counters["nonfinite_total"],
                }
                scalars.update(result.scalars())
                self.log.log(s, scalars)
                bar.set_postfix(loss=f"{float(result.loss.detach()):.4f}", lr=f"{lr_now:.2e}")
                t_last, steps_since = now, 0
            val = None
            if validate is not None and (s % sch.val_every == 0 or s == sch.steps):
                val = validate(s)
            if self.world > 1:
                dist.barrier()
            if s % sch.ckpt_every == 0 or s == sch.steps or val is not None:
                self._checkpoint(s, val, save, validated=validate is not None)
        bar.close()
        return s

    def _checkpoint(
        self,
        step: int,
        val: Validation | None,
        save: Callable[[int, Validation | None, bool], None],
        *,
        validated: bool,
    ) -> None:
        if self.rank != 0:
            return
        is_best = val is not None and val.psnr > self.counters["best_psnr"]
        if is_best:
            self.counters["best_psnr"] = val.psnr
        save(step, val, is_best or not validated)  # without validation, "best" is the latest
        prune_checkpoints(self.ckpt_root, keep_best=self.train.keep_best)
