"""Shared test fixtures: seeded RNGs, thread limits and access to ../shared.

Tests that need ../shared (real images, real expert weights, golden metric values) take the ``shared_dir``
fixture. On a user's machine without ../shared they are skipped with the reason; in CI (``REQUIRE_SHARED=1``)
a missing ../shared is a failure, never a silent skip.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SR_SHARED_DIR", REPO_ROOT.parent / "shared"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


class Program:
    """One of the repository's command-line programs (``scripts/NAME.py`` or ``train.py``), run in this process
    exactly as ``python FILE ARGV`` would run it (:func:`pipeline.core.cli.run_program`): tests exercise the real
    command lines without importing a script as a module."""

    def __init__(self, relative: str) -> None:
        self.path = REPO_ROOT / relative

    def main(self, argv: list[str] | None = None) -> int:
        from pipeline.core.cli import run_program

        return run_program(self.path, list(argv or []))


def program(name: str) -> Program:
    """``program("submit")`` → scripts/submit.py; ``program("research/ablation")`` → scripts/research/ablation.py;
    ``program("train")`` → train.py."""
    return Program("train.py" if name == "train" else f"scripts/{name}.py")


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


@pytest.fixture
def single_thread():
    """Tiny tensors: one thread is faster than two, and far faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor | float, *, atol: float = 1e-6, rtol: float = 1e-6
) -> None:
    """Element-wise |actual − expected| <= atol + rtol·|expected| (torch.testing.assert_close costs ~8 s to import)."""
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.detach() - expected.detach()).abs()
    ok = bool((diff <= atol + rtol * expected.detach().abs()).all())
    assert ok, f"max abs diff {diff.max().item():.3g} (atol={atol}, rtol={rtol})"


@pytest.fixture(autouse=True, scope="session")
def _expert_store_in_a_temp_folder(tmp_path_factory) -> None:
    """Commands that default to the user's expert-output store (~/.cache/sr-fusion/expert-outputs) use a session
    folder instead: tests never write into the home folder, and start from an empty store."""
    os.environ["SR_FUSION_STORE"] = str(tmp_path_factory.mktemp("expert_store"))


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_compact_experts(tmp_path_factory) -> dict:
    """Two tiny real-architecture experts (spandrel's Compact, 8 features) whose outputs are nearest-neighbour
    upscaling plus a small learned-looking residual of different strength — so the experts differ, are imperfect,
    and their mean is beatable — plus 6 smooth HR photos-like images. Returns paths: yaml, hr, root."""
    from spandrel.architectures.Compact import Compact

    from pipeline.core.imageio import write_image

    root = tmp_path_factory.mktemp("compact_experts")
    gen = torch.Generator().manual_seed(0)
    for name, strength in (("noisy", 0.3), ("calm", 0.1)):
        model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            model.body[-1].weight.mul_(strength)  # the residual's strength
            model.body[-1].bias.zero_()
        torch.save(model.state_dict(), root / f"{name}.pth")
    (root / "experts.yaml").write_text(
        "scale: 4\nexperts:\n"
        + "".join(
            f"  - {{name: {n}, checkpoint: {root / (n + '.pth')}, architecture: Compact, scale: 4, "
            "min_probe_psnr: 0}\n"  # random weights: the loader's probe is off (experts/probe.py)
            for n in ("noisy", "calm")
        )
    )
    hr_dir = root / "hr"
    for i in range(6):
        base = torch.rand(1, 3, 12, 12, generator=gen)
        img = torch.nn.functional.interpolate(base, size=(96, 96), mode="bicubic", align_corners=False).clamp(0, 1)
        write_image(hr_dir / f"img{i}.png", img)
    return {"root": root, "yaml": root / "experts.yaml", "hr": hr_dir}


@pytest.fixture(scope="session")
def tiny_cache(tiny_compact_experts, tmp_path_factory) -> Path:
    """The feature cache of the two tiny Compact experts on their 6 HR images (``extract_features``, default layout),
    built once per session. Tests only read it: one that changes a cache makes its own."""
    out = tmp_path_factory.mktemp("tiny_cache") / "c.h5"
    argv = ["--threads", "1", "--experts", str(tiny_compact_experts["yaml"]), "--hr", str(tiny_compact_experts["hr"])]
    assert run_main(program("extract_features").main, [*argv, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def trained_run(tiny_cache, tmp_path_factory) -> Path:
    """A tiny trained fusion run on the two Compact experts' cache (:func:`tiny_cache`): train.py 3 steps with
    validation after every step (so metrics.csv holds train/* and val/* rows). Returns ``runs/r`` (ckpt/best,
    metrics.csv)."""
    import yaml

    root = tmp_path_factory.mktemp("trained_run")
    model = yaml.safe_load((REPO_ROOT / "configs" / "fusion_tiny.yaml").read_text())["model"]
    cfg = {
        "model": model,
        "data": {
            "train_cache": str(tiny_cache),
            "val_cache": str(tiny_cache),
            "patch": 16,
            "batch_size": 2,
            "num_workers": 0,
        },
        "train": {
            "runs_dir": str(root / "runs"),
            "name": "r",
            "steps": 3,
            "warmup_steps": 1,
            "ckpt_every": 3,
            "val_every": 1,
            "log_every": 1,
            "threads": 1,
        },
        "submission": {"extra_data": True, "description": "test run"},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert run_main(program("train").main, [str(root / "cfg.yaml")]) == 0
    return root / "runs" / "r"


def run_main(main: Callable[[list[str]], int], argv: list[str], *, debug: bool = False) -> int:
    """Run a script's ``main(argv)`` in-process, restoring torch's thread count (scripts set ``train.threads``).
    ``debug``: the CLI's ``--debug`` mode — a typed library error propagates (for ``pytest.raises``) instead of
    becoming a one-line message and exit status 2."""
    threads = torch.get_num_threads()
    try:
        return main([*argv, "--debug"] if debug else argv)
    finally:
        torch.set_num_threads(threads)


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """A run's ``metrics.csv`` → ``{tag: [(step, value), ...]}`` in file order."""
    out: dict[str, list[tuple[int, float]]] = {}
    with open(run_dir / "metrics.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["tag"], []).append((int(row["step"]), float(row["value"])))
    return out
