"""The fusion's gain over the best training-free peer against the amount of training data.

    python scripts/research/learning_curve.py configs/train/fusion_esr_pool.yaml --sizes 50 100 200 291 \\
        --score caches/pool_set14.h5 caches/pool_bsd100.h5 [--runs-prefix lc] [--out results/learning_curve]
        [train overrides ...]
    python scripts/research/learning_curve.py configs/train/fusion_esr_pool.yaml \\
        --caches caches/pool_train_ms_feat.h5 caches/pool_ms_urban.h5 caches/pool_all.h5 --score ...

A point is either a size N (``--sizes``: the first N of one fixed permutation of the recipe's training cache,
``cache.dataset.image_subset``, so the subsets are nested) or a whole training cache (``--caches``: e.g. caches
merged with ``sr-fusion merge-caches`` as data is added). For each point the peers (``blend``, ``blend_reg``,
``topk``) are fitted on exactly its images (``--fits-dir``, default ``fits/<prefix>/``: ``N_<method>.json`` or
``<cache stem>_<method>.json``), the recipe is trained on them with its set gate starting at that ``blend_reg``
(``runs/<prefix>_N`` or ``runs/<prefix>_<cache stem>``; a finished run is reused, an interrupted one resumed), and
the final weights are scored on every ``--score`` cache against every peer fitted on the same images, the plain mean
and ZZPM (no TTA). Prints and writes the table: per point and test set, the training images and their HR Mpx, the
fusion's PSNR-Y, the best peer's (chosen on that set: the strongest alternative, in hindsight) and the gains over it,
over ``blend_reg`` and over the plain mean, each with its paired bootstrap 95 % interval over the test images
(:mod:`pipeline.evaluation.bootstrap`). Same recipe, same selection rule (none: the final weights) at every point.
``--reuse EARLIER.json ...``: a point and test set already scored there with the same checkpoint bytes (sha256 of
``model.safetensors``, kept with every point) is taken from it, so a table grown by one point or one test set
rescores only what is new.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cache.dataset import image_subset
from cache.reader import CacheReader
from pipeline.core.atomic import atomic_write_text
from pipeline.core.cli import run_cli, run_program
from pipeline.core.outputs import check_table_outputs
from pipeline.evaluation.bootstrap import paired_interval
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


def _hr_mpx(reader: CacheReader, indices: list[int]) -> float:
    return sum(h * w for h, w in (reader.lr_size(i) for i in indices)) * reader.scale**2 / 1e6


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="learning_curve.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("config", type=Path, help="the fusion recipe (configs/train/*.yaml with a set gate)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.threads=1")
    ap.add_argument("--sizes", type=int, nargs="+", default=[], help="points: this many of the recipe's images")
    ap.add_argument("--caches", type=Path, nargs="+", default=[], help="points: every image of each training cache")
    ap.add_argument("--score", type=Path, nargs="+", required=True, help="caches of the test sets (with HR)")
    ap.add_argument("--runs-prefix", default="lc", help="runs/<prefix>_<point> and fits/<prefix>/")
    ap.add_argument("--fits-dir", type=Path, default=None, help="where the peers are fitted (default fits/<prefix>)")
    ap.add_argument("--out", type=Path, default=None, help="OUT.json and OUT.md")
    ap.add_argument(
        "--reuse",
        type=Path,
        nargs="*",
        default=[],
        help="earlier OUT.json files: a (point, test set) scored there with the same checkpoint bytes is not rescored",
    )
    args = ap.parse_args(argv)
    if not args.sizes and not args.caches:
        ap.error("give the points: --sizes N ... and/or --caches CACHE ...")
    cfg = load_run_config(args.config, args.overrides)
    if not cfg.model.set_gate.enabled:
        ap.error(f"{args.config}: the learning curve moves the set gate's base blend; set_gate is not enabled")
    if args.out is not None:
        check_table_outputs(args.out, ours=_is_ours)  # OUT.json and OUT.md
    # (label, training cache, images: None = all of it, its image indices, HR Mpx, experts' fingerprints)
    specs = []
    if args.sizes:
        cache = Path(cfg.data.train_cache)
        reader = CacheReader(cache)
        bad = [n for n in args.sizes if not 1 <= n <= len(reader)]
        if bad:
            ap.error(f"--sizes {bad}: the training cache {cache} holds {len(reader)} images")
        for n in args.sizes:
            subset = image_subset(len(reader), n)
            specs.append((str(n), cache, n, len(subset), _hr_mpx(reader, subset), list(reader.meta.experts)))
        reader.close()
    for cache in args.caches:
        reader = CacheReader(cache)
        every = list(range(len(reader)))
        specs.append((cache.stem, cache, None, len(every), _hr_mpx(reader, every), list(reader.meta.experts)))
        reader.close()
    fits_dir = args.fits_dir or REPO / "fits" / args.runs_prefix
    earlier = {}
    for path in args.reuse:
        if not _is_ours(path):
            ap.error(f"--reuse {path}: not a learning-curve JSON (no 'points')")
        for p in json.loads(path.read_text(encoding="utf-8"))["points"]:
            if "checkpoint_sha256" in p:
                earlier[(p["point"], p["test"], p["checkpoint_sha256"])] = p
    points = []
    for label, cache, n, count, mpx, fps in specs:
        peers = []
        for method in PEERS:
            path = fits_dir / f"{label}_{method}.json"
            if not path.is_file():
                save(fit_on_cache(method, cache, images=n), path)
            peers.append(load(path, experts=fps))
        base = [round(float(w), 6) for w in peers[PEERS.index("blend_reg")].weights]
        run = Path(cfg.train.runs_dir) / f"{args.runs_prefix}_{label}"
        if not _finished(run, cfg.train.steps):
            overrides = [
                *args.overrides,
                f"train.name={run.name}",
                f"data.train_cache={cache}",
                *([f"data.images={n}"] if n is not None else []),
                f"model.set_gate.base=[{','.join(map(str, base))}]",
            ]
            resume = ["--resume", str(run)] if (run / "config.yaml").is_file() else [str(args.config)]
            code = run_program(REPO / "train.py", [*resume, *([] if resume[0] == "--resume" else overrides)])
            if code:
                return code
        ckpt = resolve_checkpoint(run, which="last")
        sha = verify_checksums(ckpt)["model.safetensors"]
        fusion = load_pretrained(ckpt)
        everyone = [fit("mean", [], experts=fps), fit("zzpm", [], experts=fps), *peers]
        for test in args.score:
            if (label, test.stem, sha) in earlier:
                points.append(earlier[(label, test.stem, sha)])
                print(f"learning_curve: {label}, {test.stem}: the earlier score of these weights reused", flush=True)
                continue
            rows = score_cached(test, fusions=[("fusion", fusion, read_extra(ckpt)["experts"])], ensemblers=everyone)
            by = {r.method: r for r in rows}
            best_peer = max((r for r in rows if r.kind == "ensembler"), key=lambda r: r.mean_psnr)
            f = by["fusion"]
            points.append(
                {
                    "point": label,
                    "cache": str(cache),
                    "images": count,
                    "hr_mpx": mpx,
                    "test": test.stem,
                    "test_images": len(f.psnr),
                    "fusion": f.mean_psnr,
                    "best_peer": best_peer.method,
                    "best_peer_psnr": best_peer.mean_psnr,
                    "gain": f.mean_psnr - best_peer.mean_psnr,
                    "gain_interval": paired_interval(f.psnr, best_peer.psnr).to_dict(),
                    "gain_over_blend_reg": f.mean_psnr - by["blend_reg"].mean_psnr,
                    "gain_over_blend_reg_interval": paired_interval(f.psnr, by["blend_reg"].psnr).to_dict(),
                    "gain_over_mean": f.mean_psnr - by["mean"].mean_psnr,
                    "gain_over_mean_interval": paired_interval(f.psnr, by["mean"].psnr).to_dict(),
                    "psnr": {r.method: r.mean_psnr for r in rows},
                    "checkpoint_sha256": sha,
                }
            )
            print(
                f"learning_curve: {label} ({count} images, {mpx:.1f} HR Mpx), {test.stem}: fusion {f.mean_psnr:.4f}, "
                f"best peer {best_peer.method} {best_peer.mean_psnr:.4f} → {points[-1]['gain']:+.4f} dB",
                flush=True,
            )
    md = curve_markdown(points)
    print(md)
    if args.out is not None:
        atomic_write_text(args.out.with_suffix(".json"), json.dumps({"points": points, "config": str(args.config)}))
        atomic_write_text(args.out.with_suffix(".md"), md)
    return 0


def _iv(d: dict) -> str:
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def curve_markdown(points: list[dict]) -> str:
    lines = [
        "| point | training images (HR Mpx) | test set | fusion PSNR-Y | best peer (PSNR-Y) | gain [95 % interval] | "
        "over blend_reg | over mean [95 % interval] |",
        "|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p['point']} | {p['images']} ({p['hr_mpx']:.1f}) | {p['test']} | {p['fusion']:.4f} | "
            f"{p['best_peer']} ({p['best_peer_psnr']:.4f}) | {_iv(p['gain_interval'])} | "
            f"{_iv(p['gain_over_blend_reg_interval'])} | {_iv(p['gain_over_mean_interval'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return run_cli("learning_curve", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
