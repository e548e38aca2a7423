"""Validating an SR expert the way the challenge scores it: full images, LR = MATLAB bicubic ×1/4 of the HR, 8-bit
output, PSNR/SSIM on the Y channel with a border of ``scale`` pixels (pipeline/core/metrics.py), next to bicubic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from experts.padding import pad_to_requirements
from pipeline.core.imageio import list_images, quantize_8bit, read_image
from pipeline.core.metrics import psnr_y, ssim_y
from pipeline.core.resize import bicubic_upscale, make_lr
from pipeline.training.runs import RunError

__all__ = ["ValImage", "evaluate", "load_val_sets", "score", "super_resolve", "val_scalars", "val_set_name"]


@dataclass(frozen=True)
class ValImage:
    name: str
    lr: torch.Tensor  # (1,3,h,w)
    hr: torch.Tensor  # (1,3,sh,sw), cropped to a multiple of the scale


def val_set_name(folder: str | Path) -> str:
    """``../Set5/HR`` → ``Set5``; other folders by their own name."""
    p = Path(folder)
    return p.parent.name if p.name.lower() in ("hr", "gt") and p.parent.name else p.name


def load_val_sets(folders: Sequence[str], scale: int) -> dict[str, list[ValImage]]:
    sets: dict[str, list[ValImage]] = {}
    for folder in folders:
        files = list_images(folder)
        if not files:
            raise RunError(f"no validation images in {folder}")
        name = val_set_name(folder)
        while name in sets:
            name += "_"
        images = []
        for f in files:
            hr, lr = make_lr(read_image(f), scale)
            images.append(ValImage(name=f.stem, lr=lr, hr=hr))
        sets[name] = images
    return sets


@torch.no_grad()
def super_resolve(model: nn.Module, lr: torch.Tensor, *, size_requirements, scale: int) -> torch.Tensor:
    """lr (1,3,h,w) → sr (1,3,sh,sw) in [0,1]: what the expert loader's call does (pad bottom/right to the size
    requirements, run, crop, clamp)."""
    h, w = lr.shape[-2:]
    lr_p = pad_to_requirements(lr, size_requirements)
    return model(lr_p)[..., : h * scale, : w * scale].float().clamp(0, 1)


def score(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> tuple[float, float]:
    sr = quantize_8bit(sr)
    return float(psnr_y(sr, hr, crop_border=scale)[0]), float(ssim_y(sr, hr, crop_border=scale)[0])


def evaluate(run, val_sets: dict[str, list[ValImage]], *, scale: int, device: torch.device) -> dict[str, dict]:
    """``run(lr) → sr`` on every image → ``{set: {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "images"}}``."""
    out = {}
    for name, images in val_sets.items():
        rows = []
        for im in images:
            sr = run(im.lr.to(device)).cpu()
            rows.append((*score(sr, im.hr, scale), *score(bicubic_upscale(im.lr, scale), im.hr, scale)))
        mean = [sum(r[i] for r in rows) / len(rows) for i in range(4)]
        out[name] = {
            "psnr": mean[0],
            "ssim": mean[1],
            "bicubic_psnr": mean[2],
            "bicubic_ssim": mean[3],
            "images": len(rows),
        }
    return out


def val_scalars(results: dict[str, dict]) -> dict[str, float]:
    scalars = {"val/psnr": next(iter(results.values()))["psnr"]}
    for name, r in results.items():
        scalars.update(
            {f"val/psnr_{name}": r["psnr"], f"val/ssim_{name}": r["ssim"], f"val/bicubic_{name}": r["bicubic_psnr"]}
        )
    return scalars
