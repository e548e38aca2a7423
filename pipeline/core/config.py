"""Config = YAML values + frozen dataclasses.

A schema is a (nested) frozen dataclass whose fields carry the defaults. Values come from a YAML file and from
dotted command-line overrides (``train.lr=1e-4 model.width=48``). Everything is checked strictly:

* an unknown key is an error that lists the valid keys of that section;
* a value of the wrong type is an error that names the dotted key and the expected type;
* numbers such as ``2e-4`` parse as floats (PyYAML's YAML-1.1 resolver would read them as strings);
* a number outside its field's range is an error naming the key and the range: numeric fields are annotated with
  :class:`Range` (``steps: PosInt``, ``lr: PosFloat``, ``ema_decay: Annotated[float, Range(ge=0, lt=1)]``), and NaN
  or infinity is never accepted for a ranged field;
* a file that is not valid YAML is an error naming the file and the line;
* nothing is ever ``eval``-ed: values are parsed with a safe YAML loader.

The resolved config (defaults + file + overrides) is what a run saves next to its outputs (:func:`save_config`).

Supported field types: ``bool``, ``int``, ``float`` (an int is accepted and converted), ``str``, ``Literal[...]``,
``X | None``, ``tuple[X, ...]`` / ``tuple[X, Y]`` (YAML lists), ``dict[str, X]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

from pipeline.core.atomic import atomic_write_text
from pipeline.core.errors import ToolkitError, shorten

__all__ = [
    "ConfigError",
    "Range",
    "PosInt",
    "NonNegInt",
    "PosFloat",
    "NonNegFloat",
    "UnitFloat",
    "read_format_json",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "parse_value",
    "load_config",
    "save_config",
]

T = TypeVar("T")


class ConfigError(ToolkitError, ValueError):
    """Raised for any invalid configuration: unknown keys, wrong types, malformed overrides."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric config field, used as ``Annotated[int, Range(ge=1)]``; checked after type conversion."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def check(self, value: float, key: str) -> None:
        if not isinstance(value, int) and not math.isfinite(value):  # an int is finite (and may not fit a float)
            raise ConfigError(f"{key}: must be a finite number, got {shorten(value)}")
        bad = (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )
        if bad:
            raise ConfigError(f"{key}: must be {self.describe()}, got {shorten(value)}")

    def describe(self) -> str:
        parts = [
            f"{op} {v:g}"
            for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if v is not None
        ]
        return " and ".join(parts) or "any finite number"


PosInt = Annotated[int, Range(ge=1)]
NonNegInt = Annotated[int, Range(ge=0)]
PosFloat = Annotated[float, Range(gt=0)]
NonNegFloat = Annotated[float, Range(ge=0)]
UnitFloat = Annotated[float, Range(ge=0, le=1)]  # a fraction / probability / decay


def read_format_json(path: str | os.PathLike, *, fmt: str, version: int, what: str) -> dict[str, Any]:
    """A JSON file tagged ``{"format": fmt, "format_version": version, ...}`` (checkpoint and zoo ``config.json``)
    → its mapping. A missing file, invalid JSON, another format or version is a :class:`ConfigError` naming the file
    (``what`` says what it should have been)."""
    import json

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found")
    try:
        payload = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: unreadable ({exc})") from exc
    except ValueError as exc:  # JSONDecodeError, or an integer of more digits than Python converts
        raise ConfigError(f"{p}: not valid JSON ({shorten(str(exc), quote=False)})") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ConfigError(f"{p}: not a {fmt!r} {what} (format {shorten(got)})")
    if payload.get("format_version") != version:
        raise ConfigError(f"{p}: format_version {shorten(payload.get('format_version'))}, this code reads {version}")
    return payload


# --------------------------------------------------------------------------------------------------------------------
# YAML: a safe loader whose float resolver accepts 1e-4, 2E5, .5e3 (YAML 1.2 behaviour)
# --------------------------------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    pass


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
# Replace the float resolver for the characters a float can start with.
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _ch in list("-+0123456789."):
    _Loader.yaml_implicit_resolvers[_ch] = [
        (tag, rx) for tag, rx in _Loader.yaml_implicit_resolvers.get(_ch, []) if tag != "tag:yaml.org,2002:float"
    ]
    _Loader.yaml_implicit_resolvers[_ch].append(("tag:yaml.org,2002:float", _FLOAT_RE))


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader


