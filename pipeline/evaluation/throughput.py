"""How fast the cache readers deliver training crops: what the benchmarks (scripts/bench/bench_cache*.py) and the GPU
check (scripts/bench/gpu_check.py) measure. Kept out of cache/ (the readers themselves) so that the cache layer holds
no benchmark and imports no loader of its own around a circle."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cache.batch_loader import SlotLoader
from cache.dataset import CachedSRDataset, CropBatches

__all__ = ["batch_crops_per_second", "crops_per_second"]


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


def batch_crops_per_second(
    path: Path, *, patch: int, batch: int, workers: int, batches: int, ram_budget_bytes: int, warm: int = 0
) -> float:
    """Like :func:`crops_per_second` for the batch loader (:class:`CropBatches`, un-augmented stored crops; the
    consumer's :func:`finish_batch` is not timed — it runs on the GPU in training). ``warm``: batches read before the
    clock starts (each worker decoding the images it keeps), on top of the first one."""
    ds = CropBatches(CachedSRDataset(path, patch=patch, seed=0), ram_budget_bytes=ram_budget_bytes, workers=workers)
    total = batches + warm + max(1, workers)
    sampler = [list(range(b * batch, (b + 1) * batch)) for b in range(total)]
    loader = SlotLoader(ds, sampler=sampler, batch_size=batch, workers=workers, prefetch=4)
    it = iter(loader)
    for _ in range(1 + warm + max(1, workers) - 1):  # start-up, file opening and decoding are not the steady state
        next(it)
    t0 = time.perf_counter()
    n = 0
    for b in it:
        n += b["lr"].shape[0]
    return n / (time.perf_counter() - t0)
