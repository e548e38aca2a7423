"""The bicubic baseline: upscale every LR image with the MATLAB-compatible bicubic, keeping file names.

    sr-fusion bicubic --input LR_DIR --output OUT_DIR [--scale 4]

Every input is decoded first (all bad files listed, one line each); the output folder must be new, empty or one this
command made.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from pipeline.core.cli import command_parser, run_cli
from pipeline.core.imageio import read_image, write_image
from pipeline.core.outputs import claim_output_dir, scan_for_outputs
from pipeline.core.resize import bicubic_upscale


def parser() -> argparse.ArgumentParser:
    ap = command_parser("bicubic", __doc__)
    ap.add_argument("--input", required=True, type=Path, help="folder of LR images")
    ap.add_argument("--output", required=True, type=Path, help="folder for the upscaled images (same names)")
    ap.add_argument("--scale", type=int, default=4)
    return ap


def _main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    scan = scan_for_outputs(args.input, args.output)  # new, empty or made by this command; every input decoded
    files = scan.check()  # all bad files listed before any work
    with claim_output_dir(args.output, tool="bicubic.py"):  # this process's alone until it is done
        for path in tqdm(files, desc="bicubic", unit="img"):
            write_image(args.output / f"{path.stem}.png", bicubic_upscale(read_image(path), args.scale))
    print(f"bicubic: wrote {len(files)} images to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("bicubic", _main, argv)
