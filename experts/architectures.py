"""Build an expert architecture by name from config hyper-parameters — checked against its constructor.

A training config names an architecture the expert loader can detect (a spandrel architecture id such as ``HAT``,
``DAT``, ``SPAN``, or one of the project's own, ``experts/archs``, e.g. ``NAFNetSR``) and its constructor
arguments::

    model: {architecture: HAT, params: {embed_dim: 48, depths: [2, 2], num_heads: [4, 4], window_size: 8, upscale: 4}}

* :func:`architecture_class` finds the model class through the loader's own registry
  (``experts.loading.EXPERT_REGISTRY``): the class is the one named like the architecture id in the module that
  defines the architecture's detector (``spandrel.architectures.HAT`` → ``HAT``, ``experts.archs.nafnet_sr`` →
  ``NAFNetSR``). No table of classes is kept here, and nothing outside those registered modules can be named.
* :func:`check_params` validates ``params`` strictly against the class's ``__init__`` signature: an unknown key is an
  error listing the valid ones, a required argument must be given, and each value must have the argument's type —
  its annotation where it has one (``int``, ``float``, ``bool``, ``str``, ``Literal``, unions, ``list[...]`` /
  ``tuple[...]``), otherwise the type of its default (``embed_dim=96`` → int, ``mlp_ratio=4.0`` → float (an int is
  accepted), ``depths=(6, 6)`` → a list of ints). Arguments whose default is a Python object (``norm_layer=
  nn.LayerNorm``) cannot be set from a config.
* :func:`loader_round_trip` proves, before any training, that the expert loader will rebuild *this* model from its
  plain state dict: spandrel's detection must infer hyper-parameters that give bit-for-bit the same outputs (on
  randomly perturbed weights, so zero-initialised branches cannot hide a difference). It returns the parameters the
  detection recovers — the ``expect:`` of the expert YAML that will load the trained weights.
"""

from __future__ import annotations

import copy
import inspect
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from spandrel import ImageModelDescriptor
from torch import nn

from experts.loading import EXPERT_REGISTRY, ExpertLoadError, jsonable, load_descriptor
from experts.padding import pad_to_requirements
from pipeline.core.config import ConfigError

__all__ = ["architecture_class", "build_architecture", "check_params", "count_parameters", "loader_round_trip"]

_NOT_CONFIGURABLE = object()  # marker type: the argument's default is a Python object (a class, a function, ...)
_SCALAR = bool | int | float | str | None  # an unannotated argument whose default is None takes any scalar


def architecture_class(name: str) -> type[nn.Module]:
    """The model class of architecture ``name`` (see the module docstring); ConfigError for an unknown name."""
    support = EXPERT_REGISTRY.get(name)
    if support is None:
        known = sorted(str(s.architecture.id) for s in EXPERT_REGISTRY)
        raise ConfigError(f"model.architecture: unknown architecture {name!r}; the expert loader knows {known}")
    module = sys.modules[type(support.architecture).__module__]
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(
            f"model.architecture: {module.__name__} defines no model class named {name!r}, so "
            f"{name} cannot be built from a config"
        )
    return cls


def _annotations(cls: type) -> dict[str, Any]:
    init = inspect.unwrap(cls.__init__)  # spandrel's @store_hyperparameters wraps __init__
    try:
        return typing.get_type_hints(init)
    except (NameError, TypeError):  # an annotation that does not resolve: fall back to the defaults' types
        return {}


