"""Shared test fixtures: seeded RNGs, thread limits and access to ../shared.

Tests that need ../shared (real images, real expert weights, golden metric values) take the ``shared_dir``
fixture. On a user's machine without ../shared they are skipped with the reason; in CI (``REQUIRE_SHARED=1``)
a missing ../shared is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SR_SHARED_DIR", REPO_ROOT.parent / "shared"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


def require_shared(*relative: str) -> Path:
    """Return ../shared (checking that each ``relative`` path exists in it); skip or fail as the policy says."""
    missing = [r for r in relative if not (SHARED_DIR / r).exists()]
    if not SHARED_DIR.is_dir() or missing:
        what = f"{SHARED_DIR} is absent" if not SHARED_DIR.is_dir() else f"missing in {SHARED_DIR}: {missing}"
        if os.environ.get("REQUIRE_SHARED") == "1":
            pytest.fail(f"REQUIRE_SHARED=1 but {what}")
        pytest.skip(f"needs the real data/weights of ../shared ({what})")
    return SHARED_DIR


@pytest.fixture
def shared_dir() -> Path:
    return require_shared()


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
