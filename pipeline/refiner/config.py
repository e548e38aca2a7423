"""Configuration of the TSD-SR refiner: one frozen dataclass, loaded with ``pipeline.core.config.load_config``.

    cfg = load_config(RefinerConfig, "configs/refiner/tsdsr.yaml", ["device=cuda:1", "colour_fix=adain"])

This module imports neither torch nor diffusers, so a config can be loaded and validated cheaply (for example by
``scripts/submit.py`` before it starts the experts). Paths are used as given (``~`` is expanded); relative paths are
relative to the current working directory. Nothing is checked on disk here: :func:`pipeline.refiner.files.resolve_files`
does that, and every missing file is reported by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.core.config import ConfigError, NonNegInt, PosFloat, PosInt

__all__ = [
    "POOL_EMBEDS_FILE",
    "PROMPT_EMBEDS_FILE",
    "TRANSFORMER_LORA_FILE",
    "VAE_LORA_FILE",
    "ColourFix",
    "Precision",
    "RefinerConfig",
]

ColourFix = Literal["wavelet", "adain", "none"]
Precision = Literal["fp32", "fp16", "bf16"]

# File names of the TSD-SR release (checkpoint/tsdsr/* and dataset/default/* in its repository).
TRANSFORMER_LORA_FILE = "transformer.safetensors"
VAE_LORA_FILE = "vae.safetensors"
PROMPT_EMBEDS_FILE = "prompt_embeds.pt"
POOL_EMBEDS_FILE = "pool_embeds.pt"


@dataclass(frozen=True)
class RefinerConfig:
    """Everything needed to build and run :class:`pipeline.refiner.tsdsr.TSDSRRefiner`.

    Files:
        base_dir: SD3-medium in diffusers layout: ``transformer/`` (config.json + diffusion_pytorch_model*.safetensors)
            and ``vae/`` (same). Text encoders are not needed (the prompt is pre-embedded).
        lora_dir: folder with the TSD-SR LoRA files ``transformer.safetensors`` and ``vae.safetensors``.
        embedding_dir: folder with ``prompt_embeds.pt`` (333 x 4096) and ``pool_embeds.pt`` (2048).
    LoRA: rank (checked against the files) and alpha (scale = alpha / rank) of the transformer and VAE-encoder LoRA;
        TSD-SR uses r = alpha = 64 for both.
    Colour: ``colour_fix`` against the input ("wavelet": low frequencies of the input + high frequencies of the
        output, ``wavelet_levels`` dilated-blur levels; "adain": per-channel mean/std of the input; "none").
    Sampling: ``deterministic`` uses the VAE posterior mean instead of a sample; ``seed`` seeds the sample (a CPU
        generator, so a seed gives the same noise on every device).
    Tiling (0 disables): ``latent_tile``/``latent_overlap`` in latent pixels for the transformer (Gaussian-weighted
        blending); ``vae_tile``/``vae_overlap`` in latent pixels (x8 image pixels) for the VAE encoder and decoder.
        Tiles and overlaps must be multiples of the transformer's patch size (2 for SD3).
    Compute: ``precision`` of both models ("fp16"/"bf16" on GPU; fp16 is refused on CPU), ``device`` ("cuda",
        "cuda:1", "cpu").
    """

    base_dir: str = ""
    lora_dir: str = ""
    embedding_dir: str = ""
    transformer_lora_rank: PosInt = 64
    transformer_lora_alpha: PosFloat = 64.0
    vae_lora_rank: PosInt = 64
    vae_lora_alpha: PosFloat = 64.0
    colour_fix: ColourFix = "wavelet"
    wavelet_levels: PosInt = 5
    deterministic: bool = False
    seed: NonNegInt = 0
    latent_tile: NonNegInt = 64
    latent_overlap: NonNegInt = 8
    vae_tile: NonNegInt = 128
    vae_overlap: NonNegInt = 16
    precision: Precision = "fp32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("transformer_lora_rank", "vae_lora_rank", "wavelet_levels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("transformer_lora_alpha", "vae_lora_alpha"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for tile_name, overlap_name in (("latent_tile", "latent_overlap"), ("vae_tile", "vae_overlap")):
            tile, overlap = getattr(self, tile_name), getattr(self, overlap_name)
            if tile < 0 or overlap < 0:
                raise ConfigError(f"{tile_name} and {overlap_name} must be >= 0, got {tile} and {overlap}")
            if tile > 0 and overlap >= tile:
                raise ConfigError(f"{overlap_name} ({overlap}) must be smaller than {tile_name} ({tile})")
        if not self.device.strip():
            raise ConfigError("device must not be empty (e.g. 'cuda', 'cuda:0', 'cpu')")
        if self.precision == "fp16" and self.device.strip().startswith("cpu"):
            raise ConfigError("precision 'fp16' is not supported on the CPU; use 'fp32' or 'bf16'")

    # ---------------------------------------------------------------------------------------------------------------
    # resolved paths (no disk access)
    # ---------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _path(value: str, name: str) -> Path:
        if not value.strip():
            raise ConfigError(f"refiner config: {name} is not set (see pipeline/refiner/README.md)")
        return Path(value).expanduser()

    @property
    def base_path(self) -> Path:
        return self._path(self.base_dir, "base_dir")

    @property
    def transformer_lora_path(self) -> Path:
        return self._path(self.lora_dir, "lora_dir") / TRANSFORMER_LORA_FILE

    @property
    def vae_lora_path(self) -> Path:
        return self._path(self.lora_dir, "lora_dir") / VAE_LORA_FILE

    @property
    def prompt_embeds_path(self) -> Path:
        return self._path(self.embedding_dir, "embedding_dir") / PROMPT_EMBEDS_FILE

    @property
    def pool_embeds_path(self) -> Path:
        return self._path(self.embedding_dir, "embedding_dir") / POOL_EMBEDS_FILE
