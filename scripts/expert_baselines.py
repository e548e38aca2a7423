"""The two reference points every fusion is measured against, made from the experts' own SR images.

    python -m experts.run --config configs/experts/shared_real.yaml --input LR_DIR --output EXP_DIR
    python scripts/expert_baselines.py --experts-dir EXP_DIR --hr HR_DIR [--scale 4]

``EXP_DIR`` holds one sub-folder of SR PNGs per expert (``experts.run``'s layout, ``fingerprints.json`` gives the
order). Writes, with the same file names:

* ``EXP_DIR/_mean/``: the plain per-pixel mean of the experts (naive ensembling);
* ``EXP_DIR/_oracle/``: the per-pixel oracle — at every pixel, the RGB value of the expert whose Y (BT.601, the
  scored channel) is closest to the HR's. No gating of these experts can score higher on PSNR-Y: it is the upper
  bound of any per-pixel selection (a soft mix could in principle land between experts, but not beyond the best one).

Score both with ``scripts/evaluate.py --sr EXP_DIR/_mean --hr HR_DIR``. The HR is cropped to a multiple of the scale
as in the scoring; SR/HR pairing and sizes are checked first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.evaluation import PairingError, check_sizes, pair_images
from pipeline.imageio import read_image, write_image
from pipeline.metrics import crop_to_match, rgb_to_y

__all__ = ["expert_mean", "pixel_oracle", "main"]


def expert_mean(srs: torch.Tensor) -> torch.Tensor:
    """``srs (B,E,3,H,W)`` → ``(B,3,H,W)``."""
    return srs.mean(dim=1)


def pixel_oracle(srs: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """``srs (B,E,3,H,W)``, ``hr (B,3,H,W)`` → ``(B,3,H,W)``: per pixel, the expert whose Y is nearest the HR's."""
    err = (rgb_to_y(srs.flatten(0, 1)).unflatten(0, srs.shape[:2]) - rgb_to_y(hr).unsqueeze(1)).abs()  # (B,E,1,H,W)
    best = err.argmin(dim=1, keepdim=True)  # (B,1,1,H,W)
    return torch.gather(srs, 1, best.expand(-1, 1, 3, -1, -1)).squeeze(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts-dir", required=True, type=Path, help="experts.run output (one folder per expert)")
    ap.add_argument("--hr", required=True, type=Path, help="ground-truth HR folder")
    ap.add_argument("--scale", type=int, default=4)
    args = ap.parse_args(argv)

    fp_file = args.experts_dir / "fingerprints.json"
    try:
        names = [fp["name"] for fp in json.loads(fp_file.read_text())]
        per_expert = [pair_images(args.experts_dir / n, args.hr, scale=args.scale) for n in names]
        for pairs in per_expert:
            check_sizes(pairs, scale=args.scale)
    except (OSError, KeyError, json.JSONDecodeError, PairingError) as exc:
        print(f"expert_baselines: {exc}", file=sys.stderr)
        return 2
    if len(names) < 2:
        print(f"expert_baselines: {fp_file} lists {len(names)} expert(s); a mean/oracle needs at least two",
              file=sys.stderr)
        return 2

    for i in tqdm(range(len(per_expert[0])), desc="mean+oracle", unit="img"):
        pairs = [p[i] for p in per_expert]
        srs = torch.stack([read_image(p.sr) for p in pairs], dim=1)  # (1,E,3,H,W)
        hr = crop_to_match(read_image(pairs[0].hr), srs[:, 0], scale=args.scale)  # as the scoring crops it
        write_image(args.experts_dir / "_mean" / pairs[0].sr.name, expert_mean(srs))
        write_image(args.experts_dir / "_oracle" / pairs[0].sr.name, pixel_oracle(srs, hr))
    print(f"expert_baselines: {len(per_expert[0])} images of {names} -> {args.experts_dir}/_mean, _oracle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
