"""Live-expert training data: random HR crops whose LR is made on the fly (the experts run in the training loop).

Used by ``train.py`` with ``data.mode=live`` — for comparison with cached training and for when no cache exists.
One HR folder of :class:`pipeline.training.patch_data.SRPatchDataset` (LR = MATLAB bicubic of the 8-bit HR crop): like
:class:`cache.dataset.CachedSRDataset`, item ``k`` is a pure function of ``(seed, k)``. Images smaller than the HR
patch are an error at construction, naming them.
"""

from __future__ import annotations

import os

from pipeline.training.patch_data import SRPatchDataset

__all__ = ["LiveHRDataset"]


class LiveHRDataset(SRPatchDataset):
    def __init__(
        self, hr_dir: str | os.PathLike, *, patch: int, scale: int = 4, augment: bool = True, seed: int = 0
    ) -> None:
        super().__init__((hr_dir,), patch=patch, scale=scale, augment=augment, seed=seed)
