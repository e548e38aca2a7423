"""Experts defined by a team's own Python file — the NTIRE code-submission convention, for every model spandrel does
not know (e.g. the NTIRE 2024 Efficient SR entries in ``../shared/zoo/ntire2024_esr``).

What the challenge's own test script does, with every step checked:

1. **opt-in**: the spec must say ``trust_code: true`` — importing a file runs it; without the opt-in it is never
   imported;
2. the file and the weights must have the pinned sha256 (a different file is an error, before any import); the
   problems of steps 1-2 (opt-in, a missing file, a pin) are reported together, in one message;
3. the file is imported as a private module (once per sha256; its prints go to stderr); the class must be an
   ``nn.Module`` defined or imported there, and ``kwargs`` must fit its constructor's signature;
4. the weights load through the restricted unpickler (``torch.load(weights_only=True)``) or safetensors, from
   ``checkpoint_key`` when given, **strictly** (a missing, unexpected or mis-shaped tensor is an error listing them,
   saying which entry of the file was loaded and the class's constructor parameters);
5. a dry run checks that the model maps RGB to RGB at the spec's scale (on a 16×16 input, or one of ``min_size``;
   64×64 when ``min_size`` is left out) — then, without ``min_size`` in the YAML, the smallest input side is found
   by probing tiny inputs (experts/probe.py); a given ``min_size`` must run;
6. like every expert, the probe image checks the feeding (experts/expert.py: data range, colour order).

Every failure is one :class:`~experts.loading.ExpertLoadError` line naming the file. The model is then fed RGB in
``[0, data_range]`` (``experts.expert.Expert`` scales and pads; the result is divided back).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import re
import sys
import types
from pathlib import Path

import torch
from spandrel import SizeRequirements
from torch import nn

from experts.loading import ExpertLoadError, LoadedModel, jsonable, read_state_dict_from, sha256_file
from experts.probe import MIN_SIDE_LIMIT, probe_min_side
from experts.spec import CodeSpec, ExpertSpec, resolve_code_file, resolve_expert_checkpoint

__all__ = ["CODE_TAG", "code_expert_digests", "import_code_file", "load_code_model"]

CODE_TAG = "code"
_MODULE_PREFIX = "sr_fusion_expert_code_"
_PROBE = 16  # LR side of the scale check
_SCALE_SIDE = 64  # ... when the smallest side is still to be probed (a model may need more than 16)
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


def _listed(keys: list[str], n: int = 4) -> str:
    return f"{len(keys)} ({', '.join(keys[:n])}{', …' if len(keys) > n else ''})"


def _load_strict(model: nn.Module, path: Path, *, key: str | None, kwargs: dict) -> None:
    state, source = read_state_dict_from(path, key=key)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or reshaped:
        parts = [
            f"{what} {_listed(keys, 3 if what == 'reshaped' else 4)}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped))
            if keys
        ]
        name = type(model).__name__
        params = [
            f"{p.name}={p.default!r}" if p.default is not inspect.Parameter.empty else p.name
            for p in inspect.signature(type(model)).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        hint = (
            f"; if the names or shapes are of another form of the model (e.g. a re-parameterised / deploy form), "
            f"set it with code.kwargs — {name}'s parameters: {_short(params)}"
        )
        raise ExpertLoadError(
            f"{path}: the weights do not fit {name}(**{_short(kwargs)}): loaded {source}, {len(state)} tensors, "
            f"into a model of {len(expected)}: {'; '.join(parts)}{hint}"
        )
    model.load_state_dict(state, strict=True)


def _pre_import_problems(spec: ExpertSpec, file: Path, ckpt: Path) -> tuple[list[str], str | None, str | None]:
    """Every problem found before the file is imported — the opt-in, both files, both pins — in one go (the files
    are hashed, never run) → ``(problems, code sha256, weights sha256)``."""
    code = spec.code
    problems = []
    if not spec.trust_code:
        problems.append(
            f"{file}: expert {spec.name!r} is defined by this Python file and importing it runs its code; "
            "set `trust_code: true` for this expert in the expert YAML to allow it"
        )
    digests: list[str | None] = []
    for path, pin, what, field in (
        (file, code.sha256, "model code file", "code.sha256"),
        (ckpt, spec.sha256, "checkpoint file", "sha256"),
    ):
        if not path.is_file():
            problems.append(f"{path}: {what} not found (expert {spec.name!r})")
            digests.append(None)
            continue
        digest = sha256_file(path)
        digests.append(digest)
        if pin is not None and digest != pin:
            pinned = "the pinned code.sha256" if field == "code.sha256" else "the pinned"
            problems.append(f"{path}: sha256 {digest} differs from {pinned} {pin}")
    return problems, digests[0], digests[1]


def code_expert_digests(spec: ExpertSpec, *, root: str | Path | None = None) -> tuple[str, str]:
    """Steps 1-2 alone — the opt-in, both files, both pins; nothing imported → ``(code sha256, weights sha256)``.
    Raises :class:`ExpertLoadError` with every problem, as :func:`load_code_model` would."""
    if spec.code is None:
        raise ValueError(f"expert {spec.name!r} has no code: section")
    problems, digest, weights_digest = _pre_import_problems(
        spec, resolve_code_file(spec, root), resolve_expert_checkpoint(spec, root)
    )
    if problems:
        raise ExpertLoadError("; ".join(problems))
    return digest, weights_digest


def load_code_model(spec: ExpertSpec, *, root: str | Path | None = None) -> tuple[LoadedModel, Path, str]:
    """Opt-in check, pins, import, build, strict load, scale check → ``(LoadedModel, checkpoint path, its sha256)``
    (see the module docstring). Raises :class:`ExpertLoadError` naming the file."""
    code = spec.code
    if code is None:
        raise ValueError(f"expert {spec.name!r} has no code: section")
    file = resolve_code_file(spec, root)
    ckpt = resolve_expert_checkpoint(spec, root)
    problems, digest, weights_digest = _pre_import_problems(spec, file, ckpt)
    if problems:
        raise ExpertLoadError("; ".join(problems))

    module = import_code_file(file, sha256=digest)
    kwargs = dict(code.kwargs)
    model = _build(file, module, code.class_name, kwargs)
    _load_strict(model, ckpt, key=spec.checkpoint_key, kwargs=kwargs)
    model.eval()
    data_range = float(code.data_range)
    check = functools.partial(_check_scale, model, ckpt, scale=spec.scale, data_range=data_range)
    if code.min_size is None:  # RGB at the spec's scale on a generous side first, then the smallest side
        check(multiple=code.pad_multiple, minimum=_SCALE_SIDE)
        minimum = _probe_minimum(model, ckpt, spec=spec)
    else:
        minimum = code.min_size
        check(multiple=code.pad_multiple, minimum=minimum)
        if minimum:  # a given minimum must run (a smaller one would only fail later, on a small image)
            _check_min_size(model, ckpt, code=code, scale=spec.scale)
    loaded = LoadedModel(
        model=model,
        architecture=code.class_name,
        scale=spec.scale,
        size_requirements=SizeRequirements(minimum=minimum, multiple_of=code.pad_multiple),
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
            "min_size": minimum,
        },
    )
    return loaded, ckpt, weights_digest


def _runs(model: nn.Module, side: int, *, scale: int, data_range: float) -> bool:
    """Whether the model maps a ``side``×``side`` input to a finite ``scale``× output."""
    try:
        with torch.inference_mode(), contextlib.redirect_stdout(sys.stderr):
            out = model(torch.full((1, 3, side, side), 0.5 * data_range))
    except Exception:  # noqa: BLE001 — the user's forward failing on a small input is what is probed
        return False
    return isinstance(out, torch.Tensor) and tuple(out.shape[-2:]) == (side * scale, side * scale)


def _probe_minimum(model: nn.Module, ckpt: Path, *, spec: ExpertSpec) -> int:
    """The smallest input side, found by probing (the YAML gives no ``code.min_size``); 0 when every side runs."""
    code = spec.code
    multiple = code.pad_multiple
    found, failed = probe_min_side(
        lambda side: _runs(model, side, scale=spec.scale, data_range=float(code.data_range)), multiple=multiple
    )
    if found is None:
        raise ExpertLoadError(
            f"{ckpt}: the model runs on no square input of {multiple} to {MIN_SIDE_LIMIT} pixels a side (with the "
            f"next {multiple * 8} sides): check code.kwargs, code.pad_multiple and scale"
        )
    return 0 if found <= multiple else found


def _check_min_size(model: nn.Module, ckpt: Path, *, code: CodeSpec, scale: int) -> None:
    side = -(-code.min_size // code.pad_multiple) * code.pad_multiple  # what the model is given at that size
    if not _runs(model, side, scale=scale, data_range=float(code.data_range)):
        raise ExpertLoadError(
            f"{ckpt}: the model does not run on a {side}x{side} input although code.min_size is {code.min_size}: "
            "leave min_size out to have the loader find the smallest side by probing"
        )


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
