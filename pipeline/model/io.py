"""Save / load a :class:`~pipeline.model.fusion_net.FusionNet`: ``model.safetensors`` + ``config.json`` in one
directory.

``config.json`` holds everything needed to rebuild the model (the full resolved :class:`FusionConfig`) plus a
free-form JSON ``extra`` mapping (training step, metrics, expert fingerprints …). :func:`load_pretrained` rebuilds
the model in one call and loads the weights strictly: a missing, unexpected or mis-shaped tensor is an error.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from experts.loading import sha256_file
from pipeline.core.atomic import atomic_write_bytes, atomic_write_text
from pipeline.core.config import ConfigError, config_from_dict, config_to_dict, read_format_json
from pipeline.core.errors import ToolkitError, shorten
from pipeline.core.state_dict import StateDictMismatch, load_state_dict_strict
from pipeline.model.fusion_config import FusionConfig, validate_config
from pipeline.model.fusion_net import FusionNet

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "save_pretrained",
    "load_pretrained",
    "read_config",
    "read_extra",
    "CHECKSUMS",
    "COMPLETE_MARKER",
    "TRAIN_STATE",
    "CheckpointNotFoundError",
    "ChecksumError",
    "resolve_checkpoint",
    "verify_checksums",
    "write_checksums",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "sr-fusion-net"
FORMAT_VERSION = 1


class CheckpointError(ToolkitError, RuntimeError):
    """A checkpoint directory is missing files, malformed, or does not match the model its config describes."""


def save_pretrained(model: FusionNet, directory: str | os.PathLike, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/config.json`` (atomically); returns the directory.

    ``extra`` must be JSON-serialisable (a ``TypeError`` says which value is not).
    """
    if not isinstance(model, FusionNet):
        raise TypeError(f"save_pretrained expects a FusionNet, got {type(model).__name__}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(model.config),
        "extra": dict(extra or {}),
    }
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS_NAME, save(state, metadata={"format": FORMAT}))
    atomic_write_text(out / CONFIG_NAME, text)
    return out


# inputs fields added after checkpoints were first written, with the behaviour every older checkpoint was trained
# with: an absent key means that, never today's default
LEGACY_INPUTS = {"features": True, "sr_dtype": "float16"}


# the numbers of ``extra`` that code reads, with their ranges (``experts[].*``: each recorded expert fingerprint)
_EXTRA_RANGES = {
    "scale": (1, 16),
    "step": (0, 10**12),
    "experts[].scale": (1, 16),
    "experts[].feature_channels": (0, 4096),
    "experts[].self_ensemble": (1, 8),
    "experts[].num_params": (0, 10**12),
}
_MAX_INT = 2**53  # a JSON number a float still holds exactly: anything larger in a checkpoint is a tampered file


