"""Benchmark the HDF5 feature cache, every number measured side by side in one run.

    python scripts/bench/bench_cache.py [--experts configs/experts/shared_real.yaml] [--hr ../shared/data/val/Set14/HR]
                                  [--limit 4] [--patch 48] [--batch 16] [--workers 2] [--out /tmp/bench_cache]

1. extraction: experts alone vs the whole extract path (read, make LR, experts, fp16 conversion, checksums, HDF5
   write + fsync + rename) on the same images → overhead ratio (target ≤ 1.10);
2. reading: random aligned training crops per second from the cache with 0 and N workers, against the fusion
   network's training step rate at the same batch (target ≥ 3× — the loader must never starve training) and against
   decoding the same SR outputs from PNG files;
3. size: bytes per image per expert without compression and with lzf.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cache.dataset import CachedSRDataset
from cache.schema import CacheMeta
from cache.writer import CacheWriter
from experts.ensemble import ExpertEnsemble
from pipeline.core.cli import run_cli
from pipeline.core.imageio import list_images, read_image, to_uint8, write_image
from pipeline.core.resize import make_lr
from pipeline.evaluation.throughput import crops_per_second
from pipeline.model.fusion_config import load_fusion_config
from pipeline.model.fusion_net import FusionNet
from pipeline.training.losses import charbonnier_loss

REPO = Path(__file__).resolve().parents[2]


def _u8(t: torch.Tensor) -> np.ndarray:
    return to_uint8(t).transpose(2, 0, 1).copy()


def bench_extraction(ens: ExpertEnsemble, files: list[Path], out: Path, compression: str) -> tuple[float, float, Path]:
    """→ (seconds experts alone, seconds full extraction path, cache path)."""
    meta = CacheMeta(
        scale=ens.scale, experts=tuple(fp.to_dict() for fp in ens.fingerprints), lr_method="matlab_bicubic"
    )
    lrs = [make_lr(read_image(f), ens.scale)[1] for f in files]
    t0 = time.perf_counter()
    for lr in lrs:
        ens(lr)
    alone = time.perf_counter() - t0

    path = out / f"bench_{compression}.h5"
    t0 = time.perf_counter()
    with CacheWriter(path, meta=meta, compression=compression, overwrite=True) as w:
        for f in files:
            hr, lr = make_lr(read_image(f), ens.scale)
            o = ens(lr)
            w.write_sample(
                f.stem,
                lr=_u8(lr),
                hr=_u8(hr),
                srs=o.srs[0].numpy().astype(np.float16),
                feats=[x[0].numpy().astype(np.float16) for x in o.feats],
            )
        w.write_index([f.stem for f in files])
    full = time.perf_counter() - t0
    return alone, full, path


def png_crops_per_second(
    png_dir: Path, names: list[str], experts: tuple[str, ...], *, patch: int, scale: int, n: int
) -> float:
    """The alternative to a cache: SR outputs saved as PNG; every crop decodes each expert's whole PNG."""
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(n):
        name = names[i % len(names)]
        imgs = [read_image(png_dir / e / f"{name}.png") for e in experts]
        h, w = imgs[0].shape[-2:]
        t, l = rng.integers(0, h - scale * patch + 1), rng.integers(0, w - scale * patch + 1)
        _ = [im[..., t : t + scale * patch, l : l + scale * patch] for im in imgs]
    return n / (time.perf_counter() - t0)


def train_steps_per_second(path: Path, fusion_yaml: Path, *, patch: int, batch: int, steps: int) -> float:
    ds = CachedSRDataset(path, patch=patch, seed=0)
    cfg = load_fusion_config(fusion_yaml).with_feat_channels(ds.meta.feature_channels)
    model = FusionNet(config=cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = next(iter(DataLoader(ds, batch_size=batch, sampler=range(batch))))
    lr, hr, srs, feats = b["lr"], b["hr"], b["srs"], b["feats"]

    def step() -> None:
        loss = charbonnier_loss(model(lr, srs, feats).sr, hr)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=Path, default=REPO / "configs/experts/shared_real.yaml")
    ap.add_argument("--hr", type=Path, default=REPO.parent / "shared/data/val/Set14/HR")
    ap.add_argument("--fusion", type=Path, default=REPO / "configs/fusion.yaml")
    ap.add_argument("--limit", type=int, default=4, help="number of images")
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=20, help="batches timed per loader setting")
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_cache"))
    args = ap.parse_args(argv)

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    files = list_images(args.hr)[: args.limit]
    ens = ExpertEnsemble.from_yaml(args.experts)
    print(
        f"bench_cache: {len(files)} images from {args.hr}, experts {list(ens.names)}, "
        f"{torch.get_num_threads()} torch threads"
    )

    alone, full, path = bench_extraction(ens, files, args.out, "none")
    print(
        f"[extract] experts alone {alone / len(files):.2f} s/img | full extract path {full / len(files):.2f} s/img"
        f" | overhead ratio {full / alone:.3f} (target <= 1.10)"
    )
    _, _, path_lzf = bench_extraction(ens, files, args.out, "lzf")

    sizes = {}
    for label, p in (("none", path), ("lzf", path_lzf)):
        sizes[label] = sum(f.stat().st_size for f in p.with_name(p.name + ".d").glob("*.h5")) / len(files)
    n_exp = len(ens.names)
    print(
        f"[size] per image: none {sizes['none'] / 2**20:.2f} MiB, lzf {sizes['lzf'] / 2**20:.2f} MiB "
        f"(lzf/none {sizes['lzf'] / sizes['none']:.3f}); per image per expert: "
        f"none {sizes['none'] / n_exp / 2**20:.2f} MiB, lzf {sizes['lzf'] / n_exp / 2**20:.2f} MiB"
    )

    png_dir = args.out / "png"
    ds = CachedSRDataset(path, patch=args.patch)
    for i, name in enumerate(ds.reader.names):
        srs = ds.reader.read(i).srs
        for j, e in enumerate(ens.names):
            write_image(png_dir / e / f"{name}.png", srs[j])
    steps = train_steps_per_second(path, args.fusion, patch=args.patch, batch=args.batch, steps=args.train_steps)
    need = steps * args.batch
    print(
        f"[train] fusion ({args.fusion.name}) training at batch {args.batch}, patch {args.patch}: {steps:.3f} "
        f"steps/s = {need:.1f} crops/s needed"
    )
    for label, p in (("none", path), ("lzf", path_lzf)):
        for workers in (0, args.workers):
            rate = crops_per_second(p, patch=args.patch, batch=args.batch, workers=workers, batches=args.batches)
            print(
                f"[read] cache ({label}) with {workers} workers: {rate:.1f} crops/s = {rate / need:.1f}x the "
                f"training step rate (target >= 3x)"
            )
    png_rate = png_crops_per_second(
        png_dir, ds.reader.names, ens.names, patch=args.patch, scale=ens.scale, n=max(8, args.batch)
    )
    cache_rate0 = crops_per_second(path, patch=args.patch, batch=args.batch, workers=0, batches=args.batches)
    print(
        f"[read] PNG decode of the same SR outputs (8-bit!): {png_rate:.1f} crops/s; cache/PNG = "
        f"{cache_rate0 / png_rate:.1f}x (0 workers each)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("bench_cache", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
