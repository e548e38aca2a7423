"""What an expert is, as written in ``configs/experts/*.yaml``: frozen dataclasses, validated strictly.

An expert YAML has one top-level list, ``experts:``; each item is an :class:`ExpertSpec`::

    scale: 4                      # the ensemble's SR factor (LR → SR)
    experts:
      - name: craft               # unique; also the output folder name and the target of `input: expert:<name>`
        checkpoint: ../shared/weights/craft_x4.pth   # relative to the repo root (or to an explicit root)
        architecture: CRAFT       # spandrel's architecture id, asserted after detection
        scale: 4                  # the model's own scale, asserted after loading (1 for an HR-space restorer)
        hooks: []                 # module names to capture; empty = the architecture's default (experts/hooks.py)
        input: lr                 # lr | bicubic | expert:<name>
        precision: fp32           # fp32 | bf16 | fp16 (fp16 only where spandrel says the architecture supports it)
        device: cpu               # cpu | cuda | cuda:N
        tile: 0                   # LR tile side in pixels; 0 = run whole images
        tile_overlap: 32          # LR pixels shared by neighbouring tiles

Relative checkpoint paths are resolved against the repository root (the folder holding ``experts/``), never
against the current directory, so a config means the same thing wherever a command is started; pass an explicit
``root`` to :func:`resolve_checkpoint` (CLI: ``--root``) to resolve them elsewhere. Absolute paths are kept.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.core.config import ConfigError, NonNegInt, PosInt, load_config

__all__ = [
    "REPO_ROOT",
    "EnsembleSpec",
    "ExpertSpec",
    "Precision",
    "input_source",
    "load_ensemble_spec",
    "resolve_checkpoint",
    "with_devices",
]

REPO_ROOT = Path(__file__).resolve().parents[1]

Precision = Literal["fp32", "bf16", "fp16"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_EXPERT_INPUT_PREFIX = "expert:"


@dataclass(frozen=True)
class ExpertSpec:
    """One frozen pretrained expert. See the module docstring for the meaning of each field."""

    name: str
    checkpoint: str
    architecture: str
    scale: PosInt
    hooks: tuple[str, ...] = ()
    input: str = "lr"
    precision: Precision = "fp32"
    device: str = "cpu"
    tile: NonNegInt = 0
    tile_overlap: NonNegInt = 32
    # Take the state dict from this top-level key of the checkpoint (e.g. ``params_ema``); None = spandrel's
    # canonical unwrapping (model_state_dict, state_dict, params_ema, params, model, net).
    checkpoint_key: str | None = None
    # Pin the checkpoint's sha256 (hex); a different file is an error. None = record it without checking.
    sha256: str | None = None
    # Hyper-parameters that spandrel must detect (compared with the model's ``hyperparameters``), e.g.
    # ``{embed_dim: 180, window_size: 16}``. Lists and tuples compare equal.
    expect: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))

    def __post_init__(self) -> None:
        where = f"expert {self.name!r}"
        if not _NAME_RE.match(self.name):
            raise ConfigError(f"{where}: name must match {_NAME_RE.pattern} (it becomes a folder name)")
        if not self.checkpoint:
            raise ConfigError(f"{where}: checkpoint path is empty")
        if self.scale < 1:
            raise ConfigError(f"{where}: scale must be >= 1, got {self.scale}")
        if self.input not in ("lr", "bicubic") and not self.input.startswith(_EXPERT_INPUT_PREFIX):
            raise ConfigError(f"{where}: input must be 'lr', 'bicubic' or 'expert:<name>', got {self.input!r}")
        if self.input.startswith(_EXPERT_INPUT_PREFIX):
            source = self.input[len(_EXPERT_INPUT_PREFIX) :]
            if not _NAME_RE.match(source):
                raise ConfigError(f"{where}: input {self.input!r} does not name an expert")
            if source == self.name:
                raise ConfigError(f"{where}: an expert cannot take its own output as input")
        if any(not h for h in self.hooks):
            raise ConfigError(f"{where}: hook layer names must be non-empty")
        if self.tile < 0 or self.tile_overlap < 0:
            raise ConfigError(f"{where}: tile and tile_overlap must be >= 0")
        if self.tile and self.tile_overlap >= self.tile:
            raise ConfigError(f"{where}: tile_overlap ({self.tile_overlap}) must be smaller than tile ({self.tile})")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ConfigError(f"{where}: sha256 must be 64 lowercase hex digits")
        if not isinstance(self.expect, types.MappingProxyType):
            object.__setattr__(self, "expect", types.MappingProxyType(dict(self.expect)))


@dataclass(frozen=True)
class EnsembleSpec:
    """The experts of one ensemble, in output order, and the ensemble's SR factor."""

    experts: tuple[ExpertSpec, ...]
    scale: PosInt = 4

    def __post_init__(self) -> None:
        if not self.experts:
            raise ConfigError("an ensemble needs at least one expert")
        names = [e.name for e in self.experts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"expert names must be unique; repeated: {dupes}")
        for e in self.experts:
            source = input_source(e)
            if source is not None and source not in names:
                raise ConfigError(f"expert {e.name!r}: input {e.input!r} names no expert of this ensemble {names}")
            if e.input == "lr" and e.scale != self.scale:
                raise ConfigError(
                    f"expert {e.name!r}: input 'lr' needs a x{self.scale} model (the ensemble's scale), "
                    f"but the spec says scale {e.scale}; HR-space restorers use input 'bicubic' or 'expert:<name>'"
                )
            if e.input != "lr" and e.scale != 1:
                raise ConfigError(
                    f"expert {e.name!r}: input {e.input!r} is already at SR resolution, so the model must be x1; "
                    f"the spec says scale {e.scale}"
                )

    def by_name(self, name: str) -> ExpertSpec:
        for e in self.experts:
            if e.name == name:
                return e
        raise KeyError(f"no expert named {name!r}; experts: {[e.name for e in self.experts]}")


def with_devices(spec: EnsembleSpec, devices: Mapping[str, str]) -> EnsembleSpec:
    """A copy of ``spec`` with the device map ``{expert name: device}`` applied (unnamed experts keep theirs)."""
    names = [e.name for e in spec.experts]
    unknown = sorted(set(devices) - set(names))
    if unknown:
        raise ConfigError(f"device map names unknown expert(s) {unknown}; experts: {names}")
    experts = tuple(dataclasses.replace(e, device=devices.get(e.name, e.device)) for e in spec.experts)
    return dataclasses.replace(spec, experts=experts)


def input_source(spec: ExpertSpec) -> str | None:
    """The expert whose SR output ``spec`` takes as input (``input: expert:<name>``), else None."""
    if spec.input.startswith(_EXPERT_INPUT_PREFIX):
        return spec.input[len(_EXPERT_INPUT_PREFIX) :]
    return None


def load_ensemble_spec(path: str | os.PathLike, overrides: Sequence[str] = ()) -> EnsembleSpec:
    """Read and validate an expert YAML (``configs/experts/*.yaml``); unknown keys and wrong types are errors."""
    return load_config(EnsembleSpec, path, overrides)


def resolve_checkpoint(spec: ExpertSpec, root: str | os.PathLike | None = None) -> Path:
    """The checkpoint path of ``spec``: absolute paths as they are, relative ones against ``root`` (default: the
    repository root, :data:`REPO_ROOT`)."""
    p = Path(spec.checkpoint).expanduser()
    if not p.is_absolute():
        p = Path(root if root is not None else REPO_ROOT) / p
    return Path(os.path.normpath(p))  # drop the `..` of ../shared/... (symlinks are not resolved)
