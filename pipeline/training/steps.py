"""The building blocks of a training step, shared by both trainers (pipeline/training/loop.py runs them).

* :func:`pick_device` — a device string (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``) → the device.
* :class:`StepBatchSampler` — the batch of step ``s`` is a pure function of ``s`` (with datasets whose item ``k`` is a
  pure function of ``(seed, k)``, the data stream of a resumed run is the uninterrupted one); :func:`worker_init`.
* :func:`cosine_lr` / :func:`scheduled_lr` — linear warm-up then cosine decay to ``lr × min_lr_ratio``.
* :func:`guarded_step` / :func:`count_nonfinite` — the NaN guard: a non-finite loss or gradient norm skips the
  optimiser step (every DDP rank together) and is counted; the loop aborts after too many in a row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from pipeline.training.config import LoopConfig
from pipeline.training.runs import RunError

__all__ = [
    "StepBatchSampler",
    "cosine_lr",
    "count_nonfinite",
    "guarded_step",
    "pick_device",
    "scheduled_lr",
    "worker_init",
]


def pick_device(want: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` when CUDA is available, else the CPU; ``cpu`` / ``cuda`` / ``cuda:N`` as given
    (CUDA on a machine without it is an error)."""
    if want == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(want)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"train.device={want} but CUDA is not available on this machine")
    return dev


class StepBatchSampler(Sampler):
    """Batch of step ``s`` on rank ``r``: items ``(s·world + r)·B … + B − 1`` — a pure function of the step."""

    def __init__(self, *, start_step: int, steps: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.start, self.steps, self.b, self.rank, self.world = start_step, steps, batch_size, rank, world

    def __iter__(self):
        for s in range(self.start, self.steps):
            first = (s * self.world + self.rank) * self.b
            yield list(range(first, first + self.b))

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)


def worker_init(_: int) -> None:
    torch.set_num_threads(1)  # 2-core machines: workers must not oversubscribe the cores the model uses


def cosine_lr(step: int, *, lr: float, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up over ``warmup_steps``, then cosine from ``lr`` down to
    ``lr × min_lr_ratio`` at ``steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def scheduled_lr(step: int, train: LoopConfig) -> float:
    """The learning rate of ``step`` under a run's ``train`` section (:func:`cosine_lr`)."""
    return cosine_lr(
        step, lr=train.lr, steps=train.steps, warmup_steps=train.warmup_steps, min_lr_ratio=train.min_lr_ratio
    )


def guarded_step(
    total: torch.Tensor,
    *,
    parameters: Iterable[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    grad_clip: float,
    world: int = 1,
) -> bool:
    """Backward + gradient clipping (``grad_clip`` = max norm, 0 = off) + optimiser step — unless the loss or the
    gradient norm is NaN/Inf, in which case nothing changes the weights. Under DDP every rank skips together (or the
    gradient all-reduce would hang). Returns whether the step was taken."""
    params = list(parameters)
    optimizer.zero_grad(set_to_none=True)
    finite = torch.isfinite(total.detach()).float()
    if world > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    ok = bool(finite)
    if ok:
        total.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
        ok = bool(torch.isfinite(gnorm))
    if ok:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    return ok


def count_nonfinite(counters: dict[str, Any], ok: bool) -> int:
    """Update ``counters["nonfinite_total"]`` / ``["nonfinite_run"]`` (skipped steps in total / in a row) after a
    step; returns the current run of skipped steps (0 after a good step)."""
    if ok:
        counters["nonfinite_run"] = 0
    else:
        counters["nonfinite_total"] += 1
        counters["nonfinite_run"] += 1
    return counters["nonfinite_run"]
