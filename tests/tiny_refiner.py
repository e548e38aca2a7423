"""Tiny random TSD-SR setups for the tests (and scripts/bench/bench_refiner.py's tiny mode, which loads this file):
the real model classes at toy sizes, saved in diffusers layout, with LoRA files written in TSD-SR's exact format by
**peft** (independently of :mod:`pipeline.refiner.lora`, but with its list of transformer targets).

* :func:`save_tiny_base` -- a 4-layer ``SD3Transformer2DModel`` (2 heads x 8, patch 2, 16 latent channels) and a
  16-latent-channel ``AutoencoderKL`` with four down blocks of two resnets (the real SD3 VAE's structure, so every
  TSD-SR target name exists), in ``base_dir/transformer`` and ``base_dir/vae``.
* :func:`inject_tsdsr_lora` -- peft ``LoraConfig(target_modules=...)`` with TSD-SR's own target lists
  (:data:`TSDSR_TRANSFORMER_TARGET_MODULES`, :data:`TSDSR_VAE_TARGET_MODULES`), LoRA weights set to seeded random
  values (peft initialises lora_B to zero, which would make the LoRA a no-op).
* :func:`tsdsr_lora_state` -- ``get_peft_model_state_dict`` (adapter name dropped) + the ``transformer.`` prefix:
  the key layout of TSD-SR's ``transformer.safetensors`` / ``vae.safetensors``.
* :func:`write_tiny_setup` -- all of the above plus prompt embeddings, returning a ready :class:`RefinerConfig`.

Weights are random: for plumbing, exactness and "does it change the output" tests, never for quality.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save_file
from torch import Tensor, nn

from pipeline.refiner.config import (
    POOL_EMBEDS_FILE,
    PROMPT_EMBEDS_FILE,
    TRANSFORMER_LORA_FILE,
    VAE_LORA_FILE,
    RefinerConfig,
)
from pipeline.refiner.lora import TRANSFORMER_LORA_TARGETS

__all__ = [
    "TINY_PROMPT_TOKENS",
    "TSDSR_TRANSFORMER_TARGET_MODULES",
    "TSDSR_VAE_TARGET_MODULES",
    "TinySetup",
    "inject_tsdsr_lora",
    "save_tiny_base",
    "tiny_transformer",
    "tiny_vae",
    "tsdsr_lora_state",
    "write_tiny_setup",
]

# TSD-SR's peft target_modules for the transformer, as in its inference script (the one list: the refiner's own)
TSDSR_TRANSFORMER_TARGET_MODULES = TRANSFORMER_LORA_TARGETS
TSDSR_VAE_TARGET_MODULES = (
    "encoder.conv_in",
    *(f"encoder.down_blocks.{b}.resnets.{r}.{c}" for b in range(4) for r in range(2) for c in ("conv1", "conv2")),
    "encoder.down_blocks.1.resnets.0.conv_shortcut",
    "encoder.down_blocks.2.resnets.0.conv_shortcut",
    *(f"encoder.down_blocks.{b}.downsamplers.0.conv" for b in range(3)),
    *(f"encoder.mid_block.attentions.0.{n}" for n in ("to_q", "to_k", "to_v", "to_out.0")),
    *(f"encoder.mid_block.resnets.{r}.{c}" for r in range(2) for c in ("conv1", "conv2")),
    "encoder.conv_out",
    "quant_conv",
)
TINY_PROMPT_TOKENS = 6


def tiny_transformer(*, seed: int = 0) -> SD3Transformer2DModel:
    """A 4-layer SD3 MMDiT: 2 heads x 8 dims, patch 2, 16 latent channels, joint dim 32, pooled dim 16."""
    torch.manual_seed(seed)
    model = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        num_layers=4,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=16,
        out_channels=16,
        pos_embed_max_size=32,
    )
    return model.eval()


def tiny_vae(*, seed: int = 0, quant_conv: bool = False) -> AutoencoderKL:
    """An SD3-structured VAE at toy width: 4 down/up blocks x 2 resnets, channels (8, 16, 32, 32), 16 latent channels,
    mid-block attention, SD3's scaling/shift factors, no quant convs (like SD3) unless ``quant_conv``."""
    torch.manual_seed(seed)
    model = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=2,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv,
    )
    return model.eval()


