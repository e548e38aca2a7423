"""Benchmark the fusion network on CPU: training-shaped batches, a full DIV2K-size image, and the real experts.

    python scripts/bench/bench_fusion.py                                   # everything (several minutes on 2 cores)
    python scripts/bench/bench_fusion.py --batch 4 --crop 32 --variants all --no-experts --no-full   # quick

Reports, for the full model and with each phase switched off (``--variants``):
* train: forward and forward+backward time on ``--batch`` random LR crops of ``--crop``² (default 16 × 64²);
* full:  inference forward time and peak extra memory (resident-set peak above the level before the run, with
  glibc's mmap threshold lowered so freed tensors leave the resident set) on one ``--full`` LR image (default
  510×339, the size of a DIV2K ×4 LR image);
and the three real experts' inference time on the same full image (spandrel, ``--weights-dir``), with the fusion's
time as a percentage of the experts' total (target: ≤ 25 %).

Inputs are random tensors of the right shapes (timing does not depend on content); the experts' features are not
hooked (their cost is the experts' forward). Times are the median of ``--repeats`` runs after one warm-up run,
except the experts (one run each: CRAFT alone takes minutes on 2 cores). Other processes sharing the CPU inflate
and scatter every number: compare numbers from one run, side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.core.bench import peak_extra_memory_mib, timed
from pipeline.core.cli import run_cli
from pipeline.model.fusion_config import PHASE_SWITCHES, SCALE, FusionConfig, load_fusion_config
from pipeline.model.fusion_net import FusionNet

REPO = Path(__file__).resolve().parents[2]
SWITCHES = tuple(s for s in PHASE_SWITCHES if s != "set_gate")  # the set gate is off by default: nothing to remove
EXPERTS = ("craft_x4.pth", "ditn_x4.pth", "span_ch28_x4.pth")


# --------------------------------------------------------------------------------------------------------------------
# measurement helpers
# --------------------------------------------------------------------------------------------------------------------
def variant_configs(base: FusionConfig, names: list[str]) -> list[tuple[str, str, FusionConfig]]:
    """(key, label, config) for "all_on" and for each phase name switched off."""
    out = []
    for name in names:
        if name == "all_on":
            out.append((name, "all on", base))
            continue
        sub = getattr(base, name)
        cfg = dataclasses.replace(base, **{name: dataclasses.replace(sub, enabled=False)})
        if name in ("edge", "refine") and cfg.hessian.enabled and not (cfg.edge.enabled or cfg.refine.enabled):
            cfg = dataclasses.replace(cfg, hessian=dataclasses.replace(cfg.hessian, enabled=False))
        out.append((name, f"{name} off", cfg))
    return out


def make_inputs(cfg: FusionConfig, batch: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    lr = torch.rand(batch, 3, h, w)
    srs = torch.rand(batch, cfg.num_experts, 3, SCALE * h, SCALE * w)
    feats = [torch.randn(batch, c, h, w) for c in cfg.inputs.feat_channels]
    return lr, srs, feats


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------------------------------
def bench_train(variants: list[tuple[str, str, FusionConfig]], batch: int, crop: int, repeats: int) -> None:
    print(f"\n## train shape: batch {batch} × LR {crop}×{crop} (HR {SCALE * crop}²), median of {repeats}")
    print(f"{'variant':20s} {'params':>9s} {'fwd s':>8s} {'(cpu s)':>8s} {'fwd+bwd s':>10s} {'(cpu s)':>8s}")
    for _, name, cfg in variants:
        torch.manual_seed(0)
        model = FusionNet(config=cfg).train()
        lr, srs, feats = make_inputs(cfg, batch, crop, crop)
        hr = torch.rand(batch, 3, SCALE * crop, SCALE * crop)
        t_fwd = timed(functools.partial(train_forward, model, lr, srs, feats), repeats=repeats)
        t_fb = timed(functools.partial(train_step, model, lr, srs, feats, hr), repeats=repeats)
        print(
            f"{name:20s} {n_params(model):9,d} {t_fwd[0]:8.3f} {t_fwd[1]:8.3f} {t_fb[0]:10.3f} {t_fb[1]:8.3f}",
            flush=True,
        )


def train_forward(model: FusionNet, lr: torch.Tensor, srs: torch.Tensor, feats: list[torch.Tensor]) -> None:
    model(lr, srs, feats)


def train_step(
    model: FusionNet, lr: torch.Tensor, srs: torch.Tensor, feats: list[torch.Tensor], hr: torch.Tensor
) -> None:
    model.zero_grad(set_to_none=True)
    out = model(lr, srs, feats)
    ((out.sr - hr).abs().mean() + 0.01 * out.load_balance_loss).backward()


def infer(model: FusionNet, lr: torch.Tensor, srs: torch.Tensor, feats: list[torch.Tensor]) -> None:
    with torch.inference_mode():
        model(lr, srs, feats)


def memory_probe(args: argparse.Namespace, variant: str) -> int:
    """Child process: peak resident memory of one full-image forward above the level just before it."""
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.full.lower().split("x"))
    base = load_fusion_config(args.config, args.overrides)
    ((_, _, cfg),) = variant_configs(base, [variant])
    model = FusionNet(config=cfg).eval()
    lr, srs, feats = make_inputs(cfg, 1, h, w)
    mem = peak_extra_memory_mib(functools.partial(infer, model, lr, srs, feats))
    print("n/a" if mem is None else f"{mem:.0f}")
    return 0


def peak_memory_in_child(args: argparse.Namespace, variant: str) -> str:
    """Run :func:`memory_probe` in a fresh process with glibc's mmap threshold at 64 KiB: every tensor is its own
    mapping, returned to the OS when freed, so the resident-set peak measures the pass itself (this slows the pass
    down, which is why it is not the timed run)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--config", str(args.config), *args.overrides]
    cmd += ["--full", args.full, "--threads", str(args.threads), "--memory-probe", variant]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory probe for {variant!r} failed:\n{res.stderr[-2000:]}")
    return res.stdout.strip().splitlines()[-1]


