"""The two reference points every fusion is measured against, made from the experts' own SR images.

    sr-fusion run-experts --config shared_real --input LR_DIR --output EXP_DIR
    python scripts/research/expert_baselines.py --experts-dir EXP_DIR --hr HR_DIR [--scale 4] [--blocks 8 16] [--blend]
                                       [--image-blend] [--heldout-blocks 16]

``EXP_DIR`` holds one sub-folder of SR PNGs per expert (``sr-fusion run-experts``'s layout, ``fingerprints.json``
gives the order). Writes, with the same file names:

* ``EXP_DIR/_mean/``: the plain per-pixel mean of the experts (naive ensembling);
* ``EXP_DIR/_oracle/``: the per-pixel oracle — at every pixel, the RGB value of the expert whose Y (BT.601, the
  scored channel) is closest to the HR's. No gating of these experts can score higher on PSNR-Y: it is the upper
  bound of any per-pixel selection (a soft mix could in principle land between experts, but not beyond the best one).
* ``EXP_DIR/_oracle_b{B}/`` (``--blocks B ...``): the block oracle — per B×B block, the expert with the lowest
  squared Y error over the block. A gate that is smooth at scale B cannot beat it — but it picks by the pixels it
  is scored on, so part of its gain is the luck of that pick (see the next item).
* ``EXP_DIR/_oracle_heldout_b{B}/`` (``--heldout-blocks B ...``): the held-out block oracle — each half of a B×B
  block takes the expert that is best on the *other* half, so no pixel's own error chooses it. What it keeps of the
  block oracle's gain is the part that is spatially coherent at scale B, i.e. learnable by a gate that works at that
  scale (CRAFT + DITN + SPAN on Set14: B = 16 block oracle +0.176 dB over CRAFT, held-out −0.013; B = 4: +0.453,
  held-out +0.186 — which expert is right changes within a few pixels).
* ``EXP_DIR/_blend/`` (``--blend``): one fixed linear blend ``Σ_e w_e·sr_e`` whose weights (any sign, no bias) are
  the least-squares fit of the HR's Y on the experts' Y over the whole set (border cropped) — fitted on the scored
  images themselves, so an upper bound of any fixed blend; the weights go to ``EXP_DIR/blend_weights.json``.
* ``EXP_DIR/_blend_image/`` (``--image-blend``): per image, the least-squares blend fitted on that image alone — the
  ceiling of any method that picks its expert weights per image (a global gate, a per-image ensembler) but does not
  vary them within the image; the weights per image go to ``EXP_DIR/blend_image_weights.json``.

Score both with ``scripts/evaluate.py --sr EXP_DIR/_mean --hr HR_DIR``. The HR is cropped to a multiple of the scale
as in the scoring; SR/HR pairing and sizes are checked first.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.core.cli import run_cli
from pipeline.core.imageio import read_image, write_image
from pipeline.core.metrics import crop_to_match
from pipeline.core.outputs import check_output_dir, claim_output_dir, is_marked
from pipeline.evaluation.baselines import (
    blend_weights,
    block_oracle,
    expert_mean,
    heldout_block_oracle,
    image_blend,
    pixel_oracle,
)
from pipeline.evaluation.scoring import PairingError, check_sizes, pair_images

__all__ = ["main"]


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts-dir", required=True, type=Path, help="run-experts output (one folder per expert)")
    ap.add_argument("--hr", required=True, type=Path, help="ground-truth HR folder")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument(
        "--blocks",
        type=int,
        nargs="*",
        default=[],
        metavar="B",
        help="also the block oracles at these tile sides (SR pixels), e.g. 8 16",
    )
    ap.add_argument(
        "--heldout-blocks",
        type=int,
        nargs="*",
        default=[],
        metavar="B",
        help="also the held-out block oracles (each half block takes the other half's best expert), e.g. 16",
    )
    ap.add_argument("--blend", action="store_true", help="also the least-squares fixed blend fitted on this set")
    ap.add_argument(
        "--image-blend", action="store_true", help="also the least-squares blend fitted on each image alone"
    )
    args = ap.parse_args(argv)
    if any(b < 1 for b in args.blocks):
        ap.error(f"--blocks must be >= 1, got {args.blocks}")
    if any(b < 2 for b in args.heldout_blocks):
        ap.error(f"--heldout-blocks must be >= 2 (a block needs two halves), got {args.heldout_blocks}")

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
        print(
            f"expert_baselines: {fp_file} lists {len(names)} expert(s); a mean/oracle needs at least two",
            file=sys.stderr,
        )
        return 2

    def images():
        for i in range(len(per_expert[0])):
            pairs = [p[i] for p in per_expert]
            srs = torch.stack([read_image(p.sr) for p in pairs], dim=1)  # (1,E,3,H,W)
            hr = crop_to_match(read_image(pairs[0].hr), srs[:, 0], scale=args.scale)  # as the scoring crops it
            yield pairs[0].sr.name, srs, hr

    written = [
        "_mean",
        "_oracle",
        *(f"_oracle_b{b}" for b in args.blocks),
        *(f"_oracle_heldout_b{b}" for b in args.heldout_blocks),
        *(["_blend"] if args.blend else []),
        *(["_blend_image"] if args.image_blend else []),
    ]
    for folder in written:  # the shared output guard, before any work: new, empty or made by this script
        check_output_dir(args.experts_dir / folder, ours=is_marked)
    weights = None
    if args.blend:
        weights = blend_weights(
            ((srs, hr) for _, srs, hr in tqdm(images(), total=len(per_expert[0]), desc="blend fit", unit="img")),
            scale=args.scale,
        )
        (args.experts_dir / "blend_weights.json").write_text(
            json.dumps({"experts": names, "weights": [float(w) for w in weights]}, indent=2)
        )
        print(
            "expert_baselines: least-squares blend " + ", ".join(f"{n} {float(w):+.4f}" for n, w in zip(names, weights))
        )
    with ExitStack() as stack:  # every output folder this process's alone until it is done
        for folder in written:
            stack.enter_context(claim_output_dir(args.experts_dir / folder, tool="expert_baselines.py"))
        per_image = _write_baselines(args, images, per_expert, weights)
    if args.image_blend:
        (args.experts_dir / "blend_image_weights.json").write_text(
            json.dumps({"experts": names, "weights": per_image}, indent=2)
        )
    print(f"expert_baselines: {len(per_expert[0])} images of {names} -> {args.experts_dir}/{{{','.join(written)}}}")
    return 0


def _write_baselines(args, images, per_expert, weights) -> dict:
    per_image = {}
    for name, srs, hr in tqdm(images(), total=len(per_expert[0]), desc="baselines", unit="img"):
        write_image(args.experts_dir / "_mean" / name, expert_mean(srs))
        write_image(args.experts_dir / "_oracle" / name, pixel_oracle(srs, hr))
        for b in args.blocks:
            write_image(args.experts_dir / f"_oracle_b{b}" / name, block_oracle(srs, hr, b))
        for b in args.heldout_blocks:
            write_image(args.experts_dir / f"_oracle_heldout_b{b}" / name, heldout_block_oracle(srs, hr, b))
        if weights is not None:
            write_image(args.experts_dir / "_blend" / name, torch.einsum("e,bechw->bchw", weights, srs).clamp(0, 1))
        if args.image_blend:
            out, w = image_blend(srs, hr, scale=args.scale)
            write_image(args.experts_dir / "_blend_image" / name, out)
            per_image[name] = [float(v) for v in w]
    return per_image


def main(argv: list[str] | None = None) -> int:
    return run_cli("expert_baselines", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
