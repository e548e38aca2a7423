"""Checkpoint → spandrel model, safely and strictly; never random weights.

* Only ``.safetensors`` (safetensors) and ``.pth`` (``torch.load(..., weights_only=True)``: PyTorch's restricted
  unpickler, which accepts tensors and plain containers only) are read. Nothing else is ever unpickled.
* The file must hold a state dict: a mapping whose (canonicalised) entries are all tensors. Training checkpoints
  wrapping it under ``params_ema`` / ``params`` / ``state_dict`` / ``model`` … are unwrapped by spandrel's
  ``canonicalize_state_dict``, or from the key the spec names (``checkpoint_key``).
* spandrel detects the architecture from the keys and shapes, builds it and loads the weights with PyTorch's
  ``load_state_dict(strict=True)`` (in ``ModelBase.__init__``): a missing, unexpected or mis-shaped tensor is an
  error (``tests/test_experts_loading.py`` proves it for the real and the tiny checkpoints). Then the detected
  architecture id, scale and the spec's expected hyper-parameters are asserted.
* Detection uses :data:`EXPERT_REGISTRY`: a private copy of spandrel's registry plus the project's own architectures
  (``experts/archs``, e.g. ``NAFNetSR``), which are tried first; spandrel's global ``MAIN_REGISTRY`` is not modified.
  A project architecture is detected and loaded exactly like a spandrel one (hyper-parameters read back from the
  tensor shapes, strict load), so its plain state dicts need no side files.

Every failure is an :class:`ExpertLoadError` whose message starts with the checkpoint path.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from spandrel import (
    MAIN_REGISTRY,
    ArchRegistry,
    ArchSupport,
    ImageModelDescriptor,
    ModelLoader,
    SizeRequirements,
    UnsupportedModelError,
    canonicalize_state_dict,
)
from torch import nn

from experts.archs import ARCHITECTURES
from pipeline.core.errors import ToolkitError, shorten
from pipeline.core.safe_load import load_failure

__all__ = [
    "EXPERT_REGISTRY",
    "ExpertLoadError",
    "LoadedModel",
    "jsonable",
    "load_descriptor",
    "loaded_from_descriptor",
    "read_state_dict",
    "read_state_dict_from",
    "sha256_file",
]


def _expert_registry() -> ArchRegistry:
    registry = MAIN_REGISTRY.copy()  # copy-on-write: adding to the copy leaves spandrel's registry as it is
    spandrel_ids = tuple(support.architecture.id for support in MAIN_REGISTRY)
    registry.add(*(ArchSupport.from_architecture(arch, before=spandrel_ids) for arch in ARCHITECTURES))
    return registry


EXPERT_REGISTRY: ArchRegistry = _expert_registry()
"""spandrel's architectures plus the project's own (``experts.archs.ARCHITECTURES``, detected first)."""


class ExpertLoadError(ToolkitError, ValueError):
    """A checkpoint cannot become a trustworthy expert; the message names the file."""


@dataclass(frozen=True)
class LoadedModel:
    """A strictly loaded SR model and what running it needs — from spandrel's descriptor or from a team's code file
    (``experts/code.py``). ``model`` is fed RGB in ``[0, data_range]`` and returns the same range."""

    model: nn.Module
    architecture: str
    scale: int
    size_requirements: SizeRequirements  # reflect-padding at the bottom/right before the forward
    supports_half: bool
    supports_bfloat16: bool
    tags: tuple[str, ...]
    hyperparameters: Mapping[str, Any]  # JSON-serialisable (spandrel's detected ones, or the code's kwargs)
    data_range: float = 1.0
    code: Mapping[str, Any] | None = None  # a code expert's file, class, kwargs, sha256 … (for its fingerprint)


def loaded_from_descriptor(desc: ImageModelDescriptor) -> LoadedModel:
    return LoadedModel(
        model=desc.model,
        architecture=desc.architecture.id,
        scale=desc.scale,
        size_requirements=desc.size_requirements,
        supports_half=desc.supports_half,
        supports_bfloat16=desc.supports_bfloat16,
        tags=tuple(desc.tags),
        hyperparameters=jsonable(getattr(desc.model, "hyperparameters", {})),
    )


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | Path, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read the state dict of a ``.safetensors`` / ``.pth`` checkpoint on the CPU (see the module docstring)."""
    return read_state_dict_from(path, key=key)[0]


