"""Overhead of the expert path (padding + hooks + crops + clamp [+ tiling]) over a plain ``model(x)``, side by side.

    python scripts/bench/bench_experts.py [--config configs/experts/shared_real.yaml] [--images DIR] [--align 16]
                                    [--repeats 3] [--tile 0] [--only NAME,...] [--threads 2]

For every expert of the config, the same LR images (default: Set5 LR of ../shared, each cropped to the largest
multiple of ``--align`` per side; ``--align 1`` keeps their natural sizes) are run alternately through

* ``plain``: ``model(x)`` under ``torch.inference_mode()`` — no padding, no hooks, no crop;
* ``expert``: ``Expert.run(x)`` — what the ensemble does per expert (untiled unless the config or ``--tile`` tiles);
* ``tiled`` (only with ``--tile N``): ``Expert.run`` with ``tile=N``, ``tile_overlap=N//4``;

and the seconds per image (per image the fastest of ``--repeats`` back-to-back runs, averaged over images) is
printed with the ratio ``expert / plain``
(target: ≤ 1.05 untiled). With ``--align 1`` the ratio also contains the extra work of padding inputs to the
architecture's size multiple (CRAFT: 16) exactly as spandrel's descriptor call does — needed to reproduce the
reference outputs, but not free.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from experts.expert import Expert, load_expert
from experts.spec import load_ensemble_spec
from pipeline.core.cli import run_cli
from pipeline.core.imageio import list_images, read_image
from pipeline.core.resize import bicubic_upscale

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout this benchmark lies in

DEFAULT_IMAGES = REPO_ROOT.parent / "shared" / "data" / "val" / "Set5" / "LR_bicubic" / "X4"


def _inputs(folder: Path, align: int) -> list[torch.Tensor]:
    out = []
    for p in list_images(folder):
        lr = read_image(p)  # (1,3,H,W)
        h, w = lr.shape[-2:]
        if h < align or w < align:
            raise SystemExit(f"{p} is smaller than --align {align}")
        out.append(lr[..., : h - h % align, : w - w % align].contiguous())
    return out


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time_one(fn, x: torch.Tensor, dev: torch.device) -> float:
    _sync(dev)
    t = time.perf_counter()
    fn(x)
    _sync(dev)
    return time.perf_counter() - t


def bench_expert(expert: Expert, lrs: list[torch.Tensor], *, repeats: int, tiled: Expert | None) -> dict[str, float]:
    """Seconds per image of each path: per image the minimum over ``repeats`` (the least disturbed run), averaged
    over images. Paths run back to back on the same image, so bursts of machine load hit them alike."""
    dev, dtype = expert.device, expert.dtype
    xs = [lr if expert.in_factor == 1 else bicubic_upscale(lr, expert.ensemble_scale) for lr in lrs]
    xs = [x.to(dev) for x in xs]

    def plain(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return expert.model(x.to(dtype))

    paths = {"plain": plain, "expert": expert.run}
    if tiled is not None:
        paths["tiled"] = tiled.run
    for fn in paths.values():  # warm-up
        _time_one(fn, xs[0], dev)
    best = {k: [float("inf")] * len(xs) for k in paths}
    for _ in range(repeats):
        for i, x in enumerate(xs):
            for k, fn in paths.items():
                best[k][i] = min(best[k][i], _time_one(fn, x, dev))
    return {k: sum(v) / len(v) for k, v in best.items()}


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "experts" / "shared_real.yaml")
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of LR images")
    ap.add_argument("--align", type=int, default=16, help="crop LR sides to multiples of ALIGN (1: natural sizes)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tile", type=int, default=0, help="also time tiled inference with this LR tile size")
    ap.add_argument("--only", default="", help="comma-separated expert names to benchmark (default: all)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if not args.images.is_dir():
        print(f"bench_experts: image folder not found: {args.images}", file=sys.stderr)
        return 2
    lrs = _inputs(args.images, args.align)
    spec = load_ensemble_spec(args.config)
    sizes = sorted({tuple(x.shape[-2:]) for x in lrs})
    print(
        f"{len(lrs)} LR images {sizes if len(sizes) <= 5 else str(len(sizes)) + ' sizes'}, "
        f"best of {args.repeats} back-to-back runs per image, mean s/image, torch threads {torch.get_num_threads()}"
    )
    head = f"{'expert':<10} {'device':<8} {'plain':>9} {'expert':>9} {'ratio':>7}"
    print(head + (f" {'tiled':>9} {'ratio':>7}" if args.tile else ""))
    only = {n for n in args.only.split(",") if n}
    unknown = only - {e.name for e in spec.experts}
    if unknown:
        print(f"bench_experts: --only names unknown experts {sorted(unknown)}", file=sys.stderr)
        return 2
    for e_spec in spec.experts:
        if only and e_spec.name not in only:
            continue
        if e_spec.input.startswith("expert:"):
            print(f"{e_spec.name:<10} skipped (input {e_spec.input}: benchmark it on its own)")
            continue
        expert = load_expert(e_spec, ensemble_scale=spec.scale)
        tiled = None
        if args.tile:
            overlap = max(args.tile // 4, 1)
            tiled = load_expert(
                dataclasses.replace(e_spec, tile=args.tile, tile_overlap=overlap), ensemble_scale=spec.scale
            )
        t = bench_expert(expert, lrs, repeats=args.repeats, tiled=tiled)
        ratio = t["expert"] / t["plain"]
        row = f"{e_spec.name:<10} {expert.device!s:<8} {t['plain']:9.4f} {t['expert']:9.4f} {ratio:7.3f}"
        if tiled is not None:
            row += f" {t['tiled']:9.4f} {t['tiled'] / t['plain']:7.3f}"
        print(row, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("bench_experts", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