def _check_numbers(value: Any, key: str, where: Path) -> None:
    """Every number in ``value`` (a JSON tree) is finite and not absurdly large; the ones code reads are in range
    (:data:`_EXTRA_RANGES`). Raises :class:`CheckpointError` naming the file and the key."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_numbers(v, f"{key}.{k}" if key else str(k), where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_numbers(v, f"{key}[{i}]", where)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > _MAX_INT:
            raise CheckpointError(f"{where}: {shorten(key, quote=False)}: not a finite number of sane size")
        bounds = _EXTRA_RANGES.get(re.sub(r"\[\d+\]", "[]", key))  # experts[2].scale → experts[].scale
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            raise CheckpointError(f"{where}: {key}: must be in [{bounds[0]}, {bounds[1]}], got {value!r}")


def _read_payload(directory: Path) -> dict[str, Any]:
    where = directory / CONFIG_NAME
    try:
        payload = read_format_json(where, fmt=FORMAT, version=FORMAT_VERSION, what="checkpoint config")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    for key in ("config", "extra"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{where}: {key}: expected a JSON object, got {shorten(payload.get(key))}")
    _check_numbers(payload["extra"], "", where)
    config = payload["config"]
    if isinstance(config.get("inputs", {}), dict):
        config["inputs"] = {**LEGACY_INPUTS, **config.get("inputs", {})}
    return payload


def read_config(directory: str | os.PathLike) -> FusionConfig:
    """The checkpoint's :class:`FusionConfig`, through the same strict, ranged checks as a training config (and the
    network's own consistency checks) — before anything is allocated. Raises :class:`CheckpointError` naming the
    file."""
    src = Path(directory)
    payload = _read_payload(src)
    try:
        config = config_from_dict(FusionConfig, payload["config"], _prefix="config")
        validate_config(config)
    except ConfigError as exc:
        raise CheckpointError(f"{src / CONFIG_NAME}: {exc}") from None
    return config


def load_pretrained(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> FusionNet:
    """Rebuild the model from ``config.json`` (checked in full first: :func:`read_config`) and load
    ``model.safetensors`` strictly (a file that is not safetensors, or holds NaN/Inf, is refused); returned in eval
    mode."""
    src = Path(directory)
    config = read_config(src)
    weights = src / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights not found: {weights}")
    try:  # safetensors parses a header and raw tensors only: nothing in the file is ever executed
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        why = shorten(str(exc), quote=False)
        raise CheckpointError(f"{weights}: not a readable safetensors file ({why})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{weights}: tensor(s) {shorten(bad[:5])} hold NaN or Inf")
    model = FusionNet(config=config)

    def error(m: StateDictMismatch) -> CheckpointError:
        return CheckpointError(
            f"{weights} does not match the model described by {src / CONFIG_NAME}: missing {shorten(m.missing)}, "
            f"unexpected {shorten(m.unexpected)}, shape mismatches {shorten(m.mismatched)}"
        )

    load_state_dict_strict(model, state, error, source="checkpoint")
    return model.to(device).eval()


def read_extra(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``extra`` mapping saved with the checkpoint."""
    return dict(_read_payload(Path(directory))["extra"])


# ---------------------------------------------------------------------------------------------------------------------
# checkpoint folders: checksums and where a run's checkpoint is
# ---------------------------------------------------------------------------------------------------------------------
COMPLETE_MARKER = "COMPLETE"  # written last into a training checkpoint: it is complete
TRAIN_STATE = "train_state.pt"  # a training checkpoint's optimiser/EMA/RNG state (pipeline/training/checkpoint.py)

CHECKSUMS = "SHA256SUMS"
_CHECKED_FILES = ("model.safetensors", "config.json")


class ChecksumError(ToolkitError, RuntimeError):
    """A checkpoint file is missing or differs from its recorded sha256."""


class CheckpointNotFoundError(ToolkitError, FileNotFoundError):
    """No complete checkpoint where one was expected."""


def write_checksums(ckpt_dir: str | os.PathLike) -> Path:
    d = Path(ckpt_dir)
    lines = [f"{sha256_file(d / name)}  {name}\n" for name in _CHECKED_FILES]
    (d / CHECKSUMS).write_text("".join(lines))
    return d / CHECKSUMS


def verify_checksums(ckpt_dir: str | os.PathLike) -> dict[str, str]:
    """Every file of the checkpoint against its SHA256SUMS → ``{file name: sha256}``, each one verified."""
    d = Path(ckpt_dir)
    verified = {}
    sums = d / CHECKSUMS
    if not sums.is_file():
        raise ChecksumError(f"{sums} is missing: cannot verify the checkpoint (re-save it with train.py)")
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        f = d / name
        if not f.is_file():
            raise ChecksumError(f"checkpoint file missing: {f}")
        actual = sha256_file(f)
        if actual != digest:
            raise ChecksumError(f"{f} was modified: sha256 {actual[:16]}… differs from the recorded {digest[:16]}…")
        verified[name] = actual
    return verified


def resolve_checkpoint(path: str | os.PathLike, *, which: str = "last") -> Path:
    """A run directory (→ its ``ckpt/<which>``), a ``ckpt/`` directory, or a checkpoint directory → the checkpoint
    directory. Raises FileNotFoundError naming what is missing."""
    p = Path(path)
    for cand in (p / "ckpt" / which, p / which, p):
        if (cand / "config.json").is_file() and (cand / "model.safetensors").is_file():
            if (cand / COMPLETE_MARKER).exists() or not (cand / TRAIN_STATE).exists():
                return cand.resolve()
    raise CheckpointNotFoundError(
        f"no complete checkpoint at {p} (looked for ckpt/{which}/, {which}/ and the folder itself)"
    )
