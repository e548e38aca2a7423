"""The schema of a single-expert training run (``python scripts/train_expert.py CONFIG [dotted.overrides ...]``).

Three sections, validated strictly like every config (unknown keys and wrong types are errors); the resolved config
is saved as ``runs/<name>/config.yaml``::

    model:                       # the expert: an architecture the expert loader detects, and its constructor args
      architecture: NAFNetSR     # spandrel's (HAT, DAT, SPAN, ...) or the project's own (experts/archs)
      params: {width: 48, num_blocks: 12, upscale: 4}   # checked against the class's __init__ (architectures.py)
      scale: 4
      init_from: null            # fine-tune: a .safetensors/.pth checkpoint, or a checkpoint / zoo / run directory
      init_key: null             # state dict key inside a .pth (e.g. params_ema); null = spandrel's unwrapping
    data:
      train_hr: [../shared/data/train/T91, ../shared/data/train/BSD200]   # one or more HR folders
      train_lr: null             # optional pre-made LR folders, one per HR folder; null = MATLAB bicubic on the fly
      val_hr: [../shared/data/val/Set5/HR]   # validation sets (LR made with the MATLAB bicubic), full images
      patch: 48                  # LR patch side (HR patch = scale × patch)
      ...
    train: {name: ..., steps: ..., lr: ..., loss: l1 | charbonnier, ...}

Relative paths are relative to the current directory (as for ``train.py``). The first ``data.val_hr`` set is the one
``val/psnr`` (and the ``best`` checkpoint) follows.
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from experts.architectures import architecture_class, check_params
from pipeline.core.config import ConfigError, NonNegFloat, NonNegInt, PosInt, Range, load_config
from pipeline.training.config import LoopConfig

__all__ = [
    "ExpertDataConfig",
    "ExpertModelConfig",
    "ExpertRunConfig",
    "ExpertTrainConfig",
    "check_expert_run_inputs",
    "load_expert_run_config",
]


@dataclass(frozen=True)
class ExpertModelConfig:
    architecture: str
    params: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    scale: PosInt = 4
    init_from: str | None = None  # fine-tune from these weights (loaded strictly into the model built from params)
    init_key: str | None = None  # take the state dict from this top-level key of a .pth


@dataclass(frozen=True)
class ExpertDataConfig:
    train_hr: tuple[str, ...] = ()
    train_lr: tuple[str, ...] | None = None
    val_hr: tuple[str, ...] = ()
    patch: Annotated[int, Range(ge=8)] = 48  # LR patch side
    batch_size: PosInt = 16
    num_workers: NonNegInt = 0  # DataLoader worker processes (0 = load in the training process)
    augment: bool = True  # random flips / 90° rotations
    skip_small: bool = False  # leave out (and list) training images smaller than the HR patch instead of failing
    cache_images: bool = False  # keep decoded training images in memory (decode once, not once per crop)


@dataclass(frozen=True)
class ExpertTrainConfig(LoopConfig):
    name: str = "expert"
    lr: NonNegFloat = 5e-4
    steps: PosInt = 10_000
    warmup_steps: NonNegInt = 200
    weight_decay: NonNegFloat = 0.0
    grad_clip: NonNegFloat = 0.0  # max gradient norm (0 = off)
    ema_warmup: bool = True
    keep_best: NonNegInt = 2
    bf16: bool = False  # bf16 autocast on CUDA (the CPU always trains in fp32)
    loss: Literal["l1", "charbonnier"] = "l1"


@dataclass(frozen=True)
class ExpertRunConfig:
    model: ExpertModelConfig
    data: ExpertDataConfig = field(default_factory=ExpertDataConfig)
    train: ExpertTrainConfig = field(default_factory=ExpertTrainConfig)


def load_expert_run_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> ExpertRunConfig:
    """Load and validate a run config; ``model.params`` is checked against the architecture's constructor."""
    cfg = load_config(ExpertRunConfig, path, overrides)
    t, d, m = cfg.train, cfg.data, cfg.model
    if t.steps < 1 or t.warmup_steps < 0 or t.warmup_steps > t.steps:
        raise ConfigError(f"train: need steps >= 1 and 0 <= warmup_steps <= steps, got {t.steps}/{t.warmup_steps}")
    if min(t.log_every, t.val_every, t.ckpt_every) < 1:
        raise ConfigError("train: log_every, val_every and ckpt_every must be >= 1")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if not d.train_hr:
        raise ConfigError("data.train_hr: give at least one HR image folder")
    if d.train_lr is not None and len(d.train_lr) != len(d.train_hr):
        raise ConfigError(
            f"data.train_lr: one LR folder per data.train_hr folder ({len(d.train_hr)}), got {len(d.train_lr)}"
        )
    if d.patch < 8 or d.batch_size < 1:
        raise ConfigError(f"data: patch must be >= 8 and batch_size >= 1, got {d.patch}/{d.batch_size}")
    if m.scale < 1:
        raise ConfigError(f"model.scale must be >= 1, got {m.scale}")
    check_params(architecture_class(m.architecture), m.params)
    return cfg


def check_expert_run_inputs(cfg: ExpertRunConfig) -> None:
    """Every folder and file an expert-training run reads exists — checked before its run directory is made; a
    problem is a :class:`ConfigError` naming the key and the path."""
    d = cfg.data
    for key, folders in (("data.train_hr", d.train_hr), ("data.train_lr", d.train_lr or ()), ("data.val_hr", d.val_hr)):
        for folder in folders:
            if not Path(folder).is_dir():
                raise ConfigError(f"{key}: image folder not found: {folder}")
    if cfg.model.init_from is not None and not Path(cfg.model.init_from).exists():
        raise ConfigError(f"model.init_from={cfg.model.init_from}: no such file or folder")
