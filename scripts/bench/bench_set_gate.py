"""Cost of one training step of the set-gate fusion (configs/train/fusion_esr_pool.yaml's model) against the number
of experts: E = 3, 11, 20 by default, each expert with a hooked feature map of --feat-channels channels (the pool's
widths are 20-48; 0 = SR outputs only).

    python scripts/bench/bench_set_gate.py [--config configs/train/fusion_esr_pool.yaml] [--experts 3 11 20] \\
        [--batch 12 --crop 24] [--repeats 5] [--threads 2] [--feat-channels 32]

For each E: parameters (one network is shared by all experts; only each expert's feature projection adds any), FLOPs of
one forward+backward (torch.utils.flop_counter), the median wall/CPU time of one training step (forward, Y-MSE,
backward, AdamW) on random inputs of the training shape, and its peak extra resident memory — with each figure's ratio
to the first E. Numbers from one run are comparable side by side; other processes on the CPU inflate them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.core.bench import peak_extra_memory_mib, timed
from pipeline.core.cli import run_cli
from pipeline.model.fusion_config import SCALE, load_fusion_config
from pipeline.model.fusion_net import FusionNet
from pipeline.training.losses import mse_y_loss

REPO = Path(__file__).resolve().parents[2]


def step_fn(
    model: FusionNet,
    opt: torch.optim.Optimizer,
    lr: torch.Tensor,
    srs: torch.Tensor,
    feats: list[torch.Tensor],
    hr: torch.Tensor,
):
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = mse_y_loss(model(lr, srs, feats).sr, hr)
        loss.backward()
        opt.step()

    return step


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="bench_set_gate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "train" / "fusion_esr_pool.yaml")
    ap.add_argument("--experts", type=int, nargs="+", default=[3, 11, 20])
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--crop", type=int, default=24, help="LR crop side")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--feat-channels",
        type=int,
        default=32,
        help="width of each expert's hooked feature map (0: SR outputs only, model.inputs.features=false)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base_cfg = load_fusion_config(args.config)
    rows = []
    for e in args.experts:
        cfg = dataclasses.replace(
            base_cfg,
            inputs=dataclasses.replace(
                base_cfg.inputs, features=args.feat_channels > 0, feat_channels=(args.feat_channels,) * e
            ),
            set_gate=dataclasses.replace(base_cfg.set_gate, base=None),
        )
        torch.manual_seed(0)
        model = FusionNet(config=cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        b, p = args.batch, args.crop
        lr = torch.rand(b, 3, p, p)
        srs = torch.rand(b, e, 3, SCALE * p, SCALE * p)
        hr = torch.rand(b, 3, SCALE * p, SCALE * p)
        feats = [torch.rand(b, args.feat_channels, p, p) for _ in range(e)] if args.feat_channels else []
        step = step_fn(model, opt, lr, srs, feats, hr)
        with FlopCounterMode(display=False) as counter:
            mse_y_loss(model(lr, srs, feats).sr, hr).backward()
        wall, cpu = timed(step, repeats=args.repeats)
        mem = peak_extra_memory_mib(step)
        rows.append((e, sum(q.numel() for q in model.parameters()), counter.get_total_flops() / 1e9, wall, cpu, mem))
    first = rows[0]
    print(
        f"set-gate fusion ({args.config.name}), one training step at batch {args.batch} of {args.crop}² LR crops, "
        f"{args.threads} threads, hooked features {args.feat_channels or 'off'}"
        + (f" ({args.feat_channels} channels per expert)" if args.feat_channels else "")
    )
    head = f"| E | parameters | GFLOP / step | s / step (wall) | s / step (CPU) | peak extra MiB | × E={first[0]} "
    print(head + "(FLOP, wall, MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for e, n, gf, wall, cpu, mem in rows:
        memtxt = f"{mem:.0f}" if mem is not None else "-"
        ratio_mem = f"{mem / first[5]:.2f}" if mem and first[5] else "-"
        print(
            f"| {e} | {n:,} | {gf:.2f} | {wall:.3f} | {cpu:.3f} | {memtxt} | "
            f"{gf / first[2]:.2f}, {wall / first[3]:.2f}, {ratio_mem} |"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("bench_set_gate", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
