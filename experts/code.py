"""Experts defined by a team's own Python file — the NTIRE code-submission convention, for every model spandrel does
not know (e.g. the NTIRE 2024 Efficient SR entries in ``../shared/zoo/ntire2024_esr``).

What the challenge's own test script does, with every step checked:

1. **opt-in**: the spec must say ``trust_code: true`` — importing a file runs it; without the opt-in nothing is read;
2. the file and the weights must have the pinned sha256 (a different file is an error, before any import);
3. the file is imported as a private module (once per sha256; its prints go to stderr); the class must be an
   ``nn.Module`` defined or imported there, and ``kwargs`` must fit its constructor's signature;
4. the weights load through the restricted unpickler (``torch.load(weights_only=True)``) or safetensors, from
   ``checkpoint_key`` when given, **strictly** (a missing, unexpected or mis-shaped tensor is an error listing them);
5. a dry run on a 16×16 input checks that the model maps RGB to RGB at the spec's scale.

Every failure is one :class:`~experts.loading.ExpertLoadError` line naming the file. The model is then fed RGB in
``[0, data_range]`` (``experts.expert.Expert`` scales and pads; the result is divided back).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import re
import sys
import types
from pathlib import Path

import torch
from spandrel import SizeRequirements
from torch import nn

from experts.loading import ExpertLoadError, LoadedModel, jsonable, read_state_dict, sha256_file
from experts.spec import ExpertSpec, resolve_code_file, resolve_expert_checkpoint

__all__ = ["CODE_TAG", "import_code_file", "load_code_model"]

CODE_TAG = "code"
_MODULE_PREFIX = "sr_fusion_expert_code_"
_PROBE = 16  # LR side of the scale check
_ECHO = 300  # characters of a foreign message echoed in an error line


def _short(text: object) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= _ECHO else s[: _ECHO - 1] + "…"


def import_code_file(path: Path, *, sha256: str) -> types.ModuleType:
    """Import ``path`` (already verified to have ``sha256``) as a private module, once per file content."""
    stem = re.sub(r"\W", "_", path.stem)
    name = f"{_MODULE_PREFIX}{stem}_{sha256[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ExpertLoadError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and relative lookups inside the file need it registered
    try:
        with contextlib.redirect_stdout(sys.stderr):  # a file that prints on import must not pollute stdout
            spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 — anything the user's file raises becomes one line
        del sys.modules[name]
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ExpertLoadError(f"{path}: importing it failed: {type(exc).__name__}: {_short(exc)}") from exc
    return module


def _build(path: Path, module: types.ModuleType, class_name: str, kwargs: dict) -> nn.Module:
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        found = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, nn.Module) and v is not nn.Module
        )
        what = "no attribute" if cls is None else f"{type(cls).__name__}, not an nn.Module class,"
        raise ExpertLoadError(f"{path}: {what} {class_name!r}; its nn.Module classes: {_short(found)}")
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        params = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
        raise ExpertLoadError(f"{path}: {class_name}(**kwargs): {_short(exc)}; its parameters: {params}") from exc
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 — the user's constructor
        raise ExpertLoadError(
            f"{path}: {class_name}(**{_short(kwargs)}) failed: {type(exc).__name__}: {_short(exc)}"
        ) from exc


def _load_strict(model: nn.Module, path: Path, *, key: str | None) -> None:
    state = read_state_dict(path, key=key)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or reshaped:
        parts = [
            f"{what} {len(keys)} ({', '.join(keys[:4])}{', …' if len(keys) > 4 else ''})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped))
            if keys
        ]
        hint = "" if key else "; set checkpoint_key (e.g. params or params_ema) if the weights are nested"
        raise ExpertLoadError(f"{path}: the weights do not fit {type(model).__name__}: {'; '.join(parts)}{hint}")
    model.load_state_dict(state, strict=True)


def load_code_model(spec: ExpertSpec, *, root: str | Path | None = None) -> tuple[LoadedModel, Path, str]:
    """Opt-in check, pins, import, build, strict load, scale check → ``(LoadedModel, checkpoint path, its sha256)``
    (see the module docstring). Raises :class:`ExpertLoadError` naming the file."""
    code = spec.code
    if code is None:
        raise ValueError(f"expert {spec.name!r} has no code: section")
    file = resolve_code_file(spec, root)
    if not spec.trust_code:
        raise ExpertLoadError(
            f"{file}: expert {spec.name!r} is defined by this Python file and importing it runs its code; "
            "set `trust_code: true` for this expert in the expert YAML to allow it"
        )
    if not file.is_file():
        raise ExpertLoadError(f"{file}: model code file not found (expert {spec.name!r})")
    digest = sha256_file(file)
    if digest != code.sha256:
        raise ExpertLoadError(f"{file}: sha256 {digest} differs from the pinned code.sha256 {code.sha256}")
    ckpt = resolve_expert_checkpoint(spec, root)
    if not ckpt.is_file():
        raise ExpertLoadError(f"{ckpt}: checkpoint file not found (expert {spec.name!r})")
    weights_digest = sha256_file(ckpt)
    if spec.sha256 is not None and weights_digest != spec.sha256:
        raise ExpertLoadError(f"{ckpt}: sha256 {weights_digest} differs from the pinned {spec.sha256}")

    module = import_code_file(file, sha256=digest)
    kwargs = dict(code.kwargs)
    model = _build(file, module, code.class_name, kwargs)
    _load_strict(model, ckpt, key=spec.checkpoint_key)
    model.eval()
    _check_scale(
        model,
        ckpt,
        scale=spec.scale,
        data_range=float(code.data_range),
        multiple=code.pad_multiple,
        minimum=code.min_size,
    )
    loaded = LoadedModel(
        model=model,
        architecture=code.class_name,
        scale=spec.scale,
        size_requirements=SizeRequirements(minimum=code.min_size, multiple_of=code.pad_multiple),
        supports_half=True,  # the spec's precision is the user's explicit choice for a model spandrel does not know
        supports_bfloat16=True,
        tags=(CODE_TAG,),
        hyperparameters=jsonable(kwargs),
        data_range=float(code.data_range),
        code={
            "file": code.file,
            "sha256": digest,
            "class_name": code.class_name,
            "kwargs": jsonable(kwargs),
            "data_range": code.data_range,
            "pad_multiple": code.pad_multiple,
            "min_size": code.min_size,
        },
    )
    return loaded, ckpt, weights_digest


def _check_scale(model: nn.Module, ckpt: Path, *, scale: int, data_range: float, multiple: int, minimum: int) -> None:
    a = max(_PROBE, multiple, minimum)
    a = -(-a // multiple) * multiple
    x = torch.full((1, 3, a, a), 0.5 * data_range)
    try:
        with torch.inference_mode():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 — the user's forward
        raise ExpertLoadError(
            f"{ckpt}: a dry run on a {a}x{a} input failed: {type(exc).__name__}: {_short(exc)}"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[1] != 3:
        shape = tuple(getattr(out, "shape", ()))
        raise ExpertLoadError(f"{ckpt}: the model returned {type(out).__name__} {shape}, expected (B,3,H,W) RGB")
    if tuple(out.shape[-2:]) != (a * scale, a * scale):
        raise ExpertLoadError(
            f"{ckpt}: the model maps {a}x{a} to {out.shape[-2]}x{out.shape[-1]}, not x{scale} as the spec says"
        )
