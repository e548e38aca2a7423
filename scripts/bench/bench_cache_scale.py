"""What the cache costs at challenge scale, measured on synthetic data with the real shapes, side by side in one run.

    python scripts/bench/bench_cache_scale.py [--images 2] [--hr-size 1356x2040] [--widths 180,180,64 48,60,28]
                                        [--layouts full:float16 none:float16 none:uint8] [--patch 64] [--batch 16]
                                        [--workers 0,2] [--gpu-tflops 100] [--out /tmp/bench_cache_scale]

For each expert set (feature widths per expert; default HAT-L/DAT/NAFNet-class 180/180/64 and the bundled
CRAFT/DITN/SPAN 48/60/28) and each cache layout (``features:sr_dtype``, :class:`cache.schema.CacheLayout`) it writes
``--images`` synthetic DIV2K-sized images (HR 2040×1356, three experts) through the real
:class:`cache.writer.CacheWriter`, and prints:

* bytes per HR pixel (the files on disk ÷ HR pixels) and the projected cache size for DIV2K (800 training images,
  ~2.26 gigapixels of HR), DF2K (3,450 images, ~9.7 Gpx) and LSDIR (84,991 images, ~108 Gpx at its mean size);
* write throughput (MB/s of cache written, fsync and rename included);
* random-crop read rate (crops/s at ``--batch`` LR crops of ``--patch`` px, for each worker count) of the old
  per-crop reader (``CachedSRDataset`` through a DataLoader) and of the batch loader (``SlotLoader``: crops cut from
  images held in RAM), next to a memory-bandwidth cap measured in the same run: the same number of processes copying
  the same bytes per crop from random places of a 256 MiB buffer into a batch, as plain contiguous copies;
* the fusion's training step on this CPU at the same batch (the fusion that layout can feed: SR only without
  features, 8-bit input with uint8 SR), its FLOPs per step (``torch.utils.flop_counter``, forward
  + backward) and the GPU step rate those FLOPs allow at ``--gpu-tflops`` effective TFLOP/s — and the read rate as a
  multiple of that GPU rate (the loader must keep ≥ 3× it, or the GPU waits on the cache).

The SR outputs and features are smooth random fields (stored like real ones), so the uncompressed sizes are exact
for the layout; compression ratios depend on real content and are measured by scripts/bench/bench_cache.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cache.dataset import CachedSRDataset, CropBatches
from cache.schema import CacheLayout, CacheMeta
from cache.writer import CacheWriter, cache_bytes, encode_srs
from pipeline.core.cli import run_cli
from pipeline.evaluation.throughput import batch_crops_per_second, crops_per_second
from pipeline.model.fusion_config import load_fusion_config
from pipeline.model.fusion_net import FusionNet
from pipeline.training.losses import charbonnier_loss

REPO = Path(__file__).resolve().parents[2]
SCALE = 4
# HR gigapixels of the training sets (DIV2K/Flickr2K/LSDIR train splits at their mean image size)
DATASETS = (("DIV2K", 800, 2.26e9), ("DF2K", 3450, 9.7e9), ("LSDIR", 84991, 1.08e11))


def smooth_field(channels: int, h: int, w: int, *, gen: torch.Generator) -> torch.Tensor:
    """(channels, h, w) float32 smooth random field in about [0, 1] (coarse noise upsampled + a little fine noise)."""
    coarse = torch.rand(1, channels, max(2, h // 16), max(2, w // 16), generator=gen)
    field = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (field + 0.02 * torch.randn(channels, h, w, generator=gen)).clamp(0, 1)


def write_synthetic(
    path: Path, widths: tuple[int, ...], *, layout: CacheLayout, images: int, hr: tuple[int, int]
) -> tuple[float, int]:
    """Write a cache of ``images`` synthetic images in ``layout`` → (seconds, HR pixels written)."""
    h, w = hr[0] // SCALE, hr[1] // SCALE
    meta = CacheMeta(
        scale=SCALE,
        experts=tuple(
            {"name": f"expert{i}", "feature_channels": c, "sha256": f"{i:064x}"} for i, c in enumerate(widths)
        ),
        lr_method="matlab_bicubic",
        layout=layout,
    )
    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(images):  # generated before the clock starts: only the cache's own work is timed
        hr_img = smooth_field(3, SCALE * h, SCALE * w, gen=gen)
        samples.append(
            {
                "lr": (F.avg_pool2d(hr_img[None], SCALE)[0] * 255).round().to(torch.uint8).numpy(),
                "hr": (hr_img * 255).round().to(torch.uint8).numpy(),
                "srs": encode_srs(torch.stack([hr_img + 0.01 * e for e in range(len(widths))]), layout.sr_dtype),
                "feats": [smooth_field(c, h, w, gen=gen).numpy().astype(np.float16) for c in widths]
                if layout.has_features
                else [],
            }
        )
    t0 = time.perf_counter()
    with CacheWriter(path, meta=meta, overwrite=True) as writer:
        for i, s in enumerate(samples):
            writer.write_sample(f"img{i:03d}", lr=s["lr"], hr=s["hr"], srs=s["srs"], feats=s["feats"])
        writer.write_index([f"img{i:03d}" for i in range(images)])
    return time.perf_counter() - t0, images * SCALE * h * SCALE * w


def fusion_step(path: Path, *, patch: int, batch: int, steps: int) -> tuple[float, float]:
    """The default fusion network's training step on this cache → (CPU seconds per step, FLOPs per step)."""
    ds = CachedSRDataset(path, patch=patch, seed=0)
    cfg = load_fusion_config(REPO / "configs" / "fusion.yaml").with_feat_channels(ds.meta.feature_channels)
    layout = ds.meta.layout
    inputs = dataclasses.replace(cfg.inputs, features=layout.has_features, sr_dtype=layout.sr_dtype)
    model = FusionNet(config=dataclasses.replace(cfg, inputs=inputs))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    items = [ds[i] for i in range(batch)]
    lr = torch.stack([it["lr"] for it in items])
    hr = torch.stack([it["hr"] for it in items])
    srs = torch.stack([it["srs"] for it in items])
    feats = [torch.stack([it["feats"][e] for it in items]) for e in range(len(items[0]["feats"]))]

    def step() -> None:
        loss = charbonnier_loss(model(lr, srs, feats).sr, hr)
        opt.zero_grad()
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()  # also the warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps, float(counter.get_total_flops())


