"""The fusion against every ensemble a team could submit instead: one table, two regimes (no TTA / ×8 per expert).

    sr-fusion compare --experts EXPERTS --hr HR_DIR [--lr LR_DIR] [--ensemblers fits/blend.json fits/ensir.json]
        [--fusion RUN] --out results/compare/Set5/table [--threads 2] [--store DIR | --no-store]

Rows (pipeline/evaluation/compare.py): each expert, the experts' mean, ZZPM, every fitted ensembler file given (made
on a *training* cache by ``sr-fusion fit``, never on the scored set), the fusion checkpoint (in the ×8 regime:
on the ×8 experts, and the ×8 of the whole pipeline) and the 16×16-block oracle; PSNR-Y / SSIM-Y (NTIRE), Δ vs the
best expert of the same regime and the number of images below it. Without ``--lr`` the LR is made from the HR with
the MATLAB-compatible bicubic. Every expert's output (each of the eight transforms) comes from the expert-output store
(experts/store.py, ``sr-fusion store``) when it is there and is stored when it is not: a second table for another
fusion, other peers or a rerun after a kill runs (and loads) no expert again, and each image's expert, peer and
oracle scores are kept there too, so another fusion's table scores only its own rows. Each image is scored as soon as
its outputs are in hand (memory stays one image's). Writes ``OUT.json`` and ``OUT.md``; every gain carries its paired
bootstrap 95 % interval over the images and a verdict. Any ensemble of the table is submitted with ``sr-fusion submit
--method`` and exported with ``sr-fusion export --method``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from experts.ensemble import ExpertEnsemble
from experts.loading import sha256_file
from pipeline.commands.common import add_store_arguments, store_from_args
from pipeline.core import bundled
from pipeline.core.atomic import atomic_write_text
from pipeline.core.cli import command_parser, run_cli
from pipeline.core.imageio import read_image, scan_image_folder
from pipeline.core.metrics import crop_to_match
from pipeline.core.outputs import check_table_outputs
from pipeline.core.resize import make_lr
from pipeline.evaluation.compare import (
    ScoreMemo,
    expert_outputs,
    is_table_json,
    peer_labels,
    score_rows,
    scores_key,
    summarise,
    table_markdown,
)
from pipeline.evaluation.scoring import strip_scale_suffix
from pipeline.inference.ensemblers import fit, load
from pipeline.inference.pipeline import load_pipeline
from pipeline.model.io import resolve_checkpoint


def _pairs(hr_dir: Path, lr_dir: Path | None, scale: int) -> list[tuple[str, Path, Path | None]]:
    hrs = {p.stem: p for p in scan_image_folder(hr_dir, label="HR folder")}
    if lr_dir is None:
        return [(n, hrs[n], None) for n in sorted(hrs)]
    lrs = {strip_scale_suffix(p.stem, scale): p for p in scan_image_folder(lr_dir, label="LR folder")}
    if set(lrs) != set(hrs):
        from pipeline.evaluation.scoring import PairingError

        raise PairingError(f"HR and LR folders do not pair up; unmatched: {sorted(set(lrs) ^ set(hrs))[:10]}")
    return [(n, hrs[n], lrs[n]) for n in sorted(hrs)]


def parser() -> argparse.ArgumentParser:
    ap = command_parser("compare", __doc__)
    ap.add_argument("--experts", required=True, type=Path, help="expert YAML (configs/experts/*.yaml) or bundled name")
    ap.add_argument("--hr", required=True, type=Path, help="HR folder of the test set")
    ap.add_argument("--lr", type=Path, default=None, help="LR folder (NAMEx4.png); default: MATLAB bicubic of --hr")
    ap.add_argument("--ensemblers", type=Path, nargs="*", default=[], help="fitted ensembler files (JSON)")
    ap.add_argument("--fusion", type=Path, default=None, help="fusion checkpoint, run (its best) or bundled name")
    ap.add_argument("--out", required=True, type=Path, help="OUT.json and OUT.md are written")
    ap.add_argument("--title", default=None, help="table title (default: the HR folder's name)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    add_store_arguments(ap)
    return ap


def _main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    ap = parser()
    args = ap.parse_args(argv)
    bundled.resolve_arguments(args, {"fusion": "run", "experts": "experts"})
    if args.threads:
        torch.set_num_threads(args.threads)

    out_json, out_md = check_table_outputs(args.out, ours=is_table_json)
    store = store_from_args(ap, args)
    spent = {"fusion": 0.0, "forwards": 0, "outputs": 0.0}  # where the time goes, printed at the end
    if args.fusion is not None:
        pipe = load_pipeline(args.fusion, experts_yaml=args.experts, device=args.device, store=store)
        ensemble, fusion = pipe.ensemble, pipe.fusion.eval()
        fusion_sha = sha256_file(resolve_checkpoint(args.fusion, which="best") / "model.safetensors")

        def fuse(lr, srs, feats):
            t = time.perf_counter()
            sr = fusion.forward_with_precomputed(lr, srs, feats).sr
            spent["fusion"] += time.perf_counter() - t
            spent["forwards"] += 1
            return sr
    else:
        ensemble = ExpertEnsemble.from_yaml(args.experts, gather_device=args.device, store=store)
        fuse, fusion_sha = None, None
    fps = [fp.to_dict() for fp in ensemble.fingerprints]
    scale = ensemble.scale
    peers = [fit("mean", [], experts=fps), fit("zzpm", [], experts=fps)]
    peers += [load(p, experts=fps) for p in args.ensemblers]
    labels = peer_labels(peers, [None, None, *args.ensemblers])  # before any expert runs
    pairs = _pairs(args.hr, args.lr, scale)

    def lr_of(hr_path: Path, lr_path: Path | None) -> torch.Tensor:
        return read_image(lr_path) if lr_path is not None else make_lr(read_image(hr_path), scale)[1]

    print(
        f"compare_ensembles: {len(pairs)} images, experts {list(ensemble.names)}, fusion {args.fusion or '-'}, "
        f"peers {labels}, store {ensemble.store.root if ensemble.store else 'off'}"
    )

    memo = ScoreMemo(store) if store is not None else None  # the expert, peer and oracle rows, scored once
    peer_ids = list(zip(labels, peers, strict=True))

    def items():
        for _, hr_path, lr_path in tqdm(pairs, desc="experts x8 + score", unit="img"):
            t = time.perf_counter()
            lr = lr_of(hr_path, lr_path).to(args.device)
            out = expert_outputs(ensemble, lr, fuse=fuse)
            spent["outputs"] += time.perf_counter() - t
            out = {k: [t.cpu() for t in v] if isinstance(v, list) else v.cpu() for k, v in out.items()}
            hr = crop_to_match(read_image(hr_path), out["srs"][:1], scale=scale)[0]  # the HR the SR stands for
            key = None
            if memo is not None:
                key = scores_key(expert_keys=ensemble.output_keys(lr), hr=hr, peers=peer_ids, scale=scale)
            yield out, hr, key

    looping = time.perf_counter()
    rows = score_rows(
        items(),
        expert_names=ensemble.names,
        ensemblers=peers,
        labels=labels,
        with_fusion=fuse is not None,
        scale=scale,
        memo=memo,
    )
    summary = summarise(rows)
    if ensemble.store is not None:
        print(f"compare_ensembles: {ensemble.store.summary()}")
    if memo is not None:
        print(
            f"compare_ensembles: expert, peer and oracle scores of {memo.hits} images from the store, "
            f"{memo.misses} scored"
        )
    done = time.perf_counter()
    print(
        f"compare_ensembles: {done - started:.1f} s: start-up {looping - started:.1f} s, the experts' outputs "
        f"{spent['outputs'] - spent['fusion']:.1f} s, the fusion {spent['fusion']:.1f} s ({spent['forwards']} "
        f"forwards), peers and scores {done - looping - spent['outputs']:.1f} s"
    )
    title = args.title or args.hr.name
    payload = {
        "title": title,
        "images": [n for n, _, _ in pairs],
        "rows": summary,
        "per_image_psnr": {f"{r.regime}/{r.method}": r.psnr for r in rows},
        "experts": fps,
        "fusion": str(args.fusion) if args.fusion else None,
        "fusion_sha256": fusion_sha,
        "ensemblers": [str(p) for p in args.ensemblers],
    }
    atomic_write_text(out_json, json.dumps(payload, indent=1))
    md = table_markdown(summary, title=title)
    atomic_write_text(out_md, md)
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("compare_ensembles", _main, argv)