def save_tiny_base(directory: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny SD3 base in diffusers layout (``transformer/``, ``vae/``: config.json + safetensors)."""
    directory = Path(directory)
    tiny_transformer(seed=seed).save_pretrained(directory / "transformer", safe_serialization=True)
    tiny_vae(seed=seed + 1).save_pretrained(directory / "vae", safe_serialization=True)
    return directory


def inject_tsdsr_lora(
    model: nn.Module, *, target_modules: tuple[str, ...], rank: int, seed: int, std: float
) -> nn.Module:
    """Add a peft LoRA (r = alpha = ``rank``, TSD-SR's target list) to ``model`` in place, with seeded random
    lora_A/lora_B of standard deviation ``std``. The returned model computes the unmerged LoRA forward."""
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(target_modules))
    model = inject_adapter_in_model(config, model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return model.eval()


def tsdsr_lora_state(model: nn.Module) -> dict[str, Tensor]:
    """The LoRA tensors of a peft-injected model in TSD-SR's file layout: ``transformer.<module>.lora_A.weight``."""
    state = get_peft_model_state_dict(model)
    return {f"transformer.{key}": value.detach().contiguous() for key, value in state.items()}


@dataclass(frozen=True)
class TinySetup:
    """Paths of a tiny setup and the matching config (tiles sized for 32-64 px images)."""

    root: Path
    config: RefinerConfig
    prompt_embeds: Tensor  # (TINY_PROMPT_TOKENS, 32)
    pooled_embeds: Tensor  # (16,)
    reference_transformer: nn.Module  # the peft-injected (unmerged LoRA) models the files were written from
    reference_vae: nn.Module


def write_tiny_setup(root: str | Path, *, seed: int = 0, rank: int = 4, lora_std: float = 0.15) -> TinySetup:
    """Tiny base + TSD-SR-format LoRA files + prompt embeddings under ``root``; returns paths, a config (rank = alpha
    = ``rank``, fp32, CPU, untiled VAE, latent tiles of 4 with overlap 2, deterministic off) and the peft models
    (base weights + unmerged LoRA) the LoRA files were written from, as an independent reference."""
    root = Path(root)
    base_dir = save_tiny_base(root / "sd3", seed=seed)
    lora_dir = root / "tsdsr"
    lora_dir.mkdir(parents=True, exist_ok=True)
    transformer = inject_tsdsr_lora(
        tiny_transformer(seed=seed),
        target_modules=TSDSR_TRANSFORMER_TARGET_MODULES,
        rank=rank,
        seed=seed + 10,
        std=lora_std,
    )
    save_file(tsdsr_lora_state(transformer), str(lora_dir / TRANSFORMER_LORA_FILE))
    vae = inject_tsdsr_lora(
        tiny_vae(seed=seed + 1), target_modules=TSDSR_VAE_TARGET_MODULES, rank=rank, seed=seed + 11, std=lora_std
    )
    save_file(tsdsr_lora_state(vae), str(lora_dir / VAE_LORA_FILE))
    emb_dir = root / "embeddings"
    emb_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed + 20)
    prompt = torch.randn(TINY_PROMPT_TOKENS, 32, generator=gen)
    pooled = torch.randn(16, generator=gen)
    torch.save(prompt, emb_dir / PROMPT_EMBEDS_FILE)
    torch.save(pooled, emb_dir / POOL_EMBEDS_FILE)
    config = RefinerConfig(
        base_dir=str(base_dir),
        lora_dir=str(lora_dir),
        embedding_dir=str(emb_dir),
        transformer_lora_rank=rank,
        transformer_lora_alpha=float(rank),
        vae_lora_rank=rank,
        vae_lora_alpha=float(rank),
        latent_tile=4,
        latent_overlap=2,
        vae_tile=0,
        vae_overlap=0,
        precision="fp32",
        device="cpu",
    )
    return TinySetup(
        root=root,
        config=config,
        prompt_embeds=prompt,
        pooled_embeds=pooled,
        reference_transformer=transformer,
        reference_vae=vae,
    )
