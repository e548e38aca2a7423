"""The training skeleton shared by the fusion network (pipeline/training/fusion.py, ``train.py``) and expert training
(pipeline/training/expert/, ``scripts/train_expert.py``), and its building blocks.

* :class:`TrainLoop` — the one loop: learning-rate schedule, the caller's step, NaN guard and abort, EMA, logging,
  validation, checkpoints (``best`` follows validation PSNR), exact state save/restore for ``--resume``.
* :func:`add_run_arguments` / :func:`run_arguments` / :func:`execute_run` — the command line both trainers share
  (``CONFIG [overrides] [--resume RUN]``), the run directory's lock, and a failed new run leaving no folder behind.

* :func:`setup_distributed`, :func:`pick_device` — process group from torchrun's environment, device string → device.
* :class:`StepBatchSampler` — the batch of step ``s`` is a pure function of ``s`` (with datasets whose item ``k`` is a
  pure function of ``(seed, k)``, the data stream of a resumed run is the uninterrupted one).
* :func:`cosine_lr` — linear warm-up then cosine decay to ``lr × min_lr_ratio``.
* :func:`guarded_step` / :func:`count_nonfinite` — the NaN guard: a non-finite loss or gradient norm skips the
  optimiser step (every DDP rank together) and is counted; the caller aborts after too many in a row.
* :class:`ScalarLog` — every logged scalar to ``metrics.csv`` (step, tag, value) and TensorBoard; a resumed run drops
  the rows logged after its checkpoint.
* :func:`config_differences`, :func:`prepare_run` — a new run refuses an existing run directory; ``--resume`` refuses
  a config that differs from the run's saved ``config.yaml`` (naming every difference).
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler
from tqdm import tqdm

from pipeline.core.config import ConfigError, apply_overrides, config_to_dict, load_yaml, save_config
from pipeline.core.distributed import setup_distributed
from pipeline.core.errors import ToolkitError
from pipeline.core.locks import FileLock, LockedError
from pipeline.training.checkpoint import prune_checkpoints
from pipeline.training.config import LoopConfig
from pipeline.training.ema import ModelEma

__all__ = [
    "RunError",
    "ScalarLog",
    "StepBatchSampler",
    "StepResult",
    "TrainLoop",
    "scheduled_lr",
    "Validation",
    "add_run_arguments",
    "execute_run",
    "run_arguments",
    "config_differences",
    "cosine_lr",
    "count_nonfinite",
    "guarded_step",
    "pick_device",
    "prepare_run",
    "release_run",
    "setup_distributed",
    "worker_init",
]

C = TypeVar("C")


# ---------------------------------------------------------------------------------------------------------------------
# processes and devices
# ---------------------------------------------------------------------------------------------------------------------
def pick_device(want: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` when CUDA is available, else the CPU; ``cpu`` / ``cuda`` / ``cuda:N`` as given
    (CUDA on a machine without it is an error)."""
    if want == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(want)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"train.device={want} but CUDA is not available on this machine")
    return dev


# ---------------------------------------------------------------------------------------------------------------------
# data stream
# ---------------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------------
# schedule and the NaN guard
# ---------------------------------------------------------------------------------------------------------------------
def cosine_lr(step: int, *, lr: float, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up over ``warmup_steps``, then cosine from ``lr`` down to
    ``lr × min_lr_ratio`` at ``steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


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


# ---------------------------------------------------------------------------------------------------------------------
# logging
# ---------------------------------------------------------------------------------------------------------------------
class ScalarLog:
    """Every logged scalar goes to ``metrics.csv`` (step, tag, value) and to TensorBoard."""

    def __init__(self, run_dir: Path, *, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.csv_path = run_dir / "metrics.csv"
        if start_step == 0 or not self.csv_path.exists():
            with open(self.csv_path, "w", newline="") as fh:
                csv.writer(fh).writerow(["step", "tag", "value"])
        else:  # resumed: drop rows logged after the checkpoint we resume from
            with open(self.csv_path, newline="") as fh:
                rows = [r for r in csv.reader(fh)]
            keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= start_step]
            with open(self.csv_path, "w", newline="") as fh:
                csv.writer(fh).writerows(keep)
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step if start_step else None)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        with open(self.csv_path, "a", newline="") as fh:
            w = csv.writer(fh)
            for tag, value in scalars.items():
                w.writerow([step, tag, f"{value:.8g}"])
                self.tb.add_scalar(tag, value, step)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


