"""What an expert is, as written in ``configs/experts/*.yaml``: frozen dataclasses, validated strictly.

An expert YAML has one top-level list, ``experts:``; each item is an :class:`ExpertSpec`::

    scale: 4                      # the ensemble's SR factor (LR → SR)
    experts:
      - name: craft               # unique; also the output folder name and the target of `input: expert:<name>`
        checkpoint: weights/craft_x4.pth   # relative to this YAML's folder (or absolute)
        architecture: CRAFT       # spandrel's architecture id, asserted after detection
        scale: 4                  # the model's own scale, asserted after loading (1 for an HR-space restorer)
        hooks: []                 # module names to capture; empty = the architecture's default (experts/hooks.py)
        input: lr                 # lr | bicubic | expert:<name>
        precision: fp32           # fp32 | bf16 | fp16 (fp16 only where spandrel says the architecture supports it)
        device: cpu               # cpu | cuda | cuda:N
        tile: 0                   # LR tile side in pixels; 0 = run whole images
        tile_overlap: 32          # LR pixels shared by neighbouring tiles
        min_probe_psnr: 40        # dB: the output on a smooth probe must be this close to its bicubic upscale

**Experts defined by a Python file** (the NTIRE team-code convention, for models spandrel does not know) add a
``code:`` section and an explicit opt-in, because importing the file runs it::

      - name: rlfn
        checkpoint: ntire2024_esr/weights/team00_rlfn.pth
        sha256: 3c9be7b9...          # required for a code expert: the weights are pinned
        scale: 4
        trust_code: true             # required: this expert imports and runs the file below
        code:
          file: ntire2024_esr/models/team00_RLFN.py
          sha256: 2f830c7c...        # required: the code is pinned too
          class_name: RLFN_Prune     # an nn.Module class defined in the file
          kwargs: {}                 # keyword arguments of its constructor
          data_range: 255            # the model is fed RGB in [0, data_range] (1 or 255)
          pad_multiple: 1            # reflect-pad the input at the bottom/right to a multiple of this
          min_size: 15               # smallest side the model runs on (strided pooling); smaller inputs are padded;
                                     # left out: found at load by probing tiny inputs
        checkpoint_key: null         # null = the file's state dict (spandrel's unwrapping); params / params_ema …

``architecture`` is then the class name (it may be left out). A code expert has no default hook layer: with
``hooks: []`` it yields no features (0 channels) — name its layers in ``hooks:`` to cache them.

Relative paths in an expert YAML (``checkpoint``, ``code.file``) are relative to the **YAML's own folder**, never to
the current directory or to where the toolkit is installed: :func:`load_ensemble_spec` makes them absolute, so a YAML
and the weights beside it mean the same thing from any folder (the bundled ``configs/experts/zoo_small.yaml`` names
``../../experts/zoo/hat_s/model.safetensors``). Absolute paths are kept.

What the toolkit *records* (an expert's fingerprint in a cache, a checkpoint or an ensembler file) is relative to the
folder the bundled files lie below (:func:`pipeline.core.bundled.root`: the checkout, or the installed package data)
when it lies inside that folder's parent (:func:`portable_path`), and is read back against it (:func:`recorded_path`):
the bundled fusion's experts are found in a clone anywhere and in an installed wheel.
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

from experts.probe import DEFAULT_MIN_PSNR
from pipeline.core import bundled
from pipeline.core.config import ConfigError, NonNegFloat, NonNegInt, PosInt, load_config
from pipeline.core.errors import shorten
from pipeline.core.names import NAME_RE

__all__ = [
    "CodeSpec",
    "EnsembleSpec",
    "ExpertSpec",
    "Precision",
    "input_source",
    "load_ensemble_spec",
    "portable_path",
    "recorded_path",
    "resolve_expert_checkpoint",
    "resolve_code_file",
    "resolve_path",
    "with_devices",
    "with_paths_from",
    "yaml_folder",
]

Precision = Literal["fp32", "bf16", "fp16"]

_NAME_RE = NAME_RE  # the one rule for names that become folder names (run names follow it too)
_EXPERT_INPUT_PREFIX = "expert:"


_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class CodeSpec:
    """The team file that defines an expert's model (see the module docstring)."""

    file: str  # the Python file, relative to the YAML's folder like ``checkpoint``
    sha256: str  # pin of the file: importing it runs it, so it must be exactly the file that was reviewed
    class_name: str  # the nn.Module class defined in the file
    kwargs: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    data_range: Literal[1, 255] = 1  # the model is fed RGB in [0, data_range]; its output is divided by it
    pad_multiple: PosInt = 1  # reflect-pad the input (bottom/right) to a multiple of this; outputs are cropped back
    # smallest input side the model runs on; smaller inputs are padded up to it (as spandrel). None (left out): found
    # at load by probing tiny inputs (experts/probe.py); 0: any side runs.
    min_size: NonNegInt | None = None

    def __post_init__(self) -> None:
        problems = []  # all of them in one message
        if not self.file:
            problems.append("code.file is empty")
        if not _SHA256_RE.fullmatch(self.sha256):
            problems.append(f"code.sha256 must be 64 lowercase hex digits, got {self.sha256[:80]!r}")
        if not _IDENT_RE.match(self.class_name):
            problems.append(f"code.class_name must be a Python identifier, got {self.class_name[:80]!r}")
        bad = [k for k in self.kwargs if not _IDENT_RE.match(str(k))]
        if bad:
            problems.append(f"code.kwargs: keys must be Python identifiers, got {bad[:5]}")
        if problems:
            raise ConfigError("; ".join(problems))
        if not isinstance(self.kwargs, types.MappingProxyType):
            object.__setattr__(self, "kwargs", types.MappingProxyType(dict(self.kwargs)))


