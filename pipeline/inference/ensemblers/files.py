"""The ensembler file: a small JSON (format tag, method, expert fingerprints, parameters) that refuses to be used
with other experts."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_text
from pipeline.core.config import ConfigError, read_format_json
from pipeline.core.errors import shorten
from pipeline.inference.ensemblers.base import Ensembler, EnsemblerError, _check_experts, _describe, method_class

__all__ = ["FORMAT", "FORMAT_VERSION", "load", "save"]

FORMAT = "sr-ensembler"

FORMAT_VERSION = 1


def save(ens: Ensembler, path: str | os.PathLike) -> Path:
    """Write ``ens`` to a small JSON file (atomically): format tag, method, expert fingerprints, parameters."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": ens.method,
        "experts": list(ens.experts),
        "params": ens.parameters(),
    }
    # one top-level key per line, each value compact (an EnsIR LUT is thousands of numbers)
    lines = [f"  {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in payload.items()]
    return atomic_write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")


_FILE_KEYS = frozenset({"format", "format_version", "method", "experts", "params"})
# An expert's fingerprint as a fit file records it (experts.expert.ExpertFingerprint.to_dict() and the cache's
# self_ensemble): its keys, their JSON types, and the most characters a value may take (a path fits PATH_MAX).
_FINGERPRINT_KEYS: dict[str, tuple[type, int]] = {
    "name": (str, 256),
    "architecture": (str, 256),
    "checkpoint": (str, 4096),
    "sha256": (str, 64),
    "scale": (int, 0),
    "input": (str, 300),
    "hook_layers": (list, 16384),
    "feature_channels": (int, 0),
    "precision": (str, 16),
    "num_params": (int, 0),
    "tags": (list, 4096),
    "hyperparameters": (dict, 65536),
    "code": (dict, 65536),
    "self_ensemble": (int, 0),
}
_CODE_KEYS = frozenset({"file", "sha256", "class_name", "kwargs", "data_range", "pad_multiple", "min_size"})


def _check_file_fingerprint(fp: Any, where: str) -> None:
    """A fingerprint read from a fit file: known keys only, JSON types, bounded sizes (messages cut what they echo)."""
    if not isinstance(fp, dict):
        raise EnsemblerError(f"{where}: expected a fingerprint mapping, got {shorten(fp)}")
    unknown = sorted(set(fp) - set(_FINGERPRINT_KEYS))
    if unknown:
        raise EnsemblerError(
            f"{where}: unknown keys {shorten(unknown)}; a fingerprint holds {sorted(_FINGERPRINT_KEYS)}"
        )
    for key, value in fp.items():
        kind, limit = _FINGERPRINT_KEYS[key]
        bad = not isinstance(value, kind) or isinstance(value, bool)
        if bad or (kind is list and not all(isinstance(v, str) for v in value)):
            what = "list of strings" if kind is list else kind.__name__
            raise EnsemblerError(f"{where}.{key}: expected a JSON {what}, got {shorten(value)}")
        size = len(value) if isinstance(value, str) else len(json.dumps(value)) if kind in (list, dict) else 0
        if size > limit:
            raise EnsemblerError(f"{where}.{key}: {shorten(value, 80)} is longer than {limit} characters")
    unknown = sorted(set(fp.get("code", {})) - _CODE_KEYS)
    if unknown:
        raise EnsemblerError(f"{where}.code: unknown keys {shorten(unknown)}; it holds {sorted(_CODE_KEYS)}")


def load(path: str | os.PathLike, *, experts: Sequence[Mapping[str, Any]] | None = None) -> Ensembler:
    """Read an ensembler written by :func:`save`. ``experts``: fingerprints of the experts the caller will run;
    their names and sha256, in order, must be the ones it was fitted for. Every problem is an
    :class:`EnsemblerError` naming the file (and the key)."""
    p = Path(path)
    try:
        payload = read_format_json(p, fmt=FORMAT, version=FORMAT_VERSION, what="ensembler file")
    except ConfigError as exc:
        raise EnsemblerError(str(exc)) from None
    unknown = sorted(set(payload) - _FILE_KEYS)
    if unknown:
        raise EnsemblerError(
            f"{p}: unknown top-level keys {shorten(unknown)}; an ensembler file holds {sorted(_FILE_KEYS)}"
        )
    for key, kind in (("method", str), ("experts", list), ("params", dict)):
        if not isinstance(payload.get(key), kind):
            raise EnsemblerError(f"{p}: {key}: expected a JSON {kind.__name__}, got {shorten(payload.get(key))}")
    for i, fp in enumerate(payload["experts"][:65]):  # more than 64 are refused by the Ensembler itself
        _check_file_fingerprint(fp, f"{p}: experts[{i}]")
    try:
        ens = method_class(payload["method"]).from_parameters(payload["params"], experts=payload["experts"])
    except EnsemblerError as exc:
        raise EnsemblerError(f"{p}: {exc}") from exc
    if experts is not None:
        want = _check_experts(experts)
        if [(fp["name"], fp["sha256"]) for fp in ens.experts] != [(fp["name"], fp["sha256"]) for fp in want]:
            raise EnsemblerError(
                f"{p} was fitted for the experts {_describe(ens.experts)}, "
                f"not for the experts to run {_describe(want)} (name@sha256)"
            )
    return ens
