"""The whole pipeline end to end on real photos, on a CPU, in minutes: experts → HDF5 cache → fusion fine-tuning →
challenge submission → official scoring → HTML report.

    bash scripts/quickstart.sh                     # creates .venv, then runs this with the bundled data and experts
    sr-fusion quickstart [--out quickstart_out] [--steps 40] [--device cpu|cuda]
    sr-fusion quickstart --hr MY_HR [--lr MY_LR] [--train-hr MY_TRAIN_HR] [--experts my.yaml [--init runs/my_fusion]]

Stages (each one the function of a user-facing command, called in-process):
  1. photos: scikit-image's natural photos (inside the installed wheel, nothing downloaded) — fine-tuning on
     rocket + the two motorcycle views, evaluation on astronaut, chelsea, coffee (held out); or ``--hr`` (evaluation
     images) and ``--train-hr`` (fine-tuning images, default: the bundled training photos).
  2. LR: ``sr-fusion make-lr`` (MATLAB-compatible bicubic ×4), unless ``--lr`` gives the evaluation LR images.
  3. cache: ``sr-fusion extract`` runs the experts on the training photos (SR outputs + hooked features).
  4. fine-tune: ``sr-fusion train`` with the bundled run config ``quickstart``, starting from the bundled fusion
     (checkpoints/fusion_zoo_small, trained on the bundled experts experts/zoo/), or from ``--init``. With
     ``--experts`` (your own checkpoints) and no ``--init`` the fusion is trained from scratch.
  5. submission: ``sr-fusion submit`` → challenge-format folder (PNG per LR input + readme.txt) + zip.
  6. scoring: ``sr-fusion evaluate`` (NTIRE PSNR/SSIM on the BT.601 Y channel, border 4).
  7. report: ``sr-fusion report`` → OUT/report/index.html (bicubic, each expert, their mean, the fusion).
It ends with the PSNR-Y/SSIM-Y table and the wall time. ``--out`` is recreated on every run (only a folder the
quickstart made, or an empty one, is ever deleted).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cache.extract import extract
from cache.schema import CacheLayout
from experts.store import ExpertStore
from pipeline.commands.evaluate import evaluate
from pipeline.commands.extract_features import verify_cache
from pipeline.commands.make_lr import make_lr_images
from pipeline.commands.report import make_report
from pipeline.commands.submit import submit
from pipeline.commands.train import train_run
from pipeline.core import bundled
from pipeline.core.cli import command_parser, run_cli
from pipeline.core.errors import ToolkitError
from pipeline.core.sample_photos import write_samples
from pipeline.inference.methods import FUSION, choose

REPO = bundled.root()  # the checkout, or the installed package data (pipeline/core/bundled.py)
BUNDLED_EXPERTS = REPO / "configs" / "experts" / "zoo_small.yaml"
BUNDLED_FUSION = REPO / "checkpoints" / "fusion_zoo_small"
FINETUNE_CONFIG = REPO / "configs" / "train" / "quickstart.yaml"
TRAIN_PHOTOS = ("rocket", "motorcycle_left", "motorcycle_right")
TEST_PHOTOS = ("astronaut", "chelsea", "coffee")
MARKER = ".quickstart"  # written into --out: proves the folder is ours to delete on the next run


class QuickstartError(ToolkitError, RuntimeError):
    pass


def check_out(out: Path) -> None:
    """``--out`` may be recreated only if it is missing, empty, or made by an earlier quickstart."""
    if out.exists() and (not out.is_dir() or not ((out / MARKER).is_file() or not any(out.iterdir()))):
        raise QuickstartError(
            f"--out {out} exists and was not made by the quickstart (no {MARKER} file): "
            "choose another folder or delete it yourself"
        )


def prepare_out(out: Path) -> None:
    check_out(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by sr-fusion quickstart; deleted and recreated on its next run\n")


def write_photos(out: Path, names: tuple[str, ...], max_side: int) -> Path:
    """Bundled photos → ``out`` as PNG, centre-cropped to at most ``max_side`` px a side (``0``: whole photos)."""
    write_samples(out, names, max_side=max_side)
    return out


def call(stage: str, fn: Callable[[], object]) -> None:
    """Run one stage — a command's function, as ``sr-fusion NAME`` runs it —; a typed error stops the quickstart in one
    line naming the stage."""
    try:
        fn()
    except ToolkitError as exc:
        raise QuickstartError(f"stage '{stage}' failed: {' '.join(str(exc).split())}") from exc


def table(scores: dict, submitted: dict) -> str:
    """The report's mean scores → a text table: bicubic, each expert, the experts' mean, the fusion."""
    mean = scores["mean"]
    best = f"expert:{scores['best_expert']}"
    label = {"bicubic": "bicubic", "mean": "experts' mean", "fusion": "fusion (submitted)"}
    lines = [f"{'method':<24}{'PSNR-Y (dB)':>12}{'SSIM-Y':>9}{'Δ vs best expert':>19}"]
    for key in scores["methods"]:
        name = label.get(key, key.removeprefix("expert:"))
        d = mean[key]["psnr"] - mean[best]["psnr"]
        lines.append(f"{name:<24}{mean[key]['psnr']:>12.3f}{mean[key]['ssim']:>9.4f}{d:>+19.3f}")
    lines.append(
        f"(sr-fusion evaluate on the submission: PSNR-Y {submitted['psnr']:.3f} dB, SSIM-Y {submitted['ssim']:.4f};"
        f" {len(scores['images'])} images, best expert: {scores['best_expert']})"
    )
    return "\n".join(lines)


def report_title(args: argparse.Namespace, *, init: Path | None) -> str:
    """The report's heading in the user's words (not the run folder's name, "finetune")."""
    if init is None:
        trained = f"a fusion of your experts, trained from scratch for {args.steps} steps"
    elif args.init is None:
        trained = f"the bundled fusion, fine-tuned for {args.steps} steps"
    else:
        trained = f"the fusion of --init, fine-tuned for {args.steps} steps"
    images = f"{args.test_images} held-out photos" if args.hr is None else "your images"
    return f"Quickstart: {trained}, scored on {images}"


def run(args: argparse.Namespace) -> dict:
    t0 = time.time()
    out: Path = args.out.resolve()
    experts = (args.experts or BUNDLED_EXPERTS).resolve()
    check_out(out)
    if args.lr is not None and args.hr is None:
        raise QuickstartError("--lr needs --hr (the ground truth the submission is scored against)")
    for flag, p in (
        ("--hr", args.hr),
        ("--lr", args.lr),
        ("--train-hr", args.train_hr),
        ("--experts", args.experts),
        ("--init", args.init),
    ):
        if p is not None and not p.exists():
            raise QuickstartError(f"{flag} {p} does not exist")
    is_bundled = experts == BUNDLED_EXPERTS.resolve()
    init = args.init if args.init is not None else (BUNDLED_FUSION if is_bundled else None)
    if init is not None and not (init / "model.safetensors").is_file():
        what = "the bundled fusion is missing" if init == BUNDLED_FUSION else "--init holds no fusion checkpoint"
        raise QuickstartError(
            f"{what}: {init / 'model.safetensors'}" + (" (a clean checkout has it)" if init == BUNDLED_FUSION else "")
        )
    prepare_out(out)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    n_stages = 7
    times: dict[str, float] = {}

    def stage(k: int, name: str, text: str) -> None:
        times[name] = time.time()
        print(f"\n[{k}/{n_stages}] {text}", flush=True)

    stage(1, "photos", "photos")
    train_hr = args.train_hr or write_photos(
        out / "data" / "train_hr", TRAIN_PHOTOS[: args.train_images], args.max_side
    )
    hr_src = args.hr or write_photos(out / "data" / "test_hr", TEST_PHOTOS[: args.test_images], args.max_side)
    print(
        f"quickstart: fine-tuning photos {train_hr}, evaluation photos {hr_src}"
        + ("" if args.hr else " (bundled: scikit-image's astronaut/chelsea/coffee are held out of the fine-tuning)")
    )

    stage(2, "lr", "LR images (MATLAB-compatible bicubic ×4)" if args.lr is None else f"LR images from {args.lr}")
    hr_dir = out / "data" / "test_hr_x4"  # HR cropped to a multiple of 4: exactly what the LR was made from
    if args.lr is None:
        lr_dir = out / "data" / "test_lr"
        call("lr", lambda: make_lr_images(hr_src, lr_dir, scale=4, hr_out=hr_dir))
    else:
        lr_dir, hr_dir = args.lr, hr_src

    stage(
        3,
        "cache",
        f"HDF5 cache: experts of {experts.relative_to(REPO) if experts.is_relative_to(REPO) else experts} "
        f"on the fine-tuning photos",
    )
    cache = out / "cache" / "train.h5"

    def cache_and_verify() -> None:
        # the bundled fusion reads the hooked features and float SR (configs/train/quickstart.yaml)
        extract(
            experts=experts,
            out=cache,
            hr_dirs=[train_hr],
            device=device,
            layout=CacheLayout(features="full", sr_dtype="float16"),
        )
        if verify_cache(cache) != 0:
            raise QuickstartError(f"the cache {cache} does not verify")

    call("cache", cache_and_verify)

    stage(
        4,
        "finetune",
        f"fusion fine-tuning, {args.steps} steps"
        + (f" from {init}" if init is not None else " from scratch (no --init for your experts)"),
    )
    overrides = [
        f"data.train_cache={cache}",
        f"data.experts={experts}",
        f"train.runs_dir={out / 'runs'}",
        "train.name=finetune",
        f"train.steps={args.steps}",
        f"train.warmup_steps={min(10, args.steps)}",
        f"train.device={device}",
    ]
    overrides.append(f"train.init_from={init}" if init is not None else "train.lr=5e-4")
    call("finetune", lambda: train_run(FINETUNE_CONFIG, overrides))
    run_dir = out / "runs" / "finetune"

    stage(5, "submit", "challenge submission (PNG per LR input + readme.txt + zip)")
    sub = out / "submission"
    choice = choose(FUSION, run=run_dir, experts=experts)
    # the experts' outputs on the test LR, computed once: the report reads the submission's (exact: same bytes)
    store = ExpertStore(out / "expert-outputs", max_bytes=None)
    call("submit", lambda: submit(choice, lr_dir, sub, device=device, zip_too=True, store=store))

    stage(6, "evaluate", "NTIRE scoring (PSNR/SSIM, BT.601 Y channel, border 4)")
    scores_json = out / "scores.json"
    call("evaluate", lambda: evaluate(sub, hr_dir, scale=4, json_out=scores_json))

    stage(7, "report", "HTML report")
    call(
        "report",
        lambda: make_report(
            run_dir,
            sub,
            hr_dir,
            out / "report",
            lr=lr_dir,
            experts=experts,
            device=device,
            store=store,
            title=report_title(args, init=init),
        ),
    )
    end = time.time()
    names = list(times)
    durations = {n: (times[names[i + 1]] if i + 1 < len(names) else end) - times[n] for i, n in enumerate(names)}
    scores = json.loads((out / "report" / "scores.json").read_text())
    submitted = json.loads(scores_json.read_text())["mean"]
    summary = {
        "wall_s": end - t0,
        "stages_s": durations,
        "report": scores,
        "evaluate": submitted,
        "device": device,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    print("\n" + table(scores, submitted))
    print(f"\nquickstart: submission {sub}/ and {sub}.zip; report {out / 'report' / 'index.html'}")
    print("quickstart: stage times " + ", ".join(f"{n} {s:.0f} s" for n, s in durations.items()))
    print(
        f"quickstart: finished in {(end - t0) / 60:.1f} min ({end - t0:.0f} s) on {device} "
        f"with {torch.get_num_threads()} torch threads"
    )
    return summary


def parser() -> argparse.ArgumentParser:
    ap = command_parser("quickstart", __doc__)
    ap.add_argument("--out", type=Path, default=Path("quickstart_out"), help="work folder (recreated on every run)")
    ap.add_argument("--hr", type=Path, default=None, help="your HR evaluation images (default: bundled photos)")
    ap.add_argument(
        "--lr", type=Path, default=None, help="their LR images (NAMEx4.png); default: MATLAB bicubic of --hr"
    )
    ap.add_argument("--train-hr", type=Path, default=None, help="HR images to fine-tune on (default: bundled photos)")
    ap.add_argument(
        "--experts",
        type=Path,
        default=None,
        help="your expert YAML, or a bundled name (default: zoo_small, the bundled experts of experts/zoo/)",
    )
    ap.add_argument(
        "--init",
        type=Path,
        default=None,
        help="fusion checkpoint/run to fine-tune, trained on the same experts (default: the bundled "
        "fusion for the bundled experts; none, i.e. from scratch, for --experts)",
    )
    ap.add_argument("--steps", type=int, default=40, help="fine-tuning steps (default 40)")
    ap.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    ap.add_argument("--max-side", type=int, default=0, help="centre-crop the bundled photos to this many px (0: whole)")
    ap.add_argument("--train-images", type=int, default=len(TRAIN_PHOTOS), help="how many bundled training photos")
    ap.add_argument("--test-images", type=int, default=len(TEST_PHOTOS), help="how many bundled evaluation photos")
    return ap


def _main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    for dest, kind in (("experts", "experts"), ("init", "run")):  # a bundled name; the checks below name the missing
        if getattr(args, dest) is not None:
            setattr(args, dest, bundled.named(getattr(args, dest), kind))
    if (
        args.steps < 1
        or not 1 <= args.train_images <= len(TRAIN_PHOTOS)
        or not 1 <= args.test_images <= len(TEST_PHOTOS)
    ):
        ap.error(
            f"need --steps >= 1, 1 <= --train-images <= {len(TRAIN_PHOTOS)}, 1 <= --test-images <= {len(TEST_PHOTOS)}"
        )
    run(args)  # a refusal (QuickstartError) is one line and exit status 2, as for every other tool (run_cli)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("quickstart", _main, argv)
