"""Seconds per training step of single-expert configs (scripts/train_expert.py), measured side by side.

    python scripts/bench/bench_train_expert.py configs/experts/train/hat_s.yaml configs/experts/train/dat_s.yaml \\
        configs/experts/train/nafnet_sr.yaml [--steps 5] [--warmup 2] [--threads 1] [--set data.batch_size=8 ...]

For each config: the parameter count, then ``--warmup`` untimed and ``--steps`` timed training steps, run exactly as
the training loop runs them (``train_step``: forward, loss, backward, AdamW, EMA) — the configs take turns step by
step, so they share the same machine load. The batch assembly (crop + MATLAB-bicubic LR, plus image decoding unless
``data.cache_images``, whose cache is filled before timing) is timed separately. Prints per config the median (and
min / max) seconds per step and the projected hours for the config's ``train.steps``, then the ratios to the
fastest. Nothing is written (no run directory). On a shared, loaded machine absolute timings vary by 2× and more
between runs; the ratios of one run are the comparable numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from experts.architectures import count_parameters
from pipeline.core.cli import run_cli
from pipeline.training.ema import ModelEma
from pipeline.training.expert.config import load_expert_run_config
from pipeline.training.expert.trainer import build_dataset, build_loader, build_model, train_step
from pipeline.training.losses import charbonnier_loss, l1_loss


class Bench:
    """One config, ready to run training steps exactly as the training loop does."""

    def __init__(self, config: Path, overrides: list[str]) -> None:
        cfg = load_expert_run_config(config, overrides)
        t = cfg.train
        torch.manual_seed(t.seed)
        self.cfg, self.name = cfg, config.stem
        self.model = build_model(cfg).model
        dataset = build_dataset(cfg)
        dataset.warm_cache()  # steady state: with data.cache_images the images are decoded once, in the first epoch
        self.loader = iter(build_loader(cfg, dataset, start_step=0, device=torch.device("cpu")))
        self.ema = ModelEma(self.model, decay=t.ema_decay, warmup=t.ema_warmup)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
        self.loss_fn = l1_loss if t.loss == "l1" else charbonnier_loss
        self.data_s: list[float] = []
        self.step_s: list[float] = []

    def step(self, *, timed: bool) -> None:
        t0 = time.perf_counter()
        batch = next(self.loader)
        t1 = time.perf_counter()
        _, ok = train_step(
            self.model,
            self.optimizer,
            self.loss_fn,
            batch,
            device=torch.device("cpu"),
            grad_clip=self.cfg.train.grad_clip,
            use_bf16=False,
        )
        if ok:
            self.ema.update(self.model)  # as the training loop does after a taken step
        t2 = time.perf_counter()
        if timed:
            self.data_s.append(t1 - t0)
            self.step_s.append(t2 - t1)

    def summary(self) -> dict:
        total = [a + b for a, b in zip(self.data_s, self.step_s)]
        c = self.cfg
        return {
            "name": self.name,
            "arch": c.model.architecture,
            "params": count_parameters(self.model),
            "batch": c.data.batch_size,
            "patch": c.data.patch,
            "steps": c.train.steps,
            "s_per_step": statistics.median(total),
            "min": min(total),
            "max": max(total),
            "data": statistics.median(self.data_s),
        }


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", type=Path)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per config")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides applied to every config")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = [*args.set, "data.num_workers=0"]
    benches = [Bench(c, overrides) for c in args.configs]
    for i in range(args.warmup + args.steps):  # interleaved: every config sees the same machine load
        for b in benches:
            b.step(timed=i >= args.warmup)
    rows = [b.summary() for b in benches]
    for r in rows:
        print(
            f"{r['name']:>12s} {r['arch']:>9s} {r['params']:>9,d} params  batch {r['batch']:>2d} × {r['patch']}²: "
            f"{r['s_per_step']:.3f} s/step median (min {r['min']:.3f}, max {r['max']:.3f}; data {r['data']:.3f} s)"
            f" → {r['steps']} steps ≈ {r['steps'] * r['s_per_step'] / 3600:.2f} h "
            f"(≈ {r['steps'] * r['min'] / 3600:.2f} h at the min) at {args.threads} thread(s)",
            flush=True,
        )
    fastest = min(r["s_per_step"] for r in rows)
    print("ratio to the fastest: " + ", ".join(f"{r['name']} {r['s_per_step'] / fastest:.2f}" for r in rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("bench_train_expert", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
