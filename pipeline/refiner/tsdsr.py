"""TSD-SR one-step diffusion refinement (Target Score Distillation, CVPR 2025) of a super-resolved image.

Per image (B images are refined one after another, so memory does not grow with the batch)::

    x   = 2 * sr - 1                      (1, 3, H, W), padded (reflect) to a multiple of 16 = VAE x8 * patch 2
    z   = sample(vae.encode(x)) * s       s = vae.config.scaling_factor (1.5305 for SD3; no shift factor, as TSD-SR)
    v   = transformer(z, t=1000, prompt_embeds, pool_embeds)        (Gaussian-blended latent tiles)
    z0  = z - v                           one flow-matching step from t = 1 (sigma = 1) to t = 0
    y   = clamp(vae.decode(z0 / s), -1, 1) -> [0, 1], cropped back to (H, W)
    out = clamp(colour_fix(y, sr), 0, 1)  wavelet (default) / AdaIN / none, against the input

``deterministic=True`` takes the posterior mean instead of a sample; otherwise the sample's noise comes from a CPU
generator seeded with ``seed`` at every call, so a call is reproducible on any device. The VAE encoder and decoder
run on Gaussian-blended tiles of ``vae_tile`` latent pixels when the image is larger than that.

The refiner refuses to hand back its input unchanged (a published pipeline's refiner silently did): an output equal
to the input, or a non-finite output, raises :class:`RefinerError`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, SD3Transformer2DModel
from torch import Tensor, nn

from pipeline.refiner.colour import colour_fix
from pipeline.refiner.config import RefinerConfig
from pipeline.refiner.errors import RefinerError, RefinerWeightsError
from pipeline.refiner.files import load_embedding, resolve_files
from pipeline.refiner.loading import load_transformer, load_vae
from pipeline.refiner.lora import (
    check_lora,
    merge_lora_,
    read_lora_file,
    transformer_lora_targets,
    vae_lora_targets,
)
from pipeline.refiner.tiling import tiled_map

__all__ = ["DTYPES", "TIMESTEP", "TSDSRRefiner", "resolve_device"]

TIMESTEP = 1000.0  # TSD-SR's single step starts at the pure-noise end of SD3's schedule (sigma = 1)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, with a clear error for a malformed name or an unavailable CUDA device."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise RefinerError(f"invalid device {name!r}: {exc}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RefinerError(f"device {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RefinerError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def _pad_to_multiple(img: Tensor, multiple: int) -> Tensor:
    """Pad (B, C, H, W) at the bottom/right to multiples of ``multiple`` (reflect where possible, else replicate)."""
    height, width = img.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return img
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(img, (0, pad_w, 0, pad_h), mode=mode)


class TSDSRRefiner(nn.Module):
    """One-step TSD-SR refinement: ``refiner(sr)`` with ``sr`` (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1].

    Build it with :meth:`from_config` (loads SD3 + merges the TSD-SR LoRA); the keyword constructor takes already
    loaded components (tests use it to compare against independently built models).
    """

    def __init__(
        self,
        *,
        transformer: SD3Transformer2DModel,
        vae: AutoencoderKL,
        prompt_embeds: Tensor,
        pooled_embeds: Tensor,
        config: RefinerConfig,
    ) -> None:
        super().__init__()
        t_cfg, v_cfg = transformer.config, vae.config
        if v_cfg.latent_channels != t_cfg.in_channels or t_cfg.out_channels != t_cfg.in_channels:
            raise RefinerWeightsError(
                f"VAE latent channels ({v_cfg.latent_channels}) and transformer in/out channels "
                f"({t_cfg.in_channels}/{t_cfg.out_channels}) must all be equal"
            )
        if (
            prompt_embeds.dim() != 3
            or prompt_embeds.shape[0] != 1
            or prompt_embeds.shape[-1] != t_cfg.joint_attention_dim
        ):
            raise RefinerWeightsError(
                f"prompt_embeds must be (1, N, {t_cfg.joint_attention_dim}), got {tuple(prompt_embeds.shape)}"
            )
        if pooled_embeds.dim() != 2 or tuple(pooled_embeds.shape) != (1, t_cfg.pooled_projection_dim):
            raise RefinerWeightsError(
                f"pooled_embeds must be (1, {t_cfg.pooled_projection_dim}), got {tuple(pooled_embeds.shape)}"
            )
        self.patch = int(t_cfg.patch_size)
        for name in ("latent_tile", "latent_overlap"):
            if getattr(config, name) % self.patch:
                raise RefinerError(f"{name}={getattr(config, name)} must be a multiple of the patch size {self.patch}")
        max_grid = t_cfg.pos_embed_max_size
        if max_grid is not None and (config.latent_tile == 0 or config.latent_tile > max_grid * self.patch):
            raise RefinerError(
                f"latent_tile={config.latent_tile}: the transformer takes at most {max_grid * self.patch} latent "
                f"pixels per side (pos_embed_max_size={max_grid}); "
                f"use a tile in [{self.patch}, {max_grid * self.patch}]"
            )
        self.transformer = transformer
        self.vae = vae
        self.config = config
        self.vae_scale = 2 ** (len(v_cfg.block_out_channels) - 1)  # 8 for SD3: image pixels per latent pixel
        self.multiple = self.vae_scale * self.patch  # image sides are padded to this
        self.scaling_factor = float(v_cfg.scaling_factor)
        dtype = next(transformer.parameters()).dtype
        self.register_buffer("prompt_embeds", prompt_embeds.to(dtype), persistent=False)  # (1, N, joint_dim)
        self.register_buffer("pooled_embeds", pooled_embeds.to(dtype), persistent=False)  # (1, pooled_dim)
        self.eval()

    # ---------------------------------------------------------------------------------------------------------------
    # construction from files
    # ---------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: RefinerConfig) -> TSDSRRefiner:
        """Check every file, load SD3 (transformer + VAE) in ``cfg.precision``, merge the TSD-SR LoRA files
        strictly, read the prompt embeddings, and move everything to ``cfg.device``."""
        files = resolve_files(cfg)  # every missing file is named before anything heavy happens
        device = resolve_device(cfg.device)
        dtype = DTYPES[cfg.precision]
        transformer = load_transformer(files.base_dir, dtype=dtype)
        vae = load_vae(files.base_dir, dtype=dtype)
        prompt = load_embedding(files.prompt_embeds, width=transformer.config.joint_attention_dim, sequence=True)
        pooled = load_embedding(files.pool_embeds, width=transformer.config.pooled_projection_dim, sequence=False)
        t_lora = read_lora_file(files.transformer_lora)
        v_lora = read_lora_file(files.vae_lora)
        t_targets, v_targets = transformer_lora_targets(transformer), vae_lora_targets(vae)
        # check both files before moving GBs to the device; merge_lora_ checks again (cheap)
        check_lora(
            transformer, t_lora, targets=t_targets, rank=cfg.transformer_lora_rank, source=str(files.transformer_lora)
        )
        check_lora(vae, v_lora, targets=v_targets, rank=cfg.vae_lora_rank, source=str(files.vae_lora))
        transformer.to(device)
        vae.to(device)
        merge_lora_(
            transformer,
            t_lora,
            targets=t_targets,
            rank=cfg.transformer_lora_rank,
            alpha=cfg.transformer_lora_alpha,
            source=str(files.transformer_lora),
        )
        merge_lora_(
            vae, v_lora, targets=v_targets, rank=cfg.vae_lora_rank, alpha=cfg.vae_lora_alpha, source=str(files.vae_lora)
        )
        return cls(transformer=transformer, vae=vae, prompt_embeds=prompt, pooled_embeds=pooled, config=cfg).to(device)

    # ---------------------------------------------------------------------------------------------------------------
    # the three stages (public for tests and benchmarks)
    # ---------------------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.prompt_embeds.device

    @property
    def dtype(self) -> torch.dtype:
        return self.prompt_embeds.dtype

    def _moments(self, x: Tensor) -> Tensor:
        dist = self.vae.encode(x).latent_dist
        return torch.cat([dist.mean, dist.logvar], dim=1)  # (B, 2*16, h, w)

    def encode(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """(B, 3, H, W) in [-1, 1], H and W multiples of 16 -> scaled latent (B, 16, H/8, W/8), float32.

        Tiles blend the posterior's mean and log-variance; a sample (unless ``deterministic``) is then drawn once
        from the blended posterior with ``generator`` (a CPU generator; a fresh one seeded with ``seed`` if None).
        """
        cfg = self.config
        moments = tiled_map(
            x.to(self.device, self.dtype),
            self._moments,
            tile=cfg.vae_tile,
            overlap=cfg.vae_overlap,
            in_factor=self.vae_scale,
        )
        mean, logvar = moments.chunk(2, dim=1)
        if cfg.deterministic:
            latent = mean
        else:
            if generator is None:
                generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
            noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device)
            latent = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise
        return latent * self.scaling_factor

    def _velocity(self, z: Tensor) -> Tensor:
        batch = z.shape[0]
        timestep = torch.full((batch,), TIMESTEP, device=self.device, dtype=self.dtype)
        return self.transformer(
            hidden_states=z.to(self.dtype),
            timestep=timestep,
            encoder_hidden_states=self.prompt_embeds.expand(batch, -1, -1),
            pooled_projections=self.pooled_embeds.expand(batch, -1),
            return_dict=False,
        )[0]

    def velocity(self, z: Tensor) -> Tensor:
        """The transformer's prediction v(z, t=1000) on (B, 16, h, w) latents, tiled (``latent_tile``), float32."""
        cfg = self.config
        return tiled_map(z, self._velocity, tile=cfg.latent_tile, overlap=cfg.latent_overlap, align=self.patch)

    def refine_latent(self, z: Tensor) -> Tensor:
        """The one TSD-SR step: ``z0 = z - v(z)`` (flow matching from sigma = 1 to 0), float32."""
        return z.to(torch.float32) - self.velocity(z)

    def _decode(self, z: Tensor) -> Tensor:
        return self.vae.decode(z).sample

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latent (B, 16, h, w) -> image (B, 3, 8h, 8w), float32, *not* clamped (range about [-1, 1])."""
        cfg = self.config
        scaled = (z.to(torch.float32) / self.scaling_factor).to(self.device, self.dtype)
        return tiled_map(scaled, self._decode, tile=cfg.vae_tile, overlap=cfg.vae_overlap, out_factor=self.vae_scale)

    # ---------------------------------------------------------------------------------------------------------------
    # the refiner
    # ---------------------------------------------------------------------------------------------------------------
    def _refine_one(self, img: Tensor, generator: torch.Generator) -> Tensor:
        height, width = img.shape[-2:]  # img: (1, 3, H, W) float32 in [0, 1] on self.device
        x = _pad_to_multiple(img, self.multiple) * 2 - 1
        z = self.encode(x, generator=generator)  # (1, 16, H'/8, W'/8)
        y = self.decode(self.refine_latent(z))  # (1, 3, H', W')
        if not torch.isfinite(y).all():
            raise RefinerError(
                f"the refiner produced NaN/inf values (precision={self.config.precision!r}); fp16 can overflow in "
                "the VAE or transformer: try precision 'bf16' or 'fp32'"
            )
        y = ((y.clamp(-1.0, 1.0) + 1.0) / 2.0)[..., :height, :width]
        y = colour_fix(y, img, method=self.config.colour_fix, wavelet_levels=self.config.wavelet_levels)
        return y.clamp(0.0, 1.0)

    @torch.inference_mode()
    def forward(self, sr: Tensor) -> Tensor:
        """Refine ``sr`` (B, 3, H, W) float in [0, 1] (clamped to it first); returns float32 on ``sr``'s device."""
        if sr.dim() != 4 or sr.shape[1] != 3:
            raise ValueError(f"sr must be (B, 3, H, W), got shape {tuple(sr.shape)}")
        if not sr.is_floating_point():
            raise TypeError(f"sr must be a float tensor in [0, 1], got {sr.dtype}")
        if not torch.isfinite(sr).all():
            raise ValueError("sr contains NaN or infinite values")
        src = sr.to(torch.float32).clamp(0.0, 1.0)
        generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        outs = [self._refine_one(src[i : i + 1].to(self.device), generator) for i in range(src.shape[0])]
        out = torch.cat(outs).to(sr.device)
        if torch.equal(out, src):
            raise RefinerError("the refiner returned its input unchanged; the model is not doing anything")
        return out
