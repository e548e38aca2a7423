"""The refiner's files on disk: check that all of them exist before anything heavy is loaded, and read the prompt
embeddings. No diffusers import here.

Layout expected (see pipeline/refiner/README.md)::

    base_dir/transformer/config.json + diffusion_pytorch_model.safetensors (or .safetensors.index.json + shards)
    base_dir/vae/config.json         + diffusion_pytorch_model.safetensors
    lora_dir/transformer.safetensors, lora_dir/vae.safetensors
    embedding_dir/prompt_embeds.pt, embedding_dir/pool_embeds.pt
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pipeline.core.safe_load import load_failure
from pipeline.refiner.config import RefinerConfig
from pipeline.refiner.errors import RefinerFileNotFoundError, RefinerWeightsError

__all__ = [
    "COMPONENT_CONFIG",
    "COMPONENT_WEIGHTS",
    "COMPONENT_WEIGHTS_INDEX",
    "RefinerFiles",
    "component_weights",
    "load_embedding",
    "resolve_files",
]

COMPONENT_CONFIG = "config.json"
COMPONENT_WEIGHTS = "diffusion_pytorch_model.safetensors"
COMPONENT_WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"


@dataclass(frozen=True)
class RefinerFiles:
    """Every file the refiner reads, all checked to exist."""

    base_dir: Path
    transformer_lora: Path
    vae_lora: Path
    prompt_embeds: Path
    pool_embeds: Path


def component_weights(folder: Path) -> Path | None:
    """The weights file of a diffusers component folder (single file or shard index), or None if there is none."""
    for name in (COMPONENT_WEIGHTS, COMPONENT_WEIGHTS_INDEX):
        if (folder / name).is_file():
            return folder / name
    return None


def _component_missing(base_dir: Path, subfolder: str) -> list[str]:
    folder = base_dir / subfolder
    missing = []
    if not (folder / COMPONENT_CONFIG).is_file():
        missing.append(str(folder / COMPONENT_CONFIG))
    if component_weights(folder) is None:
        missing.append(f"{folder / COMPONENT_WEIGHTS} (or {COMPONENT_WEIGHTS_INDEX} with its shards)")
    return missing


def resolve_files(cfg: RefinerConfig) -> RefinerFiles:
    """Check every file of ``cfg``; raise :class:`RefinerFileNotFoundError` listing all that are missing."""
    base = cfg.base_path
    missing: list[str] = []
    if not base.is_dir():
        missing.append(f"{base} (base_dir: the SD3-medium folder in diffusers layout)")
    else:
        for sub in ("transformer", "vae"):
            missing.extend(_component_missing(base, sub))
    for label, path in (
        ("TSD-SR transformer LoRA", cfg.transformer_lora_path),
        ("TSD-SR VAE LoRA", cfg.vae_lora_path),
        ("TSD-SR prompt embedding", cfg.prompt_embeds_path),
        ("TSD-SR pooled prompt embedding", cfg.pool_embeds_path),
    ):
        if not path.is_file():
            missing.append(f"{path} ({label})")
    if missing:
        raise RefinerFileNotFoundError(
            "TSD-SR refiner: missing file(s):\n  " + "\n  ".join(missing) + "\nSee pipeline/refiner/README.md for "
            "what to download and where to put it."
        )
    return RefinerFiles(
        base_dir=base,
        transformer_lora=cfg.transformer_lora_path,
        vae_lora=cfg.vae_lora_path,
        prompt_embeds=cfg.prompt_embeds_path,
        pool_embeds=cfg.pool_embeds_path,
    )


def load_embedding(path: Path, *, width: int, sequence: bool) -> Tensor:
    """Read a prompt embedding saved with ``torch.save`` (``weights_only=True``) as float32 on the CPU.

    ``sequence=True``: token embeddings, (N, width) or (1, N, width) -> (1, N, width).
    ``sequence=False``: pooled embedding, (width,) or (1, width) -> (1, width).
    A wrong type, shape or width is a :class:`RefinerWeightsError` naming the file.
    """
    if not path.is_file():
        raise RefinerFileNotFoundError(f"prompt embedding not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; re-raise with the file named
        raise RefinerWeightsError(
            f"{path}: cannot be read as a tensor with torch.load(weights_only=True): {load_failure(exc)}"
        ) from None
    if not isinstance(obj, Tensor):
        raise RefinerWeightsError(f"{path}: expected a tensor, found {type(obj).__name__}")
    emb = obj.detach().to(torch.float32)
    want = "(N, {w}) or (1, N, {w})" if sequence else "({w},) or (1, {w})"
    if sequence and emb.dim() == 2:
        emb = emb.unsqueeze(0)
    if not sequence and emb.dim() == 1:
        emb = emb.unsqueeze(0)
    ok = emb.dim() == (3 if sequence else 2) and emb.shape[0] == 1 and emb.shape[-1] == width
    if not ok:
        raise RefinerWeightsError(
            f"{path}: embedding of shape {tuple(obj.shape)} does not fit the transformer; expected "
            + want.format(w=width)
        )
    if not torch.isfinite(emb).all():
        raise RefinerWeightsError(f"{path}: embedding contains NaN or infinite values")
    return emb