def read_state_dict_from(path: str | Path, *, key: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """:func:`read_state_dict` and where in the file the state dict was found, in words ("entry 'params_ema'
    (unwrapped by itself; the file also holds 'params')"): what a mismatch message reports."""
    p = Path(path)
    if not p.is_file():
        raise ExpertLoadError(f"{p}: checkpoint file not found")
    ext = p.suffix.lower()
    obj: object
    if ext == ".safetensors":
        try:
            obj = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ExpertLoadError(f"{p}: not a readable safetensors file ({exc})") from exc
    elif ext == ".pth":
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # torch's message advises weights_only=False: never passed on
            raise ExpertLoadError(
                f"{p}: refused by the restricted unpickler (weights_only=True): {load_failure(exc)}"
            ) from None
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise ExpertLoadError(f"{p}: not a readable PyTorch checkpoint ({load_failure(exc)})") from None
    else:
        raise ExpertLoadError(f"{p}: unsupported checkpoint type {ext!r}; use .safetensors or .pth")

    if not isinstance(obj, Mapping):
        raise ExpertLoadError(f"{p}: not a state dict (the file holds a {type(obj).__name__}, not a mapping)")
    if key is not None:
        if key not in obj:
            raise ExpertLoadError(
                f"{p}: checkpoint_key {key!r} not in the checkpoint (top-level keys: {sorted(map(str, obj))[:20]})"
            )
        source = f"entry {key!r} (checkpoint_key)"
        obj = obj[key]
        if not isinstance(obj, Mapping):
            raise ExpertLoadError(f"{p}: entry {key!r} is a {type(obj).__name__}, not a state dict")
    else:
        source = _unwrapped_from(obj)
    state = canonicalize_state_dict(dict(obj))
    not_tensors = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ExpertLoadError(
            f"{p}: not a state dict: {len(not_tensors)} entries are not named tensors "
            f"(e.g. {not_tensors[:5]}); name the state dict with `checkpoint_key`"
        )
    if not state:
        raise ExpertLoadError(f"{p}: the state dict is empty")
    return state, source


_UNWRAP_KEYS = ("model_state_dict", "state_dict", "params_ema", "params-ema", "params", "model", "net")  # spandrel's


def _unwrapped_from(obj: Mapping) -> str:
    """Which entry spandrel's ``canonicalize_state_dict`` takes from ``obj`` (the same rules), and the other nested
    mappings the file holds (another candidate for ``checkpoint_key``)."""
    nested = [str(k) for k, v in obj.items() if isinstance(v, Mapping)]
    taken = next((k for k in _UNWRAP_KEYS if isinstance(obj.get(k), Mapping)), None)
    if taken is None and len(obj) == 1 and nested:
        taken = nested[0]
    others = [k for k in nested if k != taken]
    also = f"the file also holds {shorten(others[:6])}" if others else ""
    if taken is not None:
        return f"entry {taken!r} (unwrapped by itself{'; ' + also if also else ''})"
    return f"the top level{' (' + also + ')' if also else ''}"


def load_descriptor(
    path: Path, state: dict[str, torch.Tensor], *, architecture: str, scale: int, expect: Mapping[str, Any]
) -> ImageModelDescriptor:
    """Detect, build and strictly load ``state`` with spandrel; assert architecture id, scale and ``expect``."""
    try:
        # a copy: some loaders add flag entries to the dict they get
        desc = ModelLoader(device="cpu", registry=EXPERT_REGISTRY).load_from_state_dict(dict(state))
    except UnsupportedModelError as exc:
        raise ExpertLoadError(
            f"{path}: spandrel recognises no architecture in this state dict "
            f"({len(state)} tensors, e.g. {list(state)[:4]}); expected {architecture}"
        ) from exc
    except (RuntimeError, KeyError, ValueError, IndexError, TypeError, AssertionError) as exc:
        # RuntimeError: load_state_dict(strict=True) found missing / unexpected / mis-shaped tensors.
        raise ExpertLoadError(
            f"{path}: the weights do not fit the detected architecture "
            f"(a tensor is missing, extra or mis-shaped): {exc}"
        ) from exc
    found = desc.architecture.id
    if found != architecture:
        raise ExpertLoadError(f"{path}: spandrel detects architecture {found!r}, the spec expects {architecture!r}")
    if not isinstance(desc, ImageModelDescriptor):
        raise ExpertLoadError(f"{path}: {found} is not an image-to-image model ({type(desc).__name__})")
    if desc.scale != scale:
        raise ExpertLoadError(f"{path}: the model is x{desc.scale}, the spec expects x{scale}")
    if desc.input_channels != 3 or desc.output_channels != 3:
        raise ExpertLoadError(
            f"{path}: experts must map RGB to RGB; the model has {desc.input_channels} input "
            f"and {desc.output_channels} output channels"
        )
    detected = jsonable(getattr(desc.model, "hyperparameters", {}))
    for name, want in expect.items():
        if name not in detected:
            raise ExpertLoadError(
                f"{path}: expected hyper-parameter {name!r} is not among the detected ones {sorted(detected)}"
            )
        if detected[name] != jsonable(want):
            raise ExpertLoadError(f"{path}: hyper-parameter {name} = {detected[name]!r}, the spec expects {want!r}")
    return desc


def jsonable(value: Any) -> Any:
    """A JSON-serialisable view of detected hyper-parameters (tuples → lists, classes → qualified names)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)