def _copy_worker(nbytes: int, batch: int, seconds: float, counts, w: int) -> None:
    src = np.ones(256 << 20, np.uint8)
    dst = np.empty((batch, nbytes), np.uint8)
    rng = np.random.default_rng(w)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in range(batch):
            o = int(rng.integers(0, src.size - nbytes))
            dst[b] = src[o : o + nbytes]
        n += batch
    counts[w] = n / (time.perf_counter() - t0)


def copy_cap(nbytes: int, *, batch: int, workers: int, seconds: float = 2.0) -> float:
    """Crops/s of ``max(1, workers)`` processes doing nothing but plain copies of ``nbytes`` per crop (the same bytes
    a loader crop moves) from random places of a 256 MiB buffer into a batch buffer: the memory-bandwidth cap."""
    ctx = mp.get_context("fork")
    n = max(1, workers)
    counts = ctx.Array("d", n)
    procs = [ctx.Process(target=_copy_worker, args=(nbytes, batch, seconds, counts, w)) for w in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return float(sum(counts))


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2, help="synthetic images per cache")
    ap.add_argument("--hr-size", default="1356x2040", help="HR height x width (DIV2K-sized by default)")
    ap.add_argument(
        "--widths",
        nargs="+",
        default=["180,180,64", "48,60,28"],
        help="feature widths per expert, one comma-separated set per cache",
    )
    ap.add_argument(
        "--layouts",
        nargs="+",
        default=["full:float16", "none:float16", "none:uint8"],
        help="cache layouts features:sr_dtype (features full|none, SR float16|uint8)",
    )
    ap.add_argument("--patch", type=int, default=64, help="LR crop side")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", default="0,2,4", help="loader worker counts to time (new loader and copy cap)")
    ap.add_argument("--old-workers", default="0", help="worker counts to time the old per-crop reader with")
    ap.add_argument("--ram-budget-gb", type=float, default=8.0, help="the new loader's RAM budget (all workers)")
    ap.add_argument("--batches", type=int, default=20, help="batches timed per worker count")
    ap.add_argument("--steps", type=int, default=2, help="fusion training steps timed on the CPU")
    ap.add_argument("--gpu-tflops", type=float, default=100.0, help="effective GPU TFLOP/s for the step estimate")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_cache_scale"))
    args = ap.parse_args(argv)
    hr = tuple(int(v) for v in args.hr_size.lower().split("x"))
    if len(hr) != 2 or min(hr) < SCALE * args.patch:
        ap.error(f"--hr-size must be HxW with both sides >= {SCALE * args.patch}")
    workers = [int(v) for v in args.workers.split(",")]
    try:
        layouts = [CacheLayout(*spec.split(":")) for spec in args.layouts]
    except (TypeError, ValueError) as exc:
        ap.error(f"--layouts: {exc} (expected features:sr_dtype, e.g. none:uint8)")
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    print(
        f"bench_cache_scale: {args.images} synthetic images of HR {hr[1]}x{hr[0]} per cache, no compression; "
        f"{torch.get_num_threads()} torch threads; GPU estimate at {args.gpu_tflops:g} TFLOP/s"
    )
    for spec, layout in [(spec, layout) for spec in args.widths for layout in layouts]:
        widths = tuple(int(v) for v in spec.split(","))
        path = args.out / f"w{'_'.join(map(str, widths))}_{layout.features}_{layout.sr_dtype}.h5"
        seconds, pixels = write_synthetic(path, widths, layout=layout, images=args.images, hr=hr)
        size = cache_bytes(path)
        per_px = size / pixels
        sr_b = (2 if layout.sr_dtype == "float16" else 1) * 3 * len(widths)
        feat_b = 2 * sum(widths) / SCALE**2 if layout.has_features else 0.0
        print(
            f"\n[feature widths {list(widths)}, {layout.describe()}] {per_px:.1f} B per HR pixel (SR {sr_b:.0f} + "
            f"features {feat_b:.1f} + HR/LR {3 + 3 / SCALE**2:.1f} by the layout); "
            f"write {size / seconds / 1e6:.0f} MB/s"
        )
        print(
            "  projected: "
            + ", ".join(f"{name} ({n:,} images) {per_px * gpx / 1e12:.2f} TB" for name, n, gpx in DATASETS)
        )
        step_s, flops = fusion_step(path, patch=args.patch, batch=args.batch, steps=args.steps)
        gpu_steps = args.gpu_tflops * 1e12 / flops
        print(
            f"  fusion step at batch {args.batch} of {args.patch}px: CPU {step_s:.2f} s "
            f"({args.batch / step_s:.1f} crops/s); {flops / 1e9:.1f} GFLOP/step → GPU ~{gpu_steps:.1f} steps/s = "
            f"{gpu_steps * args.batch:.0f} crops/s needed"
        )
        need = gpu_steps * args.batch
        for n in [int(v) for v in args.old_workers.split(",")]:
            rate = crops_per_second(path, patch=args.patch, batch=args.batch, workers=n, batches=args.batches)
            print(f"  old per-crop reader, {n} workers: {rate:.0f} crops/s = {rate / need:.2f}x the estimated GPU step")
        nbytes = sum(
            int(np.prod(shape[1:])) * dtype.itemsize
            for shape, dtype in CropBatches(CachedSRDataset(path, patch=args.patch), ram_budget_bytes=0, workers=0)
            .shapes(1)
            .values()
        )
        for n in workers:
            rate = batch_crops_per_second(
                path,
                patch=args.patch,
                batch=args.batch,
                workers=n,
                batches=args.batches * 10,
                ram_budget_bytes=int(args.ram_budget_gb * 2**30),
                warm=2 + 4 * n,  # every worker decodes the images it keeps before the clock starts
            )
            cap = copy_cap(nbytes, batch=args.batch, workers=n)
            print(
                f"  new loader, {n} workers: {rate:.0f} crops/s = {rate / need:.2f}x the estimated GPU step; "
                f"plain copy of its {nbytes / 1e3:.0f} kB a crop with {max(1, n)} processes: {cap:.0f} crops/s "
                f"(loader = {rate / cap:.0%} of that cap)"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("bench_cache_scale", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
