"""Training/validation datasets over the HDF5 feature cache.

``CachedSRDataset`` yields aligned random crops: an LR patch of ``patch`` pixels at (top, left), the HR and every
expert's SR at ``scale ×`` those coordinates, and every expert's features at the LR coordinates — then one random
flip/rot90 applied identically to all members. The cache file is opened lazily in each DataLoader worker.

Randomness is a pure function of ``(seed, index)``: item ``k`` takes image ``perm_e[k mod n]`` where ``perm_e`` is
the seeded permutation of epoch ``e = k div n``, and its crop and augmentation from a generator seeded with
``(seed, k)``. Indices may run past ``len()`` (a training run asks for item ``step × batch + b``), so the data stream
of a run — and therefore a resumed run — is identical whatever the number of workers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from cache.reader import CacheReader
from cache.schema import CacheMeta
from pipeline.core.augment import AUGMENTATIONS, augment

__all__ = ["SUBSET_SEED", "CachedSRDataset", "CachedFullImageDataset", "crops_per_second", "image_subset", "mix_seed"]

SUBSET_SEED = 20261204  # fixed: the subsets of every size are nested (the first N of one permutation)


def image_subset(total: int, count: int | None) -> list[int]:
    """The indices (sorted) of ``count`` of a cache's ``total`` images: the first ``count`` of one fixed permutation,
    so smaller subsets are contained in larger ones (learning curves); ``None``: every image."""
    if count is None:
        return list(range(total))
    if not 1 <= count <= total:
        raise ValueError(f"cannot take {count} of {total} images")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(SUBSET_SEED))
    return sorted(int(i) for i in order[:count])


class CachedSRDataset(Dataset):
    def __init__(
        self,
        path: str | os.PathLike,
        *,
        patch: int,
        repeat: int = 1,
        augment: bool = True,
        expect: CacheMeta | None = None,
        seed: int = 0,
        skip_small: bool = False,
        images: int | None = None,
    ) -> None:
        """Random aligned ``patch``×``patch`` LR crops (and the matching SR/HR/feature crops) of a cache.

        An LR image smaller than the patch is an error, or — with ``skip_small`` — left out of sampling (named in
        :attr:`skipped`; T91 has LR images from 19 px). ``images``: sample only that many of the cache's images
        (:func:`image_subset`, nested across sizes)."""
        self.path = Path(path)
        self.reader = CacheReader(self.path, expect=expect)
        if not self.reader.has_hr:
            raise ValueError(f"{self.path}: training needs HR images, but this cache was extracted with --lr only")
        subset = image_subset(len(self.reader), images)
        small = [self.reader.names[i] for i in subset if min(self.reader.lr_size(i)) < patch]
        if small and not skip_small:
            raise ValueError(
                f"{self.path}: {len(small)} LR image(s) are smaller than patch={patch}: {small[:5]} "
                "(use a smaller patch, or skip_small / data.skip_small=true to leave them out)"
            )
        self.skipped = tuple(small)
        self.images = [i for i in subset if self.reader.names[i] not in set(small)]  # sampled image indices
        if not self.images:
            raise ValueError(f"{self.path}: every LR image is smaller than patch={patch}")
        if repeat < 1:
            raise ValueError("repeat must be >= 1")
        self.patch = patch
        self.repeat = repeat
        self.augment = augment
        self.seed = seed

    @property
    def meta(self) -> CacheMeta:
        return self.reader.meta

    def __len__(self) -> int:
        return len(self.images) * self.repeat

    def image_of(self, idx: int) -> int:
        n = len(self.images)
        epoch, pos = divmod(idx, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch, 1)))
        return self.images[int(perm[pos])]

    def __getitem__(self, idx: int) -> dict:
        if idx < 0:
            raise IndexError(idx)
        i = self.image_of(idx)
        g = torch.Generator().manual_seed(mix_seed(self.seed, idx, 2))
        h, w = self.reader.lr_size(i)
        p = self.patch
        top = int(torch.randint(0, h - p + 1, (), generator=g))
        left = int(torch.randint(0, w - p + 1, (), generator=g))
        sample = self.reader.read(i, box=(top, left, p, p))
        k = int(torch.randint(0, AUGMENTATIONS, (), generator=g)) if self.augment else 0
        return {
            "lr": augment(sample.lr, k),  # (3,p,p)
            "hr": augment(sample.hr, k),  # (3,s*p,s*p)
            "srs": augment(sample.srs, k),  # (E,3,s*p,s*p)
            "feats": [augment(f, k) for f in sample.feats],  # E × (C_e,p,p)
            "index": i,
            "box": torch.tensor([top, left, p, p]),
            "aug": k,
        }


def mix_seed(seed: int, idx: int, stream: int) -> int:
    """A 63-bit generator seed from (seed, index, stream): distinct streams never share seeds."""
    x = (seed * 0x9E3779B97F4A7C15 + idx * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) & ((1 << 64) - 1)
    x ^= x >> 31
    x = (x * 0xD6E8FEEBA1B1A5D5) & ((1 << 64) - 1)
    return x >> 1


class CachedFullImageDataset(Dataset):
    """Whole images of a (validation) cache, one per item, un-augmented (use batch_size=1: sizes differ)."""

    def __init__(self, path: str | os.PathLike, *, expect: CacheMeta | None = None) -> None:
        self.reader = CacheReader(path, expect=expect)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> dict:
        s = self.reader.read(i)
        out = {"name": s.name, "lr": s.lr, "srs": s.srs, "feats": list(s.feats)}
        if s.hr is not None:
            out["hr"] = s.hr
        return out


def crops_per_second(path: Path, *, patch: int, batch: int, workers: int, batches: int) -> float:
    """Steady-state random training crops per second read from the cache at ``path`` (``batches`` batches of
    ``batch`` LR crops of ``patch`` px through a DataLoader with ``workers`` workers, one torch thread each; the first
    batch — worker start-up, file opening — is not timed). For the benchmarks."""
    ds = CachedSRDataset(path, patch=patch, seed=0)
    loader = DataLoader(
        ds,
        batch_size=batch,
        sampler=range(batch * (batches + 2)),
        num_workers=workers,
        worker_init_fn=lambda _: torch.set_num_threads(1),
    )
    it = iter(loader)
    next(it)  # worker start-up and file opening are not part of the steady state
    t0 = time.perf_counter()
    n = 0
    for b in it:
        n += b["lr"].shape[0]
    return n / (time.perf_counter() - t0)
