"""Is the fusion's training ready for the GPU it runs on? One table, in ≤ 8 minutes on one GPU.

    python scripts/bench/gpu_check.py [--tiny] [--experts 3,11] [--workers 4] [--no-compile] [--out DIR]

For each expert count E (default 3 and 11; the fusion of configs/fusion.yaml on the lean cache layout: SR only, 8-bit)
and each way of running the step — eager fp32, eager bf16 autocast, torch.compile + bf16 (on CUDA; bf16 and compile
are skipped on the CPU) — it prints the training steps/s at batch 16 of 64² LR crops (forward, loss, backward,
AdamW step, on random inputs already on the device) and the crops/s that makes, next to what the cache loader
delivers for the same E (a synthetic lean cache of two DIV2K-sized images): the old per-crop reader
(``CachedSRDataset`` through a DataLoader, 0 workers) and the batch loader (``SlotLoader``, ``--workers``
processes), and the peak GPU memory of the step. "ok" when the new loader keeps up with the fastest step.

``--tiny`` (automatic without CUDA): 128² HR images, 16² LR crops, batch 4, a few steps — an end-to-end run of the
same code in ~30 s on a CPU (the test suite runs it). Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cache.schema import CacheLayout, CacheMeta
from cache.writer import CacheWriter
from pipeline.core.cli import run_cli
from pipeline.evaluation.throughput import batch_crops_per_second, crops_per_second
from pipeline.model.fusion_config import load_fusion_config
from pipeline.model.fusion_net import FusionNet
from pipeline.training.fusion import compiled_forward
from pipeline.training.losses import charbonnier_loss

REPO = Path(__file__).resolve().parents[2]
SCALE = 4


@dataclasses.dataclass(frozen=True)
class Sizes:
    hr: tuple[int, int]  # synthetic cache image (H, W)
    patch: int  # LR crop side
    batch: int
    warmup: int  # untimed steps (compiling happens here)
    steps: int  # timed steps
    old_batches: int  # batches timed for the old reader
    new_batches: int  # batches timed for the new loader


FULL = Sizes(hr=(1356, 2040), patch=64, batch=16, warmup=5, steps=30, old_batches=6, new_batches=150)
TINY = Sizes(hr=(128, 128), patch=16, batch=4, warmup=1, steps=3, old_batches=3, new_batches=20)


def write_lean_cache(path: Path, experts: int, *, hr: tuple[int, int], images: int = 2) -> None:
    """A synthetic cache in the lean layout (SR only, 8-bit) with ``experts`` experts and smooth random content."""
    h, w = hr[0] // SCALE, hr[1] // SCALE
    meta = CacheMeta(
        scale=SCALE,
        experts=tuple({"name": f"e{i}", "feature_channels": 16, "sha256": f"{i:064x}"} for i in range(experts)),
        lr_method="matlab_bicubic",
        layout=CacheLayout(features="none", sr_dtype="uint8"),
    )
    rng = np.random.default_rng(0)
    with CacheWriter(path, meta=meta, overwrite=True) as writer:
        for i in range(images):
            coarse = torch.from_numpy(rng.random((1, 3, max(2, h // 4), max(2, w // 4)), dtype=np.float32))
            img = F.interpolate(coarse, size=(SCALE * h, SCALE * w), mode="bilinear", align_corners=False)[0]
            u8 = (img * 255).round().to(torch.uint8).numpy()
            writer.write_sample(
                f"img{i}",
                lr=(F.avg_pool2d(img[None], SCALE)[0] * 255).round().to(torch.uint8).numpy(),
                hr=u8,
                srs=np.stack([u8] * experts),
                feats=[],
            )
        writer.write_index([f"img{i}" for i in range(images)])


def step_rate(
    experts: int, *, sizes: Sizes, device: torch.device, bf16: bool, compile_: bool
) -> tuple[float, float | None]:
    """Training steps/s of the lean fusion with ``experts`` experts → (steps/s, peak GPU MiB or None on the CPU)."""
    cfg = load_fusion_config(REPO / "configs" / "fusion.yaml").with_feat_channels((16,) * experts)
    cfg = dataclasses.replace(cfg, inputs=dataclasses.replace(cfg.inputs, features=False, sr_dtype="uint8"))
    torch.manual_seed(0)
    model = FusionNet(config=cfg).to(device).train()
    forward = compiled_forward(model, enabled=compile_, prog="gpu_check")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, p = sizes.batch, sizes.patch
    lr = torch.rand(b, 3, p, p, device=device)  # (B,3,p,p)
    srs = (torch.rand(b, experts, 3, SCALE * p, SCALE * p, device=device) * 255).round() / 255  # (B,E,3,sp,sp)
    hr = srs.mean(dim=1)  # (B,3,sp,sp)

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = forward(lr, srs, [])
        loss = charbonnier_loss(out.sr.float(), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cuda = device.type == "cuda"
    for _ in range(sizes.warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(sizes.steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    rate = sizes.steps / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return rate, peak


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (automatic without CUDA)")
    ap.add_argument("--experts", default="3,11", help="expert counts E, comma-separated")
    ap.add_argument("--workers", type=int, default=4, help="loader processes of the new loader")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--out", type=Path, default=None, help="folder for the synthetic caches (default: a temp dir)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    sizes = TINY if args.tiny or not cuda else FULL
    experts = [int(v) for v in args.experts.split(",")]
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(
        f"gpu_check: {name}; batch {sizes.batch} of {sizes.patch}² LR crops; lean fusion (configs/fusion.yaml, SR "
        f"only, 8-bit); loader: 2 synthetic {sizes.hr[1]}x{sizes.hr[0]} images, new loader with {args.workers} workers",
        flush=True,
    )
    modes = [("eager fp32", False, False)]
    if cuda:
        modes.append(("eager bf16", True, False))
        if not args.no_compile:
            modes.append(("compiled bf16", True, True))
    rows = []
    t_start = time.perf_counter()
    try:
        for e in experts:
            path = out / f"lean_e{e}.h5"
            write_lean_cache(path, e, hr=sizes.hr)
            old = crops_per_second(path, patch=sizes.patch, batch=sizes.batch, workers=0, batches=sizes.old_batches)
            new = batch_crops_per_second(
                path,
                patch=sizes.patch,
                batch=sizes.batch,
                workers=args.workers,
                batches=sizes.new_batches,
                ram_budget_bytes=8 << 30,
                warm=2,
            )
            for label, bf16, comp in modes:
                rate, peak = step_rate(e, sizes=sizes, device=device, bf16=bf16, compile_=comp)
                rows.append((e, label, rate, rate * sizes.batch, old, new, peak))
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    cols = f"{'steps/s':>8} {'crops/s':>9} {'old reader':>11} {'new loader':>11} {'peak MiB':>9}"
    head = f"{'E':>3} {'step':<14} {cols}  keeps up"
    print(head)
    print("-" * len(head))
    for e, label, rate, need, old, new, peak in rows:
        peak_s = f"{peak:9.0f}" if peak is not None else f"{'-':>9}"
        print(
            f"{e:>3} {label:<14} {rate:8.2f} {need:9.0f} {old:11.0f} {new:11.0f} {peak_s}  "
            f"{'ok' if new >= need else f'no ({new / need:.2f}x)'}"
        )
    print(f"gpu_check: {time.perf_counter() - t_start:.0f} s; crops/s = steps/s × batch (what the loader must feed)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("gpu_check", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
