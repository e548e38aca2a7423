"""Score SR results exactly as the NTIRE ×4 organisers do.

    python scripts/evaluate.py --sr SR_DIR --hr HR_DIR [--scale 4] [--json OUT.json]

PSNR/SSIM on the BT.601 Y channel (16–235 offsets), float, border crop = scale — BasicSR's ``calculate_psnr`` /
``calculate_ssim(test_y_channel=True)``. Files pair by stem; ``0901x4.png`` pairs with ``0901.png``. HR images whose
sides are not multiples of the scale are cropped first. Missing/extra files and size mismatches are errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.atomic import atomic_write_text
from pipeline.evaluation import PairingError, check_sizes, mean_of, pair_images, score_fidelity


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sr", required=True, type=Path, help="folder of super-resolved images")
    ap.add_argument("--hr", required=True, type=Path, help="folder of ground-truth HR images")
    ap.add_argument("--scale", type=int, default=4, help="SR scale = border crop (default 4)")
    ap.add_argument("--json", type=Path, default=None, help="write per-image and mean scores as JSON")
    args = ap.parse_args(argv)

    try:
        pairs = pair_images(args.sr, args.hr, scale=args.scale)
        check_sizes(pairs, scale=args.scale)  # every mismatch is reported before any work is done
    except (PairingError, FileNotFoundError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2

    rows = score_fidelity(pairs, scale=args.scale, progress=True)
    mean = {"psnr": mean_of(rows, "psnr"), "ssim": mean_of(rows, "ssim")}

    width = max(10, *(len(r["name"]) for r in rows))
    print(f"{'image':<{width}}  {'PSNR-Y':>9}  {'SSIM-Y':>7}")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['psnr']:9.4f}  {r['ssim']:7.4f}")
    print(f"{'mean':<{width}}  {mean['psnr']:9.4f}  {mean['ssim']:7.4f}   ({len(rows)} images, x{args.scale}, Y, border {args.scale})")

    if args.json is not None:
        payload = {"images": rows, "mean": mean, "scale": args.scale, "sr": str(args.sr), "hr": str(args.hr)}
        atomic_write_text(args.json, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
