"""Cost of each training-free ensembler next to the experts it combines, measured side by side in one run.

    python scripts/bench/bench_ensembles.py [--config configs/experts/shared_real.yaml] [--ensemblers fits/*.json]
                                      [--lr-size 96] [--repeats 3] [--threads 2]

One LR image of ``--lr-size``² pixels (the middle of Set5's baby when ../shared is there, else a smooth random
image) runs through the experts (``ExpertEnsemble``, the identity pass) and each ensembler's ``apply`` on their
outputs, alternately, ``--repeats`` times; the fastest time of each is printed per HR megapixel with the ensembler's
share of the experts' time (target: ≤ 5 % for every training-free ensembler). Ensemblers without a file (mean,
ZZPM) need none; blend and EnsIR are read from ``--ensemblers`` or, without them, fitted on the image itself (the
cost of applying does not depend on the weights).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from experts.ensemble import ExpertEnsemble
from pipeline.core.cli import run_cli
from pipeline.core.imageio import read_image
from pipeline.inference.ensemblers import apply, fit, load

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout this benchmark lies in

BABY = REPO_ROOT.parent / "shared" / "data" / "val" / "Set5" / "LR_bicubic" / "X4" / "babyx4.png"


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="bench_ensembles.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "experts" / "shared_real.yaml")
    ap.add_argument("--ensemblers", type=Path, nargs="*", default=[])
    ap.add_argument("--lr-size", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    s = args.lr_size
    if BABY.is_file():
        full = read_image(BABY)
        top, left = (full.shape[-2] - s) // 2, (full.shape[-1] - s) // 2
        lr = full[..., max(top, 0) : max(top, 0) + s, max(left, 0) : max(left, 0) + s].contiguous()
    else:
        lr = torch.nn.functional.interpolate(
            torch.rand(1, 3, s // 8, s // 8, generator=torch.Generator().manual_seed(0)), size=(s, s), mode="bicubic"
        ).clamp(0, 1)
    ensemble = ExpertEnsemble.from_yaml(args.config)
    fps = [fp.to_dict() for fp in ensemble.fingerprints]
    with torch.inference_mode():
        srs = ensemble(lr).srs  # (1,E,3,sH,sW)
        fake_hr = srs.mean(dim=1)
        peers = [fit("mean", [], experts=fps), fit("zzpm", [], experts=fps)]
        files = {e.method: e for e in (load(p, experts=fps) for p in args.ensemblers)}
        for m in ("blend", "ensir"):
            peers.append(files.get(m) or fit(m, [(srs, fake_hr)], experts=fps, border=0))
        mp = srs.shape[-1] * srs.shape[-2] / 1e6
        t_experts = _best(lambda: ensemble(lr), args.repeats)
        rows = [(p.method, _best(lambda p=p: apply(p, srs), args.repeats)) for p in peers]
    print(
        f"bench_ensembles: LR {s}x{s} -> HR {mp:.3f} MP, experts {list(ensemble.names)}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    print(f"{'what':<14}{'s / HR MP':>12}{'share of experts':>18}")
    print(f"{'experts':<14}{t_experts / mp:12.3f}{'100.0 %':>18}")
    for name, t in rows:
        print(f"{name:<14}{t / mp:12.4f}{100 * t / t_experts:16.2f} %")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("bench_ensembles", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
