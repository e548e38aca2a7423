"""HTML report of a trained fusion run on a set of images: the fusion next to every expert, where and how it differs.

    sr-fusion report --run RUN --sr OUT_DIR --hr HR_DIR --out report/ [--lr LR_DIR] [--experts EXPERTS]
        [--device cpu|cuda] [--tile 256] [--crop 64]

* ``--sr``: the submitted images (``sr-fusion submit``'s output) — the "fusion" column is scored on these files.
  ``--hr``: ground truth (pairs by stem, ``0901x4.png`` ↔ ``0901.png``). ``--lr``: the LR inputs; without it the
  LR images are made from HR with the MATLAB-compatible bicubic (pipeline.core.resize.make_lr).
* The experts and the fusion of ``--run`` (its ``best`` checkpoint, checksums verified) run again on every LR image
  for the expert outputs and the per-pixel gate and difficulty maps; an SR image that differs from that re-run
  (made with ``--self-ensemble``, a refiner or another checkpoint) is flagged on the page.
* ``OUT/index.html`` + ``OUT/img/*.png`` (+ ``OUT/scores.json``: the table's numbers); self-contained: opening
  index.html from disk works offline. It holds the
  per-image PSNR/SSIM table (NTIRE Y channel, border = scale) of bicubic, each expert, the experts' mean and the
  fusion, with deltas against the best expert (highest mean PSNR over the set) and a mean row; per image a crop
  (``--crop`` SR pixels, where the fusion differs most from the best expert: maximum of the box-filtered
  |fusion − best expert|) of bicubic / experts / fusion / HR, zoomable with nearest-neighbour rendering; the gate
  maps (RGB composite + one per expert) and the difficulty map; the training curves of the run's metrics.csv.
* tests/test_report.py renders the page in headless Chromium (the DevTools protocol) and fails on any image that
  does not load, any console error or any non-local request.
* Every input problem (missing folders or metrics.csv, unpaired or mis-sized images, a modified checkpoint, an
  output folder that holds something other than a report) is reported before any work. Files are written
  atomically, index.html last; PNGs under ``OUT/img/`` that the new page does not use are removed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from experts.store import ExpertStore
from pipeline.commands.common import add_store_arguments, store_from_args
from pipeline.core import bundled
from pipeline.core.cli import command_parser, run_cli
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


def parser() -> argparse.ArgumentParser:
    ap = command_parser("report", __doc__)
    ap.add_argument("--run", required=True, type=Path, help="run directory (runs/NAME) or a bundled name")
    ap.add_argument("--sr", required=True, type=Path, help="folder of submitted SR images (sr-fusion submit)")
    ap.add_argument("--hr", required=True, type=Path, help="folder of ground-truth HR images")
    ap.add_argument("--out", required=True, type=Path, help="report folder (index.html + img/)")
    ap.add_argument("--lr", type=Path, default=None, help="LR inputs; default: made from HR (MATLAB bicubic)")
    ap.add_argument("--experts", type=Path, default=None, help="expert YAML (or bundled name) for the recorded ones")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tile", type=int, default=None, help="expert LR tile size (bounded memory); 0 = whole image")
    ap.add_argument("--crop", type=int, default=64, help="crop side in SR pixels (default 64)")
    ap.add_argument("--title", default=None, help="the page's heading (default: 'Fusion of EXPERTS on N images')")
    add_store_arguments(ap)
    return ap


def make_report(
    run: Path,
    sr: Path,
    hr: Path,
    out: Path,
    *,
    lr: Path | None = None,
    experts: Path | None = None,
    device: str = "cpu",
    tile: int | None = None,
    crop: int = 64,
    store: ExpertStore | None = None,
    title: str | None = None,
) -> Path:
    """The HTML report of ``run`` (a run folder) on the submitted images ``sr`` against ``hr`` into ``out`` → its
    index.html (``title``: the page's heading; default 'Fusion of EXPERTS on N images'). Every input problem is
    found before any work (:class:`pipeline.report.analyse.ReportError`)."""
    try:
        if crop < 8:
            raise ReportError(f"--crop must be at least 8 SR pixels, got {crop}")
        for flag, d in (("--sr", sr), ("--hr", hr), ("--lr", lr)):
            if d is not None and not d.is_dir():
                raise ReportError(f"{flag} folder not found: {d}")
        if not run.is_dir():
            raise ReportError(f"--run folder not found: {run}")
        ckpt = resolve_checkpoint(run, which="best")
        metrics = read_metrics_csv(find_metrics_csv(run, ckpt))
        check_out_dir(out, [d for d in (sr, hr, lr) if d is not None])
    except (PairingError, MetricsError, ChecksumError, ImageReadError, OSError, ValueError) as exc:
        raise ReportError(str(exc)) from None

    with claim_output_dir(out, tool="report.py"):  # this process's alone, from before the models load
        try:
            # the experts' outputs of the submission, when it stored them (the experts then load only if needed)
            pipe = load_pipeline(run, experts_yaml=experts, device=device, tile=tile, store=store)
            expert_colours(len(pipe.ensemble.names))  # the gate legend has colours for up to 8 experts
            # every unpaired, unreadable, mismatched or too small input, one line each, in one go
            jobs = build_jobs(sr, hr, lr, pipe.scale, min_lr=pipe.ensemble.min_lr_size)
            (out / "img").mkdir(parents=True, exist_ok=True)
        except BadInputsError:
            raise
        except (PairingError, MetricsError, ImageReadError, OSError, ValueError) as exc:
            raise ReportError(str(exc)) from None  # one line; the folder made for this run is removed again

        print(
            f"report: {len(jobs)} images, checkpoint {pipe.checkpoint}, experts {list(pipe.ensemble.names)}, "
            f"device {device}"
        )
        best, mean = write_report(
            pipe, jobs, run=run, sr=sr, hr=hr, lr=lr, out=out, crop_size=crop, metrics=metrics, title=title
        )
    print(
        f"report: mean PSNR-Y fusion {mean['fusion'].psnr:.3f} dB, best expert {best} "
        f"{mean[f'expert:{best}'].psnr:.3f} dB, experts' mean {mean['mean'].psnr:.3f} dB; wrote "
        f"{out / 'index.html'}"
    )
    return out / "index.html"


def _main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    store = store_from_args(ap, args)
    bundled.resolve_arguments(args, {"run": "run", "experts": "experts"})
    make_report(
        args.run,
        args.sr,
        args.hr,
        args.out,
        lr=args.lr,
        experts=args.experts,
        device=args.device,
        tile=args.tile,
        crop=args.crop,
        store=store,
        title=args.title,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("report", _main, argv)
