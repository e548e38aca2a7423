"""Print the fusion network's trainable parameters per module (grouped by phase) and the total.

python scripts/research/count_params.py configs/fusion.yaml [model.freq.enabled=false ...] [--depth 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from pipeline.core.cli import run_cli
from pipeline.model.fusion_config import load_fusion_config
from pipeline.model.fusion_net import FusionNet

PHASES = {
    "embed": "1 inputs",
    "freq": "2 frequency decomposition",
    "band_fusion": "2 band fusion",
    "cross_band": "3 cross-band attention + LKA",
    "cross_expert": "4 cross-expert attention + LKA",
    "fourier_unit": "  FFT global branch",
    "hierarchical": "5 hierarchical fusion",
    "gating": "6 expert gating",
    "start_mix": "6 start-expert mix",
    "hessian": "7 Hessian detail attention",
    "refine": "7 refinement CNN",
    "lr_residual": "7 LR residual",
    "edge": "7 Laplacian edge enhancement",
}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="YAML file with a 'model:' section")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.gating.enabled=false")
    parser.add_argument("--depth", type=int, default=1, help="also list sub-modules down to this depth")
    args = parser.parse_intermixed_args(argv)  # dotted overrides may follow the options

    cfg = load_fusion_config(args.config, args.overrides)
    model = FusionNet(config=cfg)
    total = count(model)
    print(f"config: {args.config}  experts: {cfg.num_experts}  feature widths: {cfg.inputs.feat_channels}")
    print(f"{'module':48s} {'phase':32s} {'params':>10s} {'share':>7s}")
    named = dict(model.named_parameters())
    for name, child in model.named_children():
        if child is None:
            continue
        n = count(child)
        print(f"{name:48s} {PHASES.get(name, '?'):32s} {n:10,d} {100 * n / total:6.1f}%")
        if args.depth > 1:
            for pname, p in child.named_parameters(recurse=False):
                print(f"  {name + '.' + pname:46s} {'':32s} {p.numel():10,d}")
            for sub_name, sub in child.named_modules():
                level = sub_name.count(".") + 1
                if sub_name and level < args.depth:
                    print(f"  {name + '.' + sub_name:46s} {'':32s} {count(sub):10,d}")
    for name, p in named.items():  # parameters held directly by the model
        if "." not in name:
            print(f"{name:48s} {PHASES.get(name, '?'):32s} {p.numel():10,d} {100 * p.numel() / total:6.1f}%")
    print(f"{'total':48s} {'':32s} {total:10,d}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("count_params", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