def parse_value(text: str) -> Any:
    """Parse one override value with the safe YAML loader (``1e-4`` → float, ``[1, 2]`` → list, ``null`` → None)."""
    if text == "":
        return ""
    try:
        return _yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse value {shorten(text)}: {exc}") from exc


# --------------------------------------------------------------------------------------------------------------------
# dict -> dataclass (strict) and back
# --------------------------------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` against type annotation ``tp``; ``key`` is the dotted path for error messages."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return value
    if origin is Annotated:
        converted = _convert(value, args[0], key)
        for bound in tp.__metadata__:
            if isinstance(bound, Range):
                bound.check(converted, key)
        return converted
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        options = [arg for arg in args if arg is not type(None)]
        for arg in options:
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(options) == 1:  # ``X | None``: X's own message says what is wrong (a range, an item's type)
            raise errors[0]
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {shorten(value)} ({type(value).__name__})")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {list(args)}, got {shorten(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {shorten(value)}")
        return config_from_dict(tp, value, _prefix=key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list ({_type_name(tp)}), got {shorten(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            items, problems = [], []
            for i, v in enumerate(value):  # every item's problems, not only the first item's
                try:
                    items.append(_convert(v, args[0], f"{key}[{i}]"))
                except ConfigError as exc:
                    problems.append(str(exc))
            _raise_all(problems)
            return tuple(items)
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} items ({_type_name(tp)}), got {len(value)}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {shorten(value)}")
        vt = args[1] if args else Any
        return types.MappingProxyType({str(k): _convert(v, vt, f"{key}.{k}") for k, v in value.items()})
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool, got {shorten(value)} ({type(value).__name__})")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {shorten(value)} ({type(value).__name__})")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected float, got {shorten(value)} ({type(value).__name__})")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {shorten(value)} ({type(value).__name__})")
    raise ConfigError(f"{key}: unsupported annotation {_type_name(tp)} in the schema")


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, _prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    section = _prefix or "<root>"
    problems = []  # every problem of the section in one message, so a user fixes them all in one go
    unknown = [k for k in data if k not in fields]
    if unknown:
        problems.append(
            f"unknown key(s) {', '.join(shorten(_join(_prefix, str(k))) for k in unknown)} in section {section!r}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, field in fields.items():
        key = _join(_prefix, name)
        if name in data:
            try:
                kwargs[name] = _convert(data[name], hints[name], key)
            except ConfigError as exc:
                problems.append(str(exc))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            problems.append(f"missing required key {key!r}")
    _raise_all(problems)
    return cls(**kwargs)


_MAX_PROBLEMS = 20  # problems one message lists (then how many more there are)


def _raise_all(problems: Sequence[str]) -> None:
    """Raise one :class:`ConfigError` listing ``problems`` (``; ``-separated), if there are any."""
    if problems:
        more = f"; … and {len(problems) - _MAX_PROBLEMS} more" if len(problems) > _MAX_PROBLEMS else ""
        raise ConfigError("; ".join(problems[:_MAX_PROBLEMS]) + more)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def config_to_dict(cfg: Any) -> Any:
    """Plain-python (YAML/JSON-serialisable) view of a config dataclass."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {str(k): config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# overrides and files
# --------------------------------------------------------------------------------------------------------------------
def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of nested dict ``data`` with ``a.b.c=value`` overrides applied (values parsed safely)."""
    out = _deepcopy_dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {shorten(item)} is not of the form dotted.key=value")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {shorten(item)} has an empty key")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            elif not isinstance(child, dict):
                raise ConfigError(f"override {shorten(item)}: {shorten(part)} is a value, not a section")
            node = child
        node[parts[-1]] = parse_value(raw.strip())
    return out


def _deepcopy_dict(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy_dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping with the strict float resolver; a missing file is a clear error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = _yaml_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{p}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a text file ({exc.reason})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return dict(data)


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of ``cls`` ← YAML file ``path`` (optional) ← dotted ``overrides``; validated strictly."""
    data = load_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    try:
        return config_from_dict(cls, data)
    except ConfigError as exc:
        if path is None or str(exc).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {exc}") from None


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically: temp file + rename)."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
