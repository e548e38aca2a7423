"""The natural photos that scikit-image ships inside its wheel, as HR PNGs (the quickstart's embedded data).

Names: any ``skimage.data`` image function (``astronaut``, ``chelsea``, ``coffee``, ``rocket``, ...) plus
``motorcycle_left`` / ``motorcycle_right`` (the two views of ``skimage.data.stereo_motorcycle``). Nothing is
downloaded: ``skimage.data`` holds these photos in the installed package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
import torch

from pipeline.core.imageio import write_image

__all__ = ["DEFAULT_NAMES", "load_sample", "write_samples"]

DEFAULT_NAMES = ("astronaut", "chelsea", "coffee", "rocket")
_STEREO = {"motorcycle_left": 0, "motorcycle_right": 1}


def load_sample(name: str) -> np.ndarray:
    """``skimage.data`` photo ``name`` as an (H, W, C) uint8 array (from the installed wheel, never downloaded)."""
    if name in _STEREO:
        return np.asarray(skimage.data.stereo_motorcycle()[_STEREO[name]])
    loader = getattr(skimage.data, name, None)
    if loader is None or name.startswith("_"):
        raise ValueError(f"skimage.data has no image {name!r}")
    return np.asarray(loader())


def write_samples(out: Path, names: tuple[str, ...] = DEFAULT_NAMES, *, max_side: int = 0) -> list[Path]:
    """Photos ``names`` → ``out/<name>.png`` (RGB), centre-cropped to at most ``max_side`` px a side (``0``: whole
    photos) → the written paths."""
    paths = []
    for name in names:
        arr = load_sample(name)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        img = torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)  # (1,3,H,W)
        if max_side:
            h, w = img.shape[-2:]
            th, tw = min(h, max_side), min(w, max_side)
            top, left = (h - th) // 2, (w - tw) // 2
            img = img[..., top : top + th, left : left + tw]
        paths.append(write_image(out / f"{name}.png", img))
    return paths
