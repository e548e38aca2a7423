"""Trained experts on disk — the format of ``scripts/train_expert.py`` checkpoints and of ``experts/zoo/<name>/``.

A directory holds

* ``model.safetensors`` — the plain state dict (a flat mapping of tensors). It is a checkpoint the expert loader reads
  like any other (``checkpoint: experts/zoo/<name>/model.safetensors`` in an expert YAML): spandrel — or, for the
  project's own architectures, ``experts/archs`` — detects the architecture and hyper-parameters from the shapes.
* ``config.json`` — ``{"format": "sr-expert", "format_version": 1, "architecture", "scale", "params", "expect",
  "num_params", "extra"}``: the architecture name and constructor arguments that rebuild the model in one call
  (:func:`load_expert_model`, used to fine-tune), the subset of ``params`` that the loader's detection recovers
  (``expect``, for the expert YAML), and free-form JSON ``extra`` (training step, metrics, data).

:func:`expert_yaml` writes the one-expert YAML that loads such a directory through ``experts.loading`` with the
architecture, scale, sha256 and hyper-parameters pinned.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import save
from torch import nn

from experts.architectures import build_architecture, count_parameters
from experts.loading import ExpertLoadError, jsonable, read_state_dict
from pipeline.core.atomic import atomic_write_bytes, atomic_write_text
from pipeline.core.config import ConfigError, read_format_json
from pipeline.core.state_dict import StateDictMismatch, load_state_dict_strict

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "expert_yaml",
    "load_expert_model",
    "load_weights_strict",
    "read_expert_config",
    "save_expert",
]

FORMAT = "sr-expert"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_expert(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    architecture: str,
    params: Mapping[str, Any],
    scale: int,
    expect: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``directory/model.safetensors`` + ``config.json`` (each atomically); returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "scale": scale,
        "params": jsonable(dict(params)),
        "expect": jsonable(dict(expect)),
        "num_params": count_parameters(model),
        "extra": dict(extra or {}),
    }
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS_NAME, save(state, metadata={"format": "pt"}))
    atomic_write_text(out / CONFIG_NAME, text)
    return out


def read_expert_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a trained-expert directory (format checked); ExpertLoadError naming the file."""
    try:
        return read_format_json(
            Path(directory) / CONFIG_NAME, fmt=FORMAT, version=FORMAT_VERSION, what="trained-expert config"
        )
    except ConfigError as exc:
        raise ExpertLoadError(str(exc)) from exc


def load_weights_strict(model: nn.Module, path: str | os.PathLike, *, key: str | None = None) -> nn.Module:
    """Load the state dict of checkpoint ``path`` (``.safetensors`` / ``.pth``, optionally under ``key``) into
    ``model`` strictly; a missing file or a missing / extra / mis-shaped tensor is an ExpertLoadError naming it."""
    p = Path(path)
    state = read_state_dict(p, key=key)  # ExpertLoadError "<path>: checkpoint file not found" when absent

    def error(m: StateDictMismatch) -> ExpertLoadError:
        return ExpertLoadError(
            f"{p}: the weights do not fit {type(model).__name__} built from the config: missing {m.missing[:6]}, "
            f"unexpected {m.unexpected[:6]}, shape mismatches {m.mismatched[:6]}"
        )

    load_state_dict_strict(model, state, error)
    return model


def load_expert_model(directory: str | os.PathLike) -> nn.Module:
    """Rebuild the model of a trained-expert directory from ``config.json`` and load ``model.safetensors``
    strictly; returned in eval mode on the CPU."""
    d = Path(directory)
    cfg = read_expert_config(d)
    try:
        model = build_architecture(cfg["architecture"], cfg["params"])
    except ConfigError as exc:
        raise ExpertLoadError(f"{d / CONFIG_NAME}: {exc}") from exc
    return load_weights_strict(model, d / WEIGHTS_NAME).eval()


def expert_yaml(
    *, name: str, checkpoint: str, architecture: str, scale: int, sha256: str, expect: Mapping[str, Any]
) -> str:
    """A one-expert ensemble YAML (``configs/experts/*.yaml`` format) that loads ``checkpoint`` with its
    architecture, scale, sha256 and detected hyper-parameters asserted."""
    spec = {
        "scale": scale,
        "experts": [
            {
                "name": name,
                "checkpoint": checkpoint,
                "architecture": architecture,
                "scale": scale,
                "sha256": sha256,
                "expect": jsonable(dict(expect)),
            }
        ],
    }
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)