def _type_of_default(value: Any) -> Any:
    if value is None:
        return _SCALAR
    if isinstance(value, (bool, int, float, str)):
        return type(value)
    if isinstance(value, (list, tuple)):
        kinds = {type(v) for v in value}
        if not kinds:
            item: Any = _SCALAR
        elif kinds <= {int}:
            item = int
        elif kinds <= {int, float}:
            item = float
        elif len(kinds) == 1 and kinds <= {bool, str}:
            item = kinds.pop()
        else:
            return _NOT_CONFIGURABLE
        return list[item] if isinstance(value, list) else tuple[item, ...]
    return _NOT_CONFIGURABLE


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against ``tp`` (ints become floats where a float is expected; lists become tuples where a
    tuple is expected); ConfigError otherwise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list ({_type_name(tp)}), got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis) and args:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items ({_type_name(tp)}), got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return origin(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{key}: the constructor argument has type {_type_name(tp)}, which a config cannot set")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def check_params(cls: type[nn.Module], params: Mapping[str, Any], *, where: str = "model.params") -> dict[str, Any]:
    """``params`` validated against ``cls.__init__`` (see the module docstring) → the keyword arguments to pass."""
    signature = inspect.signature(cls)  # follows __wrapped__: the real constructor's arguments
    accepted = {
        name: p
        for name, p in signature.parameters.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{where}: unknown parameter(s) {unknown} for {cls.__name__}; its constructor takes {sorted(accepted)}"
        )
    hints = _annotations(cls)
    out: dict[str, Any] = {}
    for name, p in accepted.items():
        key = f"{where}.{name}"
        if name not in params:
            if p.default is inspect.Parameter.empty:
                raise ConfigError(f"{key}: required by {cls.__name__}, missing")
            continue
        tp = hints.get(name, _type_of_default(p.default) if p.default is not inspect.Parameter.empty else Any)
        if tp is _NOT_CONFIGURABLE:
            raise ConfigError(f"{key}: its default is the Python object {p.default!r}, which a config cannot set")
        out[name] = _convert(params[name], tp, key)
    return out


def build_architecture(name: str, params: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised model of architecture ``name`` with the checked ``params``."""
    cls = architecture_class(name)
    kwargs = check_params(cls, params)
    try:
        model = cls(**kwargs)
    except (ValueError, TypeError, AssertionError, ZeroDivisionError, IndexError) as exc:
        raise ConfigError(f"model: {name}({kwargs}) cannot be built: {type(exc).__name__}: {exc}") from exc
    empty = [f"{k} {tuple(p.shape)}" for k, p in model.named_parameters() if p.numel() == 0]
    if empty:
        raise ConfigError(
            f"model: {name} with these params has layers of zero width (e.g. a width divided by a "
            f"ratio larger than itself): {empty[:4]}"
        )
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def loader_round_trip(
    model: nn.Module, *, architecture: str, params: Mapping[str, Any], scale: int
) -> tuple[ImageModelDescriptor, dict[str, Any]]:
    """Check that the expert loader rebuilds ``model`` exactly from its state dict (see the module docstring).

    Returns ``(descriptor, expect)``: the loader's descriptor (size requirements, scale …) and the entries of
    ``params`` that spandrel's detection recovers (for the expert YAML's ``expect:``). ConfigError when the loader
    detects another architecture or scale, or builds a model that computes something else (naming the detected
    hyper-parameters that differ).
    """
    probe = copy.deepcopy(model).cpu().float().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe.parameters():  # parameters only: some buffers encode geometry (DAT's rpe_biases)
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    state = {k: v.detach().clone().contiguous() for k, v in probe.state_dict().items()}
    where = Path(f"<{architecture} built from model.params>")
    try:
        desc = load_descriptor(where, state, architecture=architecture, scale=scale, expect={})
    except (ExpertLoadError, ArithmeticError) as exc:  # ArithmeticError: a detector dividing by a zero width
        raise ConfigError(f"model: the expert loader cannot load this model back: {exc}") from exc
    reqs = desc.size_requirements
    side = max(reqs.minimum, 16)
    side += -side % max(reqs.multiple_of, 1)
    x = pad_to_requirements(torch.rand(1, desc.input_channels, side, side, generator=gen), reqs)  # (1,C,side,side)
    with torch.no_grad():
        mine, theirs = probe(x), desc.model.eval()(x)
    detected = jsonable(desc.model.hyperparameters)
    given = jsonable(dict(params))
    if mine.shape != theirs.shape or not torch.equal(mine, theirs):
        built = jsonable(getattr(probe, "hyperparameters", {}))
        differ = {k: (v, detected.get(k)) for k, v in built.items() if detected.get(k) != v}
        raise ConfigError(
            f"model: the expert loader would rebuild {architecture} with other hyper-parameters than model.params "
            f"(config, detected from the weights: {differ}) and at least one of them changes the output; spandrel "
            "cannot infer it from the weights, so leave it at its default"
        )
    expect = {k: params[k] for k in params if detected.get(k) == given[k]}
    return desc, expect
