"""The fusion's gain over the best training-free peer against the number of training images (nested subsets).

    python scripts/research/learning_curve.py configs/train/fusion_esr_pool.yaml --sizes 50 100 200 291 \\
        --score caches/pool_set14.h5 caches/pool_bsd100.h5 [--runs-prefix lc] [--out results/learning_curve]
        [train overrides ...]

For each size N (the first N of one fixed permutation of the training cache: ``cache.dataset.image_subset``, so the
subsets are nested): the peers (``blend``, ``blend_reg``, ``topk``) are fitted on those N images (``--fits-dir``,
default ``fits/<prefix>/``: ``N_<method>.json``), the recipe is trained on them with its set gate starting at that
``blend_reg`` (``runs/<prefix>_N``; a finished run is reused, an interrupted one resumed), and the final weights are
scored on every
``--score`` cache against every peer fitted on the same N images, the plain mean and ZZPM (no TTA). Prints and writes
the table: per N and test set, the fusion's PSNR-Y, the best peer's (chosen on that set: the strongest alternative,
in hindsight) and the gain. Same recipe, same selection rule (none: the final weights) at every size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cache.reader import CacheReader
from pipeline.core.atomic import atomic_write_text
from pipeline.core.cli import run_cli, run_program
from pipeline.core.outputs import check_output_file
from pipeline.evaluation.cached import fit_on_cache, score_cached
from pipeline.inference.ensemblers import fit, load, save
from pipeline.model.io import load_pretrained, read_extra, resolve_checkpoint, verify_checksums
from pipeline.training.config import load_run_config

REPO = Path(__file__).resolve().parents[2]
PEERS = ("blend", "blend_reg", "topk")


def _is_ours(path: Path) -> bool:
    try:
        return "points" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _finished(run: Path, steps: int) -> bool:
    try:
        return int(read_extra(resolve_checkpoint(run, which="last")).get("step", -1)) >= steps
    except Exception:  # noqa: BLE001 - no complete checkpoint yet
        return False


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="learning_curve.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("config", type=Path, help="the fusion recipe (configs/train/*.yaml with a set gate)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.threads=1")
    ap.add_argument("--sizes", type=int, nargs="+", required=True, help="training images per point")
    ap.add_argument("--score", type=Path, nargs="+", required=True, help="caches of the test sets (with HR)")
    ap.add_argument("--runs-prefix", default="lc", help="runs/<prefix>_N and fits/<prefix>/")
    ap.add_argument("--fits-dir", type=Path, default=None, help="where the peers are fitted (default fits/<prefix>)")
    ap.add_argument("--out", type=Path, default=None, help="OUT.json and OUT.md")
    args = ap.parse_args(argv)
    cfg = load_run_config(args.config, args.overrides)
    if not cfg.model.set_gate.enabled:
        ap.error(f"{args.config}: the learning curve moves the set gate's base blend; set_gate is not enabled")
    if args.out is not None:
        check_output_file(args.out.with_suffix(".json"), ours=_is_ours, create_parents=True, label="--out")
    cache = Path(cfg.data.train_cache)
    reader = CacheReader(cache)
    total, fps = len(reader), list(reader.meta.experts)
    reader.close()
    bad = [n for n in args.sizes if not 1 <= n <= total]
    if bad:
        ap.error(f"--sizes {bad}: the training cache {cache} holds {total} images")
    fits_dir = args.fits_dir or REPO / "fits" / args.runs_prefix
    points = []
    for n in args.sizes:
        peers = []
        for method in PEERS:
            path = fits_dir / f"{n}_{method}.json"
            if not path.is_file():
                save(fit_on_cache(method, cache, images=n), path)
            peers.append(load(path, experts=fps))
        base = [round(float(w), 6) for w in peers[PEERS.index("blend_reg")].weights]
        run = Path(cfg.train.runs_dir) / f"{args.runs_prefix}_{n}"
        if not _finished(run, cfg.train.steps):
            overrides = [
                *args.overrides,
                f"train.name={run.name}",
                f"data.images={n}",
                f"model.set_gate.base=[{','.join(map(str, base))}]",
            ]
            resume = ["--resume", str(run)] if (run / "config.yaml").is_file() else [str(args.config)]
            code = run_program(REPO / "train.py", [*resume, *([] if resume[0] == "--resume" else overrides)])
            if code:
                return code
        ckpt = resolve_checkpoint(run, which="last")
        verify_checksums(ckpt)
        fusion = load_pretrained(ckpt)
        everyone = [fit("mean", [], experts=fps), fit("zzpm", [], experts=fps), *peers]
        for test in args.score:
            rows = score_cached(test, fusions=[("fusion", fusion, read_extra(ckpt)["experts"])], ensemblers=everyone)
            mean = {r.method: r.mean_psnr for r in rows}
            best_peer = max((r for r in rows if r.kind == "ensembler"), key=lambda r: r.mean_psnr)
            points.append(
                {
                    "images": n,
                    "test": test.stem,
                    "fusion": mean["fusion"],
                    "best_peer": best_peer.method,
                    "best_peer_psnr": best_peer.mean_psnr,
                    "gain": mean["fusion"] - best_peer.mean_psnr,
                    "gain_over_blend_reg": mean["fusion"] - mean["blend_reg"],
                    "gain_over_mean": mean["fusion"] - mean["mean"],
                    "psnr": mean,
                }
            )
            print(
                f"learning_curve: {n} images, {test.stem}: fusion {mean['fusion']:.4f}, best peer "
                f"{best_peer.method} {best_peer.mean_psnr:.4f} → {points[-1]['gain']:+.4f} dB",
                flush=True,
            )
    lines = [
        "| training images | test set | fusion PSNR-Y | best peer | its PSNR-Y | gain | over blend_reg | over mean |",
        "|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p['images']} | {p['test']} | {p['fusion']:.4f} | {p['best_peer']} | {p['best_peer_psnr']:.4f} | "
            f"{p['gain']:+.4f} | {p['gain_over_blend_reg']:+.4f} | {p['gain_over_mean']:+.4f} |"
        )
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out is not None:
        atomic_write_text(args.out.with_suffix(".json"), json.dumps({"points": points, "config": str(args.config)}))
        atomic_write_text(args.out.with_suffix(".md"), md)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("learning_curve", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
