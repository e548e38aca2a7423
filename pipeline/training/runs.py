"""A training run's folder: created for a new run (refused when it already holds one), locked for one process,
resumed only with the config it was trained with (every difference named, :data:`RESUME_MAY_CHANGE` excepted), removed
again when a new run fails before its first checkpoint; :func:`execute_run` does all of it around a trainer."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core.config import ConfigError, apply_overrides, config_to_dict, load_yaml, save_config
from pipeline.core.errors import ToolkitError
from pipeline.core.locks import FileLock, LockedError

__all__ = [
    "RESUME_MAY_CHANGE",
    "RunError",
    "config_differences",
    "execute_run",
    "prepare_run",
    "release_run",
]

C = TypeVar("C")


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


def execute_run(
    *,
    prog: str,
    config: str | os.PathLike | None,
    overrides: Sequence[str],
    resume: Path | None,
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
        config=config,
        overrides=overrides,
        resume=resume,
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