def bench_full(
    args: argparse.Namespace, variants: list[tuple[str, str, FusionConfig]], w: int, h: int
) -> dict[str, tuple[float, float]]:
    print(f"\n## full image: LR {w}×{h} → HR {SCALE * w}×{SCALE * h}, inference, median of {args.repeats}")
    print(f"{'variant':20s} {'fwd s':>8s} {'(cpu s)':>8s} {'peak extra MiB':>15s}")
    results = {}
    for key, name, cfg in variants:
        torch.manual_seed(0)
        model = FusionNet(config=cfg).eval()
        lr, srs, feats = make_inputs(cfg, 1, h, w)
        wall, cpu = timed(functools.partial(infer, model, lr, srs, feats), repeats=args.repeats)
        del model, lr, srs, feats
        mem = peak_memory_in_child(args, key)
        results[name] = (wall, cpu)
        print(f"{name:20s} {wall:8.3f} {cpu:8.3f} {mem:>15s}", flush=True)
    return results


def bench_experts(weights_dir: Path, w: int, h: int) -> dict[str, tuple[float, float]]:
    import spandrel

    print(f"\n## experts (spandrel, one run each after a 32×32 warm-up) on LR {w}×{h}")
    lr = torch.rand(1, 3, h, w)
    results = {}
    for name in EXPERTS:
        path = weights_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"expert weights not found: {path} (use --weights-dir or --no-experts)")
        desc = spandrel.ModelLoader().load_from_file(path)
        model = desc.model.eval()
        req = desc.size_requirements
        mult = max(req.multiple_of, 1)
        ph = max(req.minimum, h + (-h) % mult) - h
        pw = max(req.minimum, w + (-w) % mult) - w
        x = F.pad(lr, (0, pw, 0, ph), mode="reflect") if (ph or pw) else lr
        with torch.inference_mode():
            model(torch.rand(1, 3, max(32, req.minimum), max(32, req.minimum)))
            w0, c0 = time.perf_counter(), time.process_time()
            model(x)
            results[name] = (time.perf_counter() - w0, time.process_time() - c0)
        wall, cpu = results[name]
        print(f"{name:20s} {wall:8.3f} s (cpu {cpu:8.3f} s), input padded to {x.shape[-1]}×{x.shape[-2]}", flush=True)
    return results


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "fusion.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides (model.x.y=value)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64, help="LR crop side for the train-shape benchmark")
    parser.add_argument("--full", default="510x339", help="full-image LR size WxH")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--variants",
        default="all",
        help="'all' (all on + each phase off), 'on' (all on only), or a comma list of phases to switch off",
    )
    parser.add_argument("--weights-dir", type=Path, default=REPO.parent / "shared" / "weights")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-full", action="store_true")
    parser.add_argument("--no-experts", action="store_true")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)  # internal: one variant's peak memory
    args = parser.parse_intermixed_args(argv)  # dotted overrides may follow the options
    if args.memory_probe is not None:
        return memory_probe(args, args.memory_probe)

    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.full.lower().split("x"))
    base = load_fusion_config(args.config, args.overrides)
    if args.variants == "all":
        names = ["all_on", *SWITCHES]
    elif args.variants == "on":
        names = ["all_on"]
    else:
        names = ["all_on", *args.variants.split(",")]
        unknown = [n for n in names[1:] if n not in SWITCHES]
        if unknown:
            parser.error(f"unknown phase(s) {unknown}; choose from {SWITCHES}")
    variants = variant_configs(base, names)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible, "
        f"load average {os.getloadavg()[0]:.1f} (other processes share these cores)"
    )
    print(f"config {args.config} {' '.join(args.overrides)}; params (all on): {n_params(FusionNet(config=base)):,d}")

    if not args.no_train:
        bench_train(variants, args.batch, args.crop, args.repeats)
    full = {} if args.no_full else bench_full(args, variants, w, h)
    if not args.no_experts:
        experts = bench_experts(args.weights_dir, w, h)
        wall = sum(v[0] for v in experts.values())
        cpu = sum(v[1] for v in experts.values())
        print(f"{'experts total':20s} {wall:8.3f} s (cpu {cpu:8.3f} s)")
        if "all on" in full:
            fw, fc = full["all on"]
            print(
                f"\nfusion (all on) adds {100 * fw / wall:.1f} % wall / {100 * fc / cpu:.1f} % CPU time to the "
                f"experts' inference ({fw:.2f} s vs {wall:.2f} s wall; target ≤ 25 %)"
            )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("bench_fusion", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
