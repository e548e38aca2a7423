"""Score SR results exactly as the NTIRE ×4 organisers do.

    sr-fusion evaluate --sr SR_DIR --hr HR_DIR [--scale 4] [--json OUT.json]
        [--perceptual [--weights-dir DIR] [--device cpu|cuda]]

PSNR/SSIM on the BT.601 Y channel (16–235 offsets), float, border crop = scale — BasicSR's ``calculate_psnr`` /
``calculate_ssim(test_y_channel=True)``. Files pair by stem; ``0901x4.png`` pairs with ``0901.png``. HR images whose
sides are not multiples of the scale are cropped first. Missing/extra files and size mismatches are errors.

Measured against BasicSR's own numbers (bicubic on Set5 + Set14, 19 images, tests/test_metrics.py): max |ΔPSNR|
= 5.6e-6 dB, max |ΔSSIM| = 7.9e-7. pyiqa's default "Y" is YIQ and reads ≈ 1.3 dB lower. ``--json`` writes
``{"images": [{"name", "psnr", "ssim"}, ...], "mean": {"psnr", "ssim"}, "scale", "sr", "hr"}``.

``--perceptual`` adds the NTIRE 2025 perceptual track (pipeline/evaluation/perceptual.py): LPIPS, DISTS, NIQE, MUSIQ,
MANIQA and CLIP-IQA with pyiqa's default settings (as the organisers' eval.py creates them) on the whole RGB image in
[0,1], and the score (1-LPIPS) + (1-DISTS) + CLIPIQA + MANIQA + MUSIQ/100 + max(0, (10-NIQE)/10) of the means over the
images. Nothing is downloaded: the weights come from ``--weights-dir DIR`` (else TORCH_HOME / HF_HOME), and every
missing file is reported before any work is done.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.core.atomic import atomic_write_text
from pipeline.core.cli import command_parser, run_cli
from pipeline.core.config import ConfigError
from pipeline.core.outputs import check_output_file
from pipeline.evaluation.perceptual import (
    FETCH_HINT,
    METRIC_NAMES,
    PERCEPTUAL_FORMULA,
    build_metrics,
    check_image_sizes,
    check_weights,
    describe_layout,
    perceptual_score,
    score_pairs,
    use_weights_dir,
)
from pipeline.evaluation.scoring import PairingError, check_pairs, is_scores_json, mean_of, pair_images, score_fidelity

_HEADERS = {
    "lpips": "LPIPS",
    "dists": "DISTS",
    "niqe": "NIQE",
    "musiq": "MUSIQ",
    "maniqa": "MANIQA",
    "clipiqa": "CLIPIQA",
}


def _epilog() -> str:
    return (
        "--weights-dir DIR must hold (DIR/torch is used as TORCH_HOME, DIR/huggingface as HF_HOME; this is the layout\n"
        "of ~/.cache/torch and ~/.cache/huggingface after pyiqa fetched the weights once on a machine with internet):\n"
        + describe_layout()
        + "\n"
        + FETCH_HINT
    )


def parser() -> argparse.ArgumentParser:
    ap = command_parser("evaluate", __doc__)
    ap.epilog = _epilog()
    ap.add_argument("--sr", required=True, type=Path, help="folder of super-resolved images")
    ap.add_argument("--hr", required=True, type=Path, help="folder of ground-truth HR images")
    ap.add_argument("--scale", type=int, default=4, help="SR scale = border crop (default 4)")
    ap.add_argument("--json", type=Path, default=None, help="write per-image and mean scores as JSON")
    ap.add_argument(
        "--perceptual",
        action="store_true",
        help="also LPIPS, DISTS, NIQE, MUSIQ, MANIQA, CLIP-IQA and "
        "the perceptual-track score (pyiqa, local weights only)",
    )
    ap.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        help="local weights of the perceptual metrics (layout below); default: the folders TORCH_HOME and HF_HOME name",
    )
    ap.add_argument("--device", default="cpu", help="device of the perceptual metrics (default cpu)")
    return ap


def evaluate(
    sr: Path,
    hr: Path,
    *,
    scale: int = 4,
    json_out: Path | None = None,
    perceptual: bool = False,
    weights_dir: Path | None = None,
    device: str = "cpu",
) -> dict:
    """Score the SR images of ``sr`` against ``hr`` (printed as a table; ``json_out``: also as JSON) → the mean
    scores. Everything is checked before any image is scored."""
    if weights_dir is not None and not perceptual:
        raise ConfigError("--weights-dir is only used with --perceptual")
    # everything is checked before any image is scored: the output path, the folders, every file (decoded)
    if json_out is not None:
        check_output_file(json_out, ours=is_scores_json, create_parents=True, label="--json")
    for folder in (sr, hr):
        if not folder.is_dir():
            raise PairingError(f"image folder not found: {folder}")
    problems: list[str] = []  # unpaired files and sub-folders, then every unreadable file and size mismatch: one go
    pairs = pair_images(sr, hr, scale=scale, problems=problems)
    check_pairs(pairs, scale=scale, problems=problems)
    if perceptual:
        check_image_sizes(pairs)
        dirs = use_weights_dir(weights_dir)  # offline; must precede any pyiqa import
        check_weights(dirs)  # every missing weight file, before any work
        metrics = build_metrics(dirs, device=device)  # a weight problem stops everything at once

    rows = score_fidelity(pairs, scale=scale, progress=True)
    mean = {"psnr": mean_of(rows, "psnr"), "ssim": mean_of(rows, "ssim")}
    names: tuple[str, ...] = ()
    score = None
    if perceptual:
        names = METRIC_NAMES
        by_name = {r["name"]: r for r in score_pairs(metrics, pairs, scale=scale, device=device, progress=True)}
        for row in rows:
            row.update({n: by_name[row["name"]][n] for n in names})
        mean.update({n: mean_of(rows, n) for n in names})
        score = perceptual_score(mean)

    width = max(10, *(len(r["name"]) for r in rows))

    def line(name: str, r: dict) -> str:
        return f"{name:<{width}}  {r['psnr']:9.4f}  {r['ssim']:7.4f}" + "".join(f"  {r[n]:8.4f}" for n in names)

    print(f"{'image':<{width}}  {'PSNR-Y':>9}  {'SSIM-Y':>7}" + "".join(f"  {_HEADERS[n]:>8}" for n in names))
    for r in rows:
        print(line(r["name"], r))
    print(line("mean", mean) + f"   ({len(rows)} images, x{scale}, Y, border {scale})")
    if score is not None:
        print(f"perceptual score {score:.4f} = {PERCEPTUAL_FORMULA} of the means")

    if json_out is not None:
        payload = {"images": rows, "mean": mean, "scale": scale, "sr": str(sr), "hr": str(hr)}
        if score is not None:
            payload.update(perceptual_score=score, perceptual_formula=PERCEPTUAL_FORMULA)
        atomic_write_text(json_out, json.dumps(payload, indent=2))
    return mean


def _main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    evaluate(
        args.sr,
        args.hr,
        scale=args.scale,
        json_out=args.json,
        perceptual=args.perceptual,
        weights_dir=args.weights_dir,
        device=args.device,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("evaluate", _main, argv)
