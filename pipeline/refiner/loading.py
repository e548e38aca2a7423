"""Load the SD3 base components from a local diffusers-layout folder, strictly and without any download.

``SD3Transformer2DModel`` from ``base_dir/transformer`` and ``AutoencoderKL`` from ``base_dir/vae`` via diffusers'
``from_pretrained(..., local_files_only=True, use_safetensors=True)``. diffusers only *warns* about missing or
unexpected weights (and initialises missing ones randomly); here any missing, unexpected or mis-shaped tensor, or a
``config.json`` of another class, is a :class:`RefinerWeightsError` naming the folder and the keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from torch import nn

from pipeline.refiner.errors import RefinerFileNotFoundError, RefinerWeightsError
from pipeline.refiner.files import (
    COMPONENT_CONFIG,
    COMPONENT_WEIGHTS,
    component_weights,
)

__all__ = ["load_component", "load_transformer", "load_vae"]


def _listing(keys: list[str], limit: int = 12) -> str:
    keys = sorted(str(k) for k in keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_component(cls: type[nn.Module], base_dir: str | Path, subfolder: str, *, dtype: torch.dtype) -> nn.Module:
    """``cls.from_pretrained(base_dir, subfolder=...)`` from local files only; strict; eval mode, no gradients."""
    folder = Path(base_dir) / subfolder
    config_path = folder / COMPONENT_CONFIG
    if not config_path.is_file():
        raise RefinerFileNotFoundError(f"{cls.__name__} config not found: {config_path}")
    if component_weights(folder) is None:
        raise RefinerFileNotFoundError(f"{cls.__name__} weights not found: {folder / COMPONENT_WEIGHTS}")
    try:
        class_name = json.loads(config_path.read_text(encoding="utf-8")).get("_class_name")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise RefinerWeightsError(f"{config_path}: not a diffusers config (JSON object expected): {exc}") from exc
    if class_name != cls.__name__:
        raise RefinerWeightsError(f"{config_path}: _class_name is {class_name!r}, expected {cls.__name__!r}")
    try:
        model, info = cls.from_pretrained(
            str(base_dir),
            subfolder=subfolder,
            torch_dtype=dtype,
            local_files_only=True,
            use_safetensors=True,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise RefinerWeightsError(f"cannot load {cls.__name__} from {folder}: {exc}") from exc
    problems = []
    for what in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        items = list(info.get(what) or [])
        if items:
            problems.append(f"{what.replace('_', ' ')} ({len(items)}): {_listing([str(i) for i in items])}")
    if problems:
        raise RefinerWeightsError(f"{cls.__name__} weights in {folder} do not match its config: " + "; ".join(problems))
    model.eval()
    model.requires_grad_(False)
    return model


def load_transformer(base_dir: str | Path, *, dtype: torch.dtype) -> SD3Transformer2DModel:
    """The SD3 MMDiT from ``base_dir/transformer``."""
    model = load_component(SD3Transformer2DModel, base_dir, "transformer", dtype=dtype)
    assert isinstance(model, SD3Transformer2DModel)
    return model


def load_vae(base_dir: str | Path, *, dtype: torch.dtype) -> AutoencoderKL:
    """The SD3 VAE (16 latent channels) from ``base_dir/vae``."""
    model = load_component(AutoencoderKL, base_dir, "vae", dtype=dtype)
    assert isinstance(model, AutoencoderKL)
    return model
