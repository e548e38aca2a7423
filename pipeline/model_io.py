"""Save / load a :class:`~pipeline.fusion_net.FusionNet`: ``model.safetensors`` + ``config.json`` in one directory.

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

from pipeline.errors import ToolkitError
from pipeline.atomic import atomic_write_bytes, atomic_write_text
from pipeline.config import ConfigError, config_from_dict, config_to_dict, read_format_json
from pipeline.fusion_net import FusionConfig, FusionNet

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "save_pretrained",
    "load_pretrained",
    "read_extra",
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


def _read_payload(directory: Path) -> dict[str, Any]:
    try:
        return read_format_json(directory / CONFIG_NAME, fmt=FORMAT, version=FORMAT_VERSION, what="checkpoint config")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


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
