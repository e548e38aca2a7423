"""Cached vs live fusion training speed, measured side by side in one run, plus a HAT-L estimate.

    python scripts/bench/bench_training.py [--experts configs/experts/shared_real.yaml] [--cache CACHE.h5]
                                     [--hr ../shared/data/val/Set14/HR] [--batch 16] [--patch 48] [--steps 3]

* cached: a training step on crops read from the HDF5 cache (reading included);
* live: the same step, but every batch first runs the frozen experts (what training without a cache costs);
* HAT-L: spandrel's HAT with the HAT-L hyper-parameters (embed 180, 12 groups of 6 blocks, window 16) built with
  random weights — only its forward time matters — timed on one LR crop; the live step estimate for an ensemble
  containing it is ``cached step + measured expert time``.
Without --cache a small cache is extracted from --hr first (not timed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cache.dataset import CachedSRDataset
from experts.ensemble import ExpertEnsemble
from pipeline.core.bench import timed
from pipeline.core.cli import run_cli
from pipeline.model.fusion_config import load_fusion_config
from pipeline.model.fusion_net import FusionNet
from pipeline.training.losses import charbonnier_loss

REPO = Path(__file__).resolve().parents[2]


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=Path, default=REPO / "configs/experts/shared_real.yaml")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--hr", type=Path, default=REPO.parent / "shared/data/val/Set14/HR")
    ap.add_argument("--fusion", type=Path, default=REPO / "configs/fusion.yaml")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--skip-hat", action="store_true")
    args = ap.parse_args(argv)

    cache = args.cache
    if cache is None:
        from cache.extract import extract

        cache = Path("/tmp/bench_training/cache.h5")
        if not cache.exists():
            files = sorted(args.hr.iterdir())[:3]
            sub = cache.parent / "hr"
            sub.mkdir(parents=True, exist_ok=True)
            for f in files:
                (sub / f.name).write_bytes(f.read_bytes())
            extract(experts=args.experts, hr_dirs=[sub], out=cache)

    ens = ExpertEnsemble.from_yaml(args.experts, grad_mode="no_grad")
    ds = CachedSRDataset(cache, patch=args.patch, seed=0)
    cfg = load_fusion_config(args.fusion).with_feat_channels(ds.meta.feature_channels)
    model = FusionNet(config=cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = iter(DataLoader(ds, batch_size=args.batch, sampler=range(10**9), num_workers=0))
    print(
        f"bench_training: batch {args.batch}, LR patch {args.patch}, experts {list(ens.names)}, "
        f"fusion {sum(p.numel() for p in model.parameters()) / 1e3:.0f}K params, {torch.get_num_threads()} threads"
    )

    def step(lr, hr, srs, feats) -> None:
        loss = charbonnier_loss(model(lr, srs, feats).sr, hr)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def cached_step() -> None:
        b = next(loader)
        step(b["lr"], b["hr"], b["srs"], b["feats"])

    def live_step() -> None:
        b = next(loader)
        srs, feats = ens(b["lr"])  # the experts run on every batch
        step(b["lr"], b["hr"], srs, feats)

    def experts_only() -> None:
        ens(next(loader)["lr"])

    t_cached = timed(cached_step, repeats=args.steps)[0]
    t_live = timed(live_step, repeats=args.steps)[0]
    t_exp = timed(experts_only, repeats=args.steps)[0]
    print(f"[cached] {1 / t_cached:.3f} steps/s ({t_cached:.2f} s/step)")
    print(f"[live]   {1 / t_live:.3f} steps/s ({t_live:.2f} s/step; the experts alone take {t_exp:.2f} s/batch)")
    print(f"[ratio]  cached training is {t_live / t_cached:.1f}x faster than live training with these experts")

    if not args.skip_hat:
        from spandrel.architectures.HAT import HAT

        hat = HAT(
            img_size=64,
            upscale=4,
            embed_dim=180,
            depths=[6] * 12,
            num_heads=[6] * 12,
            window_size=16,
            compress_ratio=3,
            squeeze_factor=30,
            conv_scale=0.01,
            overlap_ratio=0.5,
            mlp_ratio=2.0,
            upsampler="pixelshuffle",
            resi_connection="1conv",
        ).eval()
        n_params = sum(p.numel() for p in hat.parameters())
        x = torch.rand(1, 3, args.patch, args.patch)
        with torch.inference_mode():
            t_hat1 = timed(lambda: hat(x), repeats=1)[0]
        t_hat = t_hat1 * args.batch
        print(
            f"[HAT-L]  {n_params / 1e6:.1f}M params (random weights, timing only): {t_hat1:.2f} s per "
            f"{args.patch}x{args.patch} crop → {t_hat:.1f} s per batch of {args.batch}"
        )
        print(
            f"[ratio]  estimate with HAT-L added to the live experts: "
            f"{(t_live + t_hat) / t_cached:.0f}x slower than cached training"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("bench_training", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
