"""The schema of a training run (``python train.py CONFIG [dotted.overrides ...]``).

A run config has four sections — ``model`` (:class:`pipeline.model.fusion_config.FusionConfig`), ``data``, ``train`` and
``loss`` — validated strictly like every config (unknown keys and wrong types are errors). The resolved config is
saved as ``runs/<name>/config.yaml``.

Effective batch and learning rate under ``torchrun --nproc_per_node N``: every rank takes ``data.batch_size`` crops
per step, so the effective batch is ``N × data.batch_size``; ``train.lr`` is used as given (scale it yourself, e.g.
linearly with N, if you change N).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pipeline.core import bundled
from pipeline.core.config import ConfigError, NonNegFloat, NonNegInt, PosInt, Range, UnitFloat, load_config
from pipeline.core.names import check_folder_name
from pipeline.model.fusion_config import FusionConfig
from pipeline.model.io import LEGACY_INPUTS
from pipeline.training.losses import LossWeights

__all__ = [
    "DataConfig",
    "LoopConfig",
    "StageConfig",
    "TrainConfig",
    "LossConfig",
    "SubmissionConfig",
    "RunConfig",
    "check_run_inputs",
    "load_run_config",
]


Beta = Annotated[float, Range(ge=0, lt=1)]  # Adam betas, EMA decay


@dataclass(frozen=True)
class DataConfig:
    mode: Literal["cached", "live"] = "cached"
    train_cache: str = "caches/train.h5"  # cached mode: HDF5 cache from scripts/extract_features.py
    val_cache: str | None = None  # full-image validation cache (fusion vs each expert vs their mean)
    experts: str | None = None  # expert YAML: needed in live mode; in cached mode, optional fingerprint check
    train_hr: str | None = None  # live mode: HR image folder (LR made on the fly with the MATLAB bicubic)
    patch: Annotated[int, Range(ge=8)] = 48  # LR patch side (HR/SR patches are scale × patch)
    batch_size: PosInt = 16  # per process
    skip_small: bool = False  # leave out training images whose LR is smaller than the patch (else an error)
    # train on only this many of the cache's images (a fixed, nested subset: cache.dataset.image_subset) — learning
    # curves; fit the blend the fusion starts from on the same subset (fit_ensembler.py --images N)
    images: PosInt | None = None
    repeat: PosInt = 1
    num_workers: NonNegInt = 2  # loader processes (cache/batch_loader.py; 0 = read in the training process)
    augment: bool = True
    # RAM the loader's processes may hold decoded training images in, all together (GiB; each of num_workers gets an
    # equal part): an image is read whole once and kept while it fits, the rest are cropped from their files. Crops
    # are the same whatever the budget.
    ram_budget_gb: Annotated[float, Range(ge=0, le=4096)] = 4.0


@dataclass(frozen=True)
class StageConfig:
    """Loss weights used while ``step < until_step`` (stages are ordered; the last one runs to the end)."""

    name: str = "pixel"
    until_step: PosInt = 1_000_000_000
    weights: LossWeights = field(default_factory=LossWeights)


@dataclass(frozen=True)
class LoopConfig:
    """What the training loop both trainers share (pipeline/training/loop.py) reads: the run's name, the optimiser
    and schedule, EMA, logging / validation / checkpoint cadence, NaN guard, device. Each trainer's ``train`` section
    is this plus its own keys (and its own defaults)."""

    name: str = "run"  # run directory: runs_dir/name
    runs_dir: str = "runs"
    steps: PosInt = 20_000
    lr: NonNegFloat = 2e-4  # 0 freezes the weights (e.g. to check a fine-tuning set-up)
    min_lr_ratio: UnitFloat = 0.01  # cosine decays to lr × min_lr_ratio
    warmup_steps: NonNegInt = 500
    weight_decay: NonNegFloat = 1e-4
    betas: tuple[Beta, Beta] = (0.9, 0.99)
    grad_clip: NonNegFloat = 1.0  # max gradient norm (0 = off)
    ema_decay: Beta = 0.999
    ema_warmup: bool = False  # effective decay min(decay, (1+n)/(10+n)): short runs are not dominated by the init
    seed: NonNegInt = 0
    log_every: PosInt = 50
    val_every: PosInt = 1000
    ckpt_every: PosInt = 1000
    keep_best: NonNegInt = 3  # keep the K best checkpoints by validation PSNR (plus last)
    max_nonfinite: PosInt = 20  # consecutive NaN/Inf steps before aborting (a checkpoint is saved first)
    bf16: bool = True  # bf16 autocast on CUDA (CPU always trains in fp32)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: NonNegInt = 0  # torch CPU threads in the main process (0 = leave torch's default)

    def __post_init__(self) -> None:
        check_folder_name(self.name, "train.name")  # the run's folder: runs_dir/name, never outside runs_dir


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    name: str = "fusion"
    stages: tuple[StageConfig, ...] = (StageConfig(),)
    # fine-tune: start from these weights (a checkpoint dir or a run dir → its best checkpoint); the model config and
    # the experts (names + sha256) must be the checkpoint's. Ignored by --resume (the run's own state wins).
    init_from: str | None = None
    # torch.compile the fusion network for training (falls back to eager, saying so in one line, if compiling fails)
    compile: bool = False
    channels_last: bool = False  # the network's weights and 4-D inputs in channels-last memory format (GPU speed)


@dataclass(frozen=True)
class LossConfig:
    vgg_weights: str | None = None  # local torchvision vgg19 state dict, needed if any stage weights `perceptual`


@dataclass(frozen=True)
class SubmissionConfig:
    """What the challenge's readme.txt declares (scripts/submit.py copies it from the checkpoint)."""

    extra_data: bool = False  # trained on data beyond the challenge's training set (DIV2K/LSDIR for NTIRE)?
    description: str = ""  # appended to the generated method description


