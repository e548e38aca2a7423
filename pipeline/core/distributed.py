"""The process group of a torchrun launch, shared by feature extraction (cache/extract.py) and training."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["setup_distributed"]


def setup_distributed() -> tuple[int, int, int]:
    """→ (rank, world size, local rank); initialises the process group under torchrun (NCCL on GPUs, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