@dataclass(frozen=True)
class ExpertSpec:
    """One frozen pretrained expert. See the module docstring for the meaning of each field."""

    name: str
    checkpoint: str
    scale: PosInt
    # spandrel's architecture id (asserted after detection); for a code expert the class name (default: that)
    architecture: str = ""
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
    # The model is a class in a Python file instead of a spandrel architecture (module docstring).
    code: CodeSpec | None = None
    # Explicit opt-in to import ``code.file``: importing a file runs arbitrary code. Without it a code expert is an
    # error, never imported.
    trust_code: bool = False
    # The least PSNR (dB) of the expert's output on the probe image against the probe's bicubic upscale
    # (experts/probe.py): below it the expert is refused at load, naming the likely cause (a wrong data range, colour
    # order, weights of another form). 0 turns the check off (e.g. seeded random weights in tests).
    min_probe_psnr: NonNegFloat = DEFAULT_MIN_PSNR

    def __post_init__(self) -> None:
        if self.code is not None and not self.architecture:
            object.__setattr__(self, "architecture", self.code.class_name)
        if not isinstance(self.expect, types.MappingProxyType):
            object.__setattr__(self, "expect", types.MappingProxyType(dict(self.expect)))
        problems = self._problems()
        if problems:  # every problem of this expert in one message
            raise ConfigError(f"expert {shorten(self.name)}: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        if self.code is None:
            if not self.architecture:
                problems.append("architecture is required (spandrel's architecture id), or a code: section")
            if self.trust_code:
                problems.append("trust_code is only meaningful with a code: section")
        else:
            if self.architecture != self.code.class_name:
                problems.append(
                    f"architecture {shorten(self.architecture)} differs from code.class_name "
                    f"{self.code.class_name!r} (leave architecture out for a code expert)"
                )
            if self.sha256 is None:
                problems.append("a code expert needs sha256 of its weights (the code is pinned too)")
            if self.expect:
                problems.append("expect: checks spandrel's detection; a code expert has kwargs instead")
        if not _NAME_RE.match(self.name):
            problems.append(f"name must match {_NAME_RE.pattern} (it becomes a folder name)")
        if not self.checkpoint:
            problems.append("checkpoint path is empty")
        if self.scale < 1:
            problems.append(f"scale must be >= 1, got {self.scale}")
        if self.input not in ("lr", "bicubic") and not self.input.startswith(_EXPERT_INPUT_PREFIX):
            problems.append(f"input must be 'lr', 'bicubic' or 'expert:<name>', got {shorten(self.input)}")
        if self.input.startswith(_EXPERT_INPUT_PREFIX):
            source = self.input[len(_EXPERT_INPUT_PREFIX) :]
            if not _NAME_RE.match(source):
                problems.append(f"input {shorten(self.input)} does not name an expert")
            if source == self.name:
                problems.append("an expert cannot take its own output as input")
        if any(not h for h in self.hooks):
            problems.append("hook layer names must be non-empty")
        if self.tile < 0 or self.tile_overlap < 0:
            problems.append("tile and tile_overlap must be >= 0")
        if self.tile and self.tile_overlap >= self.tile:
            problems.append(f"tile_overlap ({self.tile_overlap}) must be smaller than tile ({self.tile})")
        if self.sha256 is not None and not _SHA256_RE.fullmatch(self.sha256):
            problems.append("sha256 must be 64 lowercase hex digits")
        return problems


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
    """Read and validate an expert YAML (``configs/experts/*.yaml``); unknown keys and wrong types are errors. Every
    relative ``checkpoint`` and ``code.file`` is made absolute against the YAML's folder."""
    spec = load_config(EnsembleSpec, path, overrides)
    base = yaml_folder(path)
    return dataclasses.replace(spec, experts=tuple(with_paths_from(e, base) for e in spec.experts))


def yaml_folder(path: str | os.PathLike) -> Path:
    """The folder an expert YAML's relative paths are relative to (absolute)."""
    return Path(path).expanduser().absolute().parent


def with_paths_from(spec: ExpertSpec, base: str | os.PathLike) -> ExpertSpec:
    """``spec`` with its relative ``checkpoint`` and ``code.file`` made absolute against ``base`` (its YAML's
    folder, :func:`yaml_folder`)."""
    code = spec.code
    if code is not None:
        code = dataclasses.replace(code, file=str(resolve_path(code.file, base)))
    return dataclasses.replace(spec, checkpoint=str(resolve_path(spec.checkpoint, base)), code=code)


def resolve_path(path: str, base: str | os.PathLike | None = None) -> Path:
    """``path`` absolute as it is; relative against ``base`` (None: the current folder). ``..`` is folded, symlinks
    are not resolved."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(base if base is not None else Path.cwd()) / p
    return Path(os.path.normpath(p))  # drop the `..` of ../../experts/zoo/... (symlinks are not resolved)


def portable_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """How a file is recorded in what others may copy (checkpoints, caches, exports): relative to ``root`` (default:
    :func:`pipeline.core.bundled.root`, the checkout) when it lies inside the root's parent folder —
    ``experts/zoo/hat_s/model.safetensors``, ``../shared/weights/craft_x4.pth`` — so a clone in any folder resolves it
    (:func:`recorded_path`); other paths stay absolute."""
    base = Path(root if root is not None else bundled.root()).resolve()
    p = Path(os.path.normpath(Path(path).expanduser().absolute()))
    try:
        p.relative_to(base.parent)
    except ValueError:
        return str(p)
    return Path(os.path.relpath(p, base)).as_posix()


def recorded_path(path: str) -> Path:
    """A path the toolkit recorded (:func:`portable_path`) → the file: relative ones against
    :func:`pipeline.core.bundled.root`."""
    return resolve_path(path, bundled.root())


def resolve_expert_checkpoint(spec: ExpertSpec, root: str | os.PathLike | None = None) -> Path:
    """The checkpoint path of ``spec`` (absolute after :func:`load_ensemble_spec`); a relative one (a spec built in
    code) against ``root`` (None: the current folder)."""
    return resolve_path(spec.checkpoint, root)


def resolve_code_file(spec: ExpertSpec, root: str | os.PathLike | None = None) -> Path:
    """The model file of a code expert (resolved like :func:`resolve_expert_checkpoint`)."""
    if spec.code is None:
        raise ValueError(f"expert {spec.name!r} is not defined by a code file")
    return resolve_path(spec.code.file, root)