@dataclass(frozen=True)
class RunConfig:
    model: FusionConfig = field(default_factory=FusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)


def legacy_run_overrides(saved: Mapping[str, Any]) -> list[str]:
    """The dotted overrides that give a run's saved, resolved ``config.yaml`` the behaviour it was trained with for keys
    added after it was written: a resolved config lacks a key only because it predates it, and for
    ``model.inputs`` the absent key means what every older run did (:data:`pipeline.model.io.LEGACY_INPUTS`: hooked
    features, float SR), never today's default. Used by ``train.py --resume`` (without a config file)."""
    model = saved.get("model")
    inputs = model.get("inputs") if isinstance(model, Mapping) else None
    if not isinstance(inputs, Mapping):
        return []
    text = {True: "true", False: "false"}
    return [
        f"model.inputs.{k}={text.get(v, v) if isinstance(v, bool) else v}"
        for k, v in LEGACY_INPUTS.items()
        if k not in inputs
    ]


def load_run_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> RunConfig:
    """A run config; ``data.experts`` and ``train.init_from`` may also be bundled names (``zoo_small``,
    ``fusion_zoo_small``: pipeline/core/bundled.py), replaced by their paths. Other paths are relative to the current
    folder (a run's work products: caches, runs)."""
    cfg = load_config(RunConfig, path, overrides)
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, experts=_bundled_name(cfg.data.experts, "experts")),
        train=dataclasses.replace(cfg.train, init_from=_bundled_name(cfg.train.init_from, "run")),
    )
    t, d = cfg.train, cfg.data
    if t.steps < 1 or t.warmup_steps < 0 or t.warmup_steps > t.steps:
        raise ConfigError(f"train: need steps >= 1 and 0 <= warmup_steps <= steps, got {t.steps}/{t.warmup_steps}")
    if not t.stages:
        raise ConfigError("train.stages: at least one stage is needed")
    bounds = [s.until_step for s in t.stages]
    if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
        raise ConfigError(f"train.stages: until_step must increase strictly, got {bounds}")
    if d.patch < 8 or d.batch_size < 1:
        raise ConfigError(f"data: patch must be >= 8 and batch_size >= 1, got {d.patch}/{d.batch_size}")
    if d.mode == "live" and (d.experts is None or d.train_hr is None):
        raise ConfigError("data.mode=live needs data.experts (expert YAML) and data.train_hr (HR folder)")
    if any(s.weights.perceptual for s in t.stages) and cfg.loss.vgg_weights is None:
        raise ConfigError("a stage weights the perceptual loss: set loss.vgg_weights to a local vgg19 state dict")
    if cfg.model.set_gate.members > 1:
        raise ConfigError(
            f"model.set_gate.members={cfg.model.set_gate.members}: members are trained one by one (train.seed = 0, "
            "1, …) and stacked afterwards with `sr-fusion stack-gates`; train with members=1"
        )
    return cfg


def _bundled_name(value: str | None, kind: str) -> str | None:
    """A bundled name that is no path here → its path; anything else as it is (the input checks name what is
    missing)."""
    if value is None or Path(value).exists():
        return value
    found = bundled.find(kind, value)
    return value if found is None else str(found)


def check_run_inputs(cfg: RunConfig) -> None:
    """Every input a run reads exists and is what it should be — checked before the run directory is made: the
    caches open as caches (index readable, schema current), the expert YAML, HR folder, ``init_from`` checkpoint and
    VGG weights exist. A problem is a :class:`ConfigError` naming the key and the path."""
    from cache.reader import CacheReader
    from pipeline.core.errors import ToolkitError
    from pipeline.model.io import resolve_checkpoint

    d = cfg.data

    def cache(key: str, path: str) -> None:
        try:
            CacheReader(path)
        except (ToolkitError, OSError) as exc:
            raise ConfigError(f"{key}={path}: {' '.join(str(exc).split())}") from None

    if d.mode == "cached":
        cache("data.train_cache", d.train_cache)
    if d.val_cache is not None:
        cache("data.val_cache", d.val_cache)
    if d.experts is not None and not Path(d.experts).is_file():
        raise ConfigError(f"data.experts={d.experts}: expert YAML not found")
    if d.mode == "live" and not Path(d.train_hr).is_dir():
        raise ConfigError(f"data.train_hr={d.train_hr}: HR image folder not found")
    if cfg.loss.vgg_weights is not None and not Path(cfg.loss.vgg_weights).is_file():
        raise ConfigError(f"loss.vgg_weights={cfg.loss.vgg_weights}: file not found")
    if cfg.train.init_from is not None:
        try:
            resolve_checkpoint(cfg.train.init_from, which="best")
        except FileNotFoundError as exc:
            raise ConfigError(f"train.init_from={cfg.train.init_from}: {exc}") from None
