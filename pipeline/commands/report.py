"""HTML report of a trained fusion run on a set of images: the fusion next to every expert, where and how it differs.

    python scripts/report.py --run runs/NAME --sr OUT_DIR --hr HR_DIR --out report/ [--lr LR_DIR]
                             [--experts configs/experts/X.yaml] [--device cpu|cuda] [--tile 256] [--crop 64]

* ``--sr``: the submitted images (scripts/submit.py's output) — the "fusion" column is scored on these files.
  ``--hr``: ground truth (pairs by stem, ``0901x4.png`` ↔ ``0901.png``). ``--lr``: the LR inputs; without it the
  LR images are made from HR with the MATLAB-compatible bicubic (pipeline.core.resize.make_lr).
* The experts and the fusion of ``--run`` (its ``best`` checkpoint, checksums verified) run again on every LR image
  for the expert outputs and the per-pixel gate and difficulty maps; an SR image that differs from that re-run
  (made with ``--tta``, a refiner or another checkpoint) is flagged on the page.
* ``OUT/index.html`` + ``OUT/img/*.png`` (+ ``OUT/scores.json``: the table's numbers); self-contained: opening
  index.html from disk works offline. It holds the
  per-image PSNR/SSIM table (NTIRE Y channel, border = scale) of bicubic, each expert, the experts' mean and the
  fusion, with deltas against the best expert (highest mean PSNR over the set) and a mean row; per image a crop
  (``--crop`` SR pixels, where the fusion differs most from the best expert: maximum of the box-filtered
  |fusion − best expert|) of bicubic / experts / fusion / HR, zoomable with nearest-neighbour rendering; the gate
  maps (RGB composite + one per expert) and the difficulty map; the training curves of the run's metrics.csv.
* Every input problem (missing folders or metrics.csv, unpaired or mis-sized images, a modified checkpoint, an
  output folder that holds something other than a report) is reported before any work. Files are written
  atomically, index.html last; PNGs under ``OUT/img/`` that the new page does not use are removed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pipeline.core.cli import run_cli
from pipeline.core.errors import BadInputsError
from pipeline.core.imageio import ImageReadError
from pipeline.core.outputs import claim_output_dir
from pipeline.evaluation.scoring import PairingError
from pipeline.inference.pipeline import load_pipeline
from pipeline.model.io import ChecksumError, resolve_checkpoint
from pipeline.report.analyse import (
    ReportError,
    build_jobs,
    check_out_dir,
    find_metrics_csv,
    write_report,
)
from pipeline.report.page import MetricsError, read_metrics_csv
from pipeline.report.visual import expert_colours


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="run directory (runs/NAME)")
    ap.add_argument("--sr", required=True, type=Path, help="folder of submitted SR images (scripts/submit.py)")
    ap.add_argument("--hr", required=True, type=Path, help="folder of ground-truth HR images")
    ap.add_argument("--out", required=True, type=Path, help="report folder (index.html + img/)")
    ap.add_argument("--lr", type=Path, default=None, help="LR inputs; default: made from HR (MATLAB bicubic)")
    ap.add_argument("--experts", type=Path, default=None, help="expert YAML overriding the recorded paths")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tile", type=int, default=None, help="expert LR tile size (bounded memory); 0 = whole image")
    ap.add_argument("--crop", type=int, default=64, help="crop side in SR pixels (default 64)")
    ap.add_argument("--title", default=None, help="the page's heading (default: 'Fusion of EXPERTS on N images')")
    args = ap.parse_args(argv)

    try:
        if args.crop < 8:
            raise ReportError(f"--crop must be at least 8 SR pixels, got {args.crop}")
        for flag, d in (("--sr", args.sr), ("--hr", args.hr), ("--lr", args.lr)):
            if d is not None and not d.is_dir():
                raise ReportError(f"{flag} folder not found: {d}")
        if not args.run.is_dir():
            raise ReportError(f"--run folder not found: {args.run}")
        ckpt = resolve_checkpoint(args.run, which="best")
        metrics = read_metrics_csv(find_metrics_csv(args.run, ckpt))
        check_out_dir(args.out, [d for d in (args.sr, args.hr, args.lr) if d is not None])
    except (ReportError, PairingError, MetricsError, ChecksumError, ImageReadError, OSError, ValueError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2

    with claim_output_dir(args.out, tool="report.py"):  # this process's alone, from before the models load
        try:
            pipe = load_pipeline(args.run, experts_yaml=args.experts, device=args.device, tile=args.tile)
            expert_colours(len(pipe.ensemble.names))  # the gate legend has colours for up to 8 experts
            # every unpaired, unreadable, mismatched or too small input, one line each, in one go
            jobs = build_jobs(args.sr, args.hr, args.lr, pipe.scale, min_lr=pipe.ensemble.min_lr_size)
            (args.out / "img").mkdir(parents=True, exist_ok=True)
        except BadInputsError:
            raise
        except (PairingError, MetricsError, ImageReadError, OSError, ValueError) as exc:
            raise ReportError(str(exc)) from None  # one line; the folder made for this run is removed again

        print(
            f"report: {len(jobs)} images, checkpoint {pipe.checkpoint}, experts {list(pipe.ensemble.names)}, "
            f"device {args.device}"
        )
        best, mean = write_report(
            pipe,
            jobs,
            run=args.run,
            sr=args.sr,
            hr=args.hr,
            lr=args.lr,
            out=args.out,
            crop_size=args.crop,
            metrics=metrics,
            title=args.title,
        )
    print(
        f"report: mean PSNR-Y fusion {mean['fusion'].psnr:.3f} dB, best expert {best} "
        f"{mean[f'expert:{best}'].psnr:.3f} dB, experts' mean {mean['mean'].psnr:.3f} dB; wrote "
        f"{args.out / 'index.html'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("report", _main, argv)
