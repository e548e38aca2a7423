"""Live-expert training data: random HR crops whose LR is made on the fly (the experts run in the training loop).

Used by ``train.py`` with ``data.mode=live`` — for comparison with cached training and for when no cache exists.
Like :class:`cache.dataset.CachedSRDataset`, item ``k`` is a pure function of ``(seed, k)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from cache.dataset import AUGMENTATIONS, mix_seed, augment
from pipeline.imageio import list_images, read_image
from pipeline.resize import imresize

__all__ = ["LiveHRDataset"]


class LiveHRDataset(Dataset):
    def __init__(
        self, hr_dir: str | os.PathLike, *, patch: int, scale: int = 4, augment: bool = True, seed: int = 0
    ) -> None:
        self.files = list_images(hr_dir)
        if not self.files:
            raise FileNotFoundError(f"no HR images in {hr_dir}")
        self.patch, self.scale, self.augment, self.seed = patch, scale, augment, seed

    def __len__(self) -> int:
        return len(self.files)

    def image_of(self, idx: int) -> int:
        n = len(self.files)
        epoch, pos = divmod(idx, n)
        return int(torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch, 1)))[pos])

    def __getitem__(self, idx: int) -> dict:
        path: Path = self.files[self.image_of(idx)]
        hr = read_image(path)[0]  # (3,H,W)
        g = torch.Generator().manual_seed(mix_seed(self.seed, idx, 2))
        s, p = self.scale, self.patch
        h, w = hr.shape[-2:]
        if h < s * p or w < s * p:
            raise ValueError(f"{path}: {w}x{h} is smaller than the HR patch {s * p}")
        top = int(torch.randint(0, (h - s * p) // s + 1, (), generator=g)) * s  # LR-grid aligned
        left = int(torch.randint(0, (w - s * p) // s + 1, (), generator=g)) * s
        k = int(torch.randint(0, AUGMENTATIONS, (), generator=g)) if self.augment else 0
        hr = augment(hr[:, top : top + s * p, left : left + s * p], k).contiguous()  # (3,sp,sp)
        lr = imresize(hr[None], 1.0 / s, uint8=True)[0]  # (3,p,p), MATLAB bicubic of the 8-bit crop
        return {"lr": lr, "hr": hr}
