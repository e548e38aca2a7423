"""Training checkpoints of a run: ``runs/<name>/ckpt/``.

Each checkpoint is a directory ``step_XXXXXXXX/`` holding

* ``model.safetensors`` + ``config.json`` — the **EMA** weights and everything needed to rebuild the model
  (fusion network: :func:`pipeline.model.io.save_pretrained`, ``extra`` carries expert fingerprints, cache schema,
  step, metrics; single expert, ``scripts/train_expert.py``: :func:`experts.zoo.save_expert`). Both formats keep
  the metrics in ``config.json``'s ``extra`` mapping (``extra.val_psnr`` ranks the checkpoints);
* ``SHA256SUMS`` — sha256 of ``model.safetensors`` and ``config.json`` (verified by scripts/submit.py);
* ``train_state.pt`` — raw weights, optimiser, scheduler, EMA, step, RNG state, counters; plain tensors and
  containers only, loaded with ``torch.load(..., weights_only=True)``.

``last`` and ``best`` are symbolic links to checkpoint directories. A checkpoint is written completely into a
temporary directory, fsynced and renamed into place, and only then does a link swap (``os.replace`` of a symlink,
atomic) publish it — so a kill at any moment leaves ``last`` pointing at a complete checkpoint. The K best
checkpoints by validation PSNR are kept, plus ``last``; older ones are deleted.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.core.atomic import atomic_write_bytes, atomic_write_text
from pipeline.core.errors import ToolkitError, disk_full, is_disk_full
from pipeline.core.safe_load import load_failure
from pipeline.model.fusion_net import FusionNet
from pipeline.model.io import (
    CHECKSUMS,
    COMPLETE_MARKER,
    TRAIN_STATE,
    CheckpointNotFoundError,
    ChecksumError,
    resolve_checkpoint,
    save_pretrained,
    verify_checksums,
    write_checksums,
)

__all__ = [
    "TRAIN_STATE",
    "CHECKSUMS",
    "ChecksumError",
    "save_checkpoint",
    "save_model_checkpoint",
    "load_train_state",
    "resolve_checkpoint",
    "prune_checkpoints",
    "remove_stale_temps",
    "TrainStateError",
    "CheckpointNotFoundError",
    "write_checksums",
    "verify_checksums",
]


class TrainStateError(ToolkitError, RuntimeError):
    """A checkpoint's ``train_state.pt`` is missing or cannot be read safely."""


def _fsync_tree(path: Path) -> None:
    for p in path.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link(ckpt_root: Path, name: str, target: Path) -> None:
    tmp = ckpt_root / f".{name}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, ckpt_root / name)


def save_checkpoint(
    ckpt_root: str | os.PathLike,
    *,
    step: int,
    ema_model: FusionNet,
    train_state: Mapping[str, Any],
    extra: Mapping[str, Any],
    is_best: bool = False,
) -> Path:
    """Write ``step_XXXXXXXX/`` of the fusion network atomically, then point ``last`` (and ``best`` if ``is_best``)
    at it."""
    return save_model_checkpoint(
        ckpt_root,
        step=step,
        write_model=lambda directory: save_pretrained(ema_model, directory, extra=dict(extra, step=step)),
        train_state=train_state,
        is_best=is_best,
    )


def save_model_checkpoint(
    ckpt_root: str | os.PathLike,
    *,
    step: int,
    write_model: Callable[[Path], object],
    train_state: Mapping[str, Any],
    is_best: bool = False,
) -> Path:
    """:func:`save_checkpoint` for any model: ``write_model(directory)`` writes ``model.safetensors`` and
    ``config.json`` into the (temporary) checkpoint directory; checksums, the train state, the completion marker, the
    atomic rename and the ``last``/``best`` links are done here."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        write_model(tmp)
        write_checksums(tmp)  # submit.py refuses a checkpoint whose weights or config were modified afterwards
        buf = io.BytesIO()  # torch.save into a file reports a full disk without its errno: write the bytes ourselves
        torch.save(dict(train_state), buf)
        atomic_write_bytes(tmp / TRAIN_STATE, buf.getvalue(), what="the training state")
        atomic_write_text(tmp / COMPLETE_MARKER, json.dumps({"step": step}), what="the completion marker")
        _fsync_tree(tmp)
    except BaseException as exc:  # a half-written checkpoint folder goes at once (a rerun would delete it anyway)
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc) and not isinstance(exc, ToolkitError):
            raise disk_full(final, f"the step {step} checkpoint", exc) from None
        raise
    if final.exists():  # re-saving the same step (e.g. abort right after a periodic save)
        old = root / f".old_step_{step:08d}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _link(root, "last", final)
    if is_best:
        _link(root, "best", final)
    return final


def load_train_state(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """The train state of a checkpoint, loaded with ``weights_only=True`` (never executes pickled code). A missing,
    truncated, tampered or foreign file is a :class:`TrainStateError` naming it."""
    path = Path(ckpt_dir) / TRAIN_STATE
    if not path.is_file():
        raise TrainStateError(f"training state not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types; all mean "not a train state"
        raise TrainStateError(
            f"{path}: not a readable training state ({load_failure(exc)}); "
            "resume from an earlier checkpoint or start a new run"
        ) from None
    if not isinstance(state, dict) or "step" not in state:
        raise TrainStateError(f"{path}: not a training state of this toolkit (no 'step' entry)")
    return state


def prune_checkpoints(ckpt_root: str | os.PathLike, *, keep_best: int) -> list[Path]:
    """Delete checkpoint directories that are neither ``last``, ``best`` nor among the ``keep_best`` highest
    validation PSNRs (``extra.val_psnr``); unfinished temporary directories are removed too. Returns deleted dirs."""
    root = Path(ckpt_root)
    keep = {(root / n).resolve() for n in ("last", "best") if (root / n).is_symlink()}
    scored = []
    for d in root.glob("step_*"):
        try:
            psnr = json.loads((d / "config.json").read_text(encoding="utf-8"))["extra"].get("val_psnr")
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is simply not kept for its score
            psnr = None
        if psnr is not None:
            scored.append((float(psnr), d.resolve()))
    keep |= {d for _, d in sorted(scored, reverse=True)[: max(keep_best, 0)]}
    removed = []
    for d in root.glob("step_*"):
        if d.resolve() not in keep:
            shutil.rmtree(d)
            removed.append(d)
    remove_stale_temps(root)
    return removed


def remove_stale_temps(ckpt_root: str | os.PathLike) -> None:
    """Delete what a killed trainer left in ``ckpt/``: unfinished ``.tmp_step_*`` / ``.old_step_*`` directories and
    ``.last.tmp-PID`` / ``.best.tmp-PID`` links. Only the run's one trainer (it holds the run lock) calls this."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return
    for d in [*root.glob(".tmp_step_*"), *root.glob(".old_step_*")]:
        shutil.rmtree(d, ignore_errors=True)
    for link in [*root.glob(".last.tmp-*"), *root.glob(".best.tmp-*")]:
        if link.is_symlink() or link.is_file():
            link.unlink(missing_ok=True)
