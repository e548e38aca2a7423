"""Save / load a :class:`~pipeline.model.fusion_net.FusionNet`: ``model.safetensors`` + ``config.json`` in one
directory.

``config.json`` holds everything needed to rebuild the model (the full resolved :class:`FusionConfig`) plus a
free-form JSON ``extra`` mapping (training step, metrics, expert fingerprints …). :func:`load_pretrained` rebuilds
the model in one call and loads the weights strictly: a missing, unexpected or mis-shaped tensor is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from experts.loading import sha256_file
from pipeline.core.atomic import atomic_write_bytes, atomic_write_text
from pipeline.core.config import ConfigError, config_from_dict, config_to_dict, read_format_json
from pipeline.core.errors import ToolkitError
from pipeline.model.fusion_net import FusionConfig, FusionNet

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "save_pretrained",
    "load_pretrained",
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


def _read_payload(directory: Path) -> dict[str, Any]:
    try:
        payload = read_format_json(
            directory / CONFIG_NAME, fmt=FORMAT, version=FORMAT_VERSION, what="checkpoint config"
        )
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    config = payload.get("config")
    if isinstance(config, dict) and isinstance(config.get("inputs", {}), dict):
        config["inputs"] = {**LEGACY_INPUTS, **config.get("inputs", {})}
    return payload


def load_pretrained(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> FusionNet:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` strictly; returned in eval mode."""
    src = Path(directory)
    payload = _read_payload(src)
    config = config_from_dict(FusionConfig, payload["config"])
    model = FusionNet(config=config)
    weights = src / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights not found: {weights}")
    state = load_file(str(weights), device="cpu")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{weights} does not match the model described by {src / CONFIG_NAME}: "
            f"missing {missing}, unexpected {unexpected}, shape mismatches {mismatched}"
        )
    model.load_state_dict(state, strict=True)
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


def verify_checksums(ckpt_dir: str | os.PathLike) -> None:
    d = Path(ckpt_dir)
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