# ---------------------------------------------------------------------------------------------------------------------
# run directories and resume checks
# ---------------------------------------------------------------------------------------------------------------------
def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# what a resumed run may change: none of it alters the weights a step produces (up to the float rounding of another
# device or thread count) or the order of the batches (keyed by step, not by worker)
RESUME_MAY_CHANGE = (
    "train.threads",
    "train.device",
    "train.log_every",
    "train.val_every",
    "train.ckpt_every",
    "data.num_workers",
    "data.ram_budget_gb",
    "train.compile",
    "train.channels_last",
)


def config_differences(saved: dict, current: dict) -> list[str]:
    """Every dotted key whose value differs between two nested dicts, as ``key: run has A, now B``."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: run has {a.get(k)!r}, now {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class RunError(ToolkitError, RuntimeError):
    """A training run cannot start or go on: its directory, config, inputs or data are not what it needs."""


def prepare_run(
    *,
    prog: str,
    config: str | None,
    overrides: Sequence[str],
    resume: Path | None,
    load: Callable[[str | os.PathLike, Sequence[str]], C],
    run_dir_of: Callable[[C], Path],
    write: bool = True,
    check: Callable[[C], None] | None = None,
    legacy: Callable[[Mapping[str, Any]], Sequence[str]] | None = None,
) -> tuple[C, Path]:
    """Resolve the config and the run directory of a training command.

    New run: ``load(config, overrides)``; the run directory (``run_dir_of(cfg)``) must not hold checkpoints yet; it
    is created and the resolved config saved as ``config.yaml`` (``write=False``: neither, for non-zero DDP ranks).
    With ``write``, the run directory is locked for this process (``.lock``; a second trainer of the same run is an
    error) until :func:`release_run` or the process ends.
    ``resume``: the config is the run's ``config.yaml`` (or ``config``) with ``overrides`` applied, and must equal the
    saved one but for :data:`RESUME_MAY_CHANGE` (where and how fast it runs, how often it logs, validates and saves:
    a run started on one machine can go on on another); those changes are printed and saved into ``config.yaml``.
    ``legacy(saved)``: for a resume from the saved config alone, the overrides that restore keys the saved config
    predates with the behaviour the run was trained with (applied before ``overrides`` and to the saved config the
    resumed one is compared with; printed).
    ``check(cfg)`` validates the run's inputs (caches, folders, weights) *before* the run directory is created or
    touched, so a run refused for a config or input error leaves nothing behind.
    Errors are :class:`RunError` (a config or input error names the file and key).
    """
    try:
        if resume is not None:
            saved = resume / "config.yaml"
            if not saved.is_file():
                raise RunError(f"{saved} not found: is {resume} a run directory?")
            saved_dict = load_yaml(saved)
            pre = list(legacy(saved_dict)) if legacy is not None and config is None else []
            if pre:
                print(
                    f"{prog}: {saved} predates {', '.join(pre)}: resuming with what the run was trained with",
                    flush=True,
                )
            cfg = load(config or saved, [*pre, *overrides])
            diffs = config_differences(apply_overrides(saved_dict, pre), config_to_dict(cfg))
            fixed = [d for d in diffs if d.split(":")[0] not in RESUME_MAY_CHANGE]
            if fixed:
                raise RunError(
                    "cannot resume, the config differs from the run's: "
                    + "; ".join(fixed)
                    + f" (only {', '.join(RESUME_MAY_CHANGE)} may change on resume)"
                )
            if check is not None:
                check(cfg)
            if write:
                _lock_run(resume, prog)
                if diffs:
                    print(f"{prog}: resuming with " + "; ".join(diffs), flush=True)
                    save_config(cfg, saved)
            return cfg, resume
        if config is None:
            raise RunError("a config file is required (or --resume RUN_DIR)")
        cfg = load(config, overrides)
        run_dir = run_dir_of(cfg)
        if (run_dir / "ckpt").exists():
            raise RunError(f"{run_dir} already holds a run: use --resume {run_dir} or another train.name=...")
        if check is not None:
            check(cfg)
    except ConfigError as exc:
        raise RunError(f"config error: {exc}") from None
    if write:
        if not run_dir.exists():
            _CREATED.add(run_dir.resolve())
        _lock_run(run_dir, prog)
        save_config(cfg, run_dir / "config.yaml")
    return cfg, run_dir


_LOCKS: dict[Path, FileLock] = {}  # run directory → its held .lock (released, and deleted, by release_run)
_CREATED: set[Path] = set()  # run directories that prepare_run created in this process


def _lock_run(run_dir: Path, prog: str) -> None:
    """One training process per run directory: a second one (a new run of the same name, or ``--resume`` of a run
    that is still training) would interleave checkpoints and logs. The OS drops the lock when the process dies;
    :func:`release_run` deletes the lock file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _LOCKS:
        return
    try:
        _LOCKS[key] = FileLock(run_dir / ".lock").acquire()
    except LockedError as exc:
        raise RunError(
            f"{run_dir} is being trained right now by {exc.holder}: wait for it to finish or stop it first"
        ) from None


