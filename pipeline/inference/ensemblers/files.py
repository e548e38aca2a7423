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


def load(path: str | os.PathLike, *, experts: Sequence[Mapping[str, Any]] | None = None) -> Ensembler:
    """Read an ensembler written by :func:`save`. ``experts``: fingerprints of the experts the caller will run;
    their names and sha256, in order, must be the ones it was fitted for. Every problem is an
    :class:`EnsemblerError` naming the file (and the key)."""
    p = Path(path)
    try:
        payload = read_format_json(p, fmt=FORMAT, version=FORMAT_VERSION, what="ensembler file")
    except ConfigError as exc:
        raise EnsemblerError(str(exc)) from None
    for key, kind in (("method", str), ("experts", list), ("params", dict)):
        if not isinstance(payload.get(key), kind):
            raise EnsemblerError(f"{p}: {key}: expected a JSON {kind.__name__}, got {shorten(payload.get(key))}")
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
