"""Run the frozen experts once and cache their SR outputs + hooked features in HDF5 (layout: cache/schema.py).

    sr-fusion extract --experts EXPERTS --hr HR_DIR [--lr LR_DIR] --out caches/train.h5
        [--compression none|lzf|bitshuffle-lz4|bitshuffle-zstd] [--features full|none] [--sr-dtype float16|uint8]
        [--self-ensemble none|experts-x8] [--overwrite] [--skip-bad] [--verify]
    sr-fusion extract --out caches/train.h5 --verify                  # check an existing cache
    torchrun --nproc_per_node 8 scripts/extract_features.py ...       # one share of the images per rank

* LR: generated from HR with the MATLAB-compatible bicubic when ``--lr`` is not given (HR cropped to a multiple of the
  scale); ``--lr`` alone (no ``--hr``) caches test sets without ground truth; with both, LR ``NAMEx4.png`` pairs with
  HR ``NAME.png`` and the sizes must agree.
* Layout (cache/README.md): by default SR images only, at 8-bit levels (``--features none --sr-dtype uint8``: the
  default fusion reads nothing else); ``--features full --sr-dtype float16`` stores everything (fusions with
  ``model.inputs.features=true``, e.g. the committed checkpoints' recipes).
* Crash-safe and resumable: kill it at any moment and rerun the same command; finished images are kept, half-written
  ones are redone, the index appears only when every image is done. ``--overwrite`` starts from scratch.
* Bad inputs (an unreadable, truncated or non-image file — every input is fully decoded first —, an LR/HR size
  mismatch, an image smaller than the scale or an expert's minimum) are all reported before any work, one line each,
  and the run stops with exit status 2 having written nothing; ``--skip-bad`` skips them instead (each one recorded
  with its reason in the index). Nothing already written is lost.
* ``--out`` must be new, a cache index or an interrupted extraction's own data: any other file there is refused,
  ``--overwrite`` or not.
* ``--self-ensemble experts-x8``: each expert's SR is its ×8 self-ensemble (flips × rot90, averaged); the features
  come from the identity pass. The fingerprints record ``self_ensemble: 8``: a cache made otherwise is never resumed
  into it, and a fusion trained on it is run by ``sr-fusion submit --self-ensemble experts-x8`` (it refuses any
  other mode).
* Measured layouts (cache/README.md): the default (8-bit SR, no features) is 12.8 instead of 77.4 bytes per HR pixel
  with HAT-L/DAT/NAFNet-class experts, for a fusion within 0.002 dB of the full cache's on BSD100;
  ``--compression bitshuffle-lz4`` takes a further quarter off at the same read rate. ``sr-fusion repack`` makes a
  lean cache from a full one without running the experts.
* Under ``torchrun`` each rank extracts images ``i % world_size == rank`` into the shared data folder, on GPU
  ``cuda:LOCAL_RANK`` when CUDA is available (gloo on CPU), and rank 0 writes the index.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from cache.extract import extract
from cache.schema import COMPRESSIONS, EXTRACT_LAYOUT, FEATURE_MODES, SR_DTYPES, CacheLayout
from pipeline.commands.common import verify_cache
from pipeline.core import bundled, self_ensemble
from pipeline.core.cli import command_parser, run_cli
from pipeline.core.self_ensemble import SelfEnsemble


def parser() -> argparse.ArgumentParser:
    ap = command_parser("extract", __doc__)
    ap.add_argument("--experts", type=Path, help="expert YAML (configs/experts/*.yaml) or a bundled name (zoo_small)")
    ap.add_argument("--hr", type=Path, nargs="+", default=[], help="HR image folder(s), e.g. T91 BSD200")
    ap.add_argument("--lr", type=Path, default=None, help="LR image folder (NAMEx4.png); default: made from --hr")
    ap.add_argument("--out", type=Path, required=True, help="cache index file, e.g. caches/train.h5")
    ap.add_argument(
        "--device",
        default=None,
        help="run every expert on this device (default: the YAML's; under torchrun with CUDA: cuda:LOCAL_RANK)",
    )
    ap.add_argument("--compression", choices=COMPRESSIONS, default="none")
    ap.add_argument(
        "--features",
        choices=FEATURE_MODES,
        default=EXTRACT_LAYOUT.features,
        help="SR images only (none, the default: for fusions with model.inputs.features=false, the default) or also "
        "the experts' hooked features (full)",
    )
    ap.add_argument(
        "--sr-dtype",
        choices=SR_DTYPES,
        default=EXTRACT_LAYOUT.sr_dtype,
        help="precision of the cached SR images (uint8, the default: half the bytes, for fusions with "
        "model.inputs.sr_dtype=uint8, the default; float16: as the experts gave them)",
    )
    ap.add_argument("--overwrite", action="store_true", help="delete an existing (partial) cache first")
    ap.add_argument(
        "--skip-bad", action="store_true", help="skip bad inputs (recorded in the index) instead of refusing to start"
    )
    ap.add_argument("--verify", action="store_true", help="re-read and check every sample (after extracting)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    self_ensemble.add_argument(
        ap,
        modes=(SelfEnsemble.NONE, SelfEnsemble.EXPERTS),
        help="experts-x8: cache each expert's x8 self-ensemble (features: identity pass); recorded in the "
        "fingerprints, so a fusion trained on it runs with submit --self-ensemble experts-x8",
    )
    return ap


def _main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    bundled.resolve_arguments(args, {"experts": "experts"})

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.verify and not args.hr and args.lr is None:
        return verify_cache(args.out)
    if args.experts is None:
        ap.error("--experts is required to extract")
    extract(
        experts=args.experts,
        out=args.out,
        hr_dirs=args.hr,
        lr_dir=args.lr,
        device=args.device,
        compression=args.compression,
        layout=CacheLayout(features=args.features, sr_dtype=args.sr_dtype),
        overwrite=args.overwrite,
        skip_bad=args.skip_bad,
        self_ensemble=args.self_ensemble,
    )
    if args.verify and int(os.environ.get("RANK", "0")) == 0:
        return verify_cache(args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("extract_features", _main, argv)