def release_run(run_dir: Path, *, discard: bool = False) -> None:
    """Release the lock that :func:`prepare_run` took on ``run_dir`` and delete its ``.lock`` (no-op if this
    process holds none). ``discard``: the run failed before it saved anything — if this process created the
    directory and it holds no checkpoint, it is removed (a refused or crashed new run leaves no half-made run folder
    behind)."""
    key = run_dir.resolve()
    lock = _LOCKS.pop(key, None)
    try:
        saved = run_dir / "ckpt"
        if discard and key in _CREATED and run_dir.is_dir() and not any(saved.glob("step_*")):  # nothing saved
            shutil.rmtree(run_dir, ignore_errors=True)  # still locked while it goes
    finally:
        if lock is not None:
            lock.release()
    _CREATED.discard(key)


# ---------------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------------
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


def scheduled_lr(step: int, train: LoopConfig) -> float:
    """The learning rate of ``step`` under a run's ``train`` section (:func:`cosine_lr`)."""
    return cosine_lr(
        step, lr=train.lr, steps=train.steps, warmup_steps=train.warmup_steps, min_lr_ratio=train.min_lr_ratio
    )


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


# ---------------------------------------------------------------------------------------------------------------------
# the trainers' command line
# ---------------------------------------------------------------------------------------------------------------------
def add_run_arguments(ap, *, example: str) -> None:
    """``CONFIG [dotted.overrides ...] [--resume RUN_DIR]`` on an argparse parser (``example``: a config path)."""
    ap.add_argument("config", nargs="?", help=f"run config YAML (e.g. {example}); optional with --resume")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 data.batch_size=8")
    ap.add_argument("--resume", type=Path, default=None, help="run directory to continue (runs/NAME)")


def run_arguments(ap, argv: Sequence[str] | None):
    """Parse a trainer's command line; dotted overrides may follow the options, and with ``--resume`` the config may
    be left out (then the first positional argument is an override)."""
    args = ap.parse_intermixed_args(argv)
    if args.config is not None and "=" in args.config:  # only overrides were given (with --resume)
        args.overrides.insert(0, args.config)
        args.config = None
    if args.resume is None and args.config is None:
        ap.error("a config file is required (or --resume RUN_DIR)")
    return args


def execute_run(
    *,
    prog: str,
    args,
    load: Callable[[str | os.PathLike, Sequence[str]], C],
    check: Callable[[C], None],
    train: Callable[[C, Path], dict],
    write: bool = True,
    legacy: Callable[[Mapping[str, Any]], Sequence[str]] | None = None,
) -> tuple[dict, Path]:
    """Resolve the config and run directory (:func:`prepare_run`), train, release the run's lock → (summary, run
    directory). A new run that fails before its first checkpoint leaves no folder behind."""
    cfg, run_dir = prepare_run(
        prog=prog,
        config=args.config,
        overrides=args.overrides,
        resume=args.resume,
        load=load,
        run_dir_of=lambda c: Path(c.train.runs_dir) / c.train.name,
        write=write,
        check=check,
        legacy=legacy,
    )
    ok = False
    try:
        summary = train(cfg, run_dir)
        ok = True
    finally:
        release_run(run_dir, discard=not ok)
    return summary, run_dir
