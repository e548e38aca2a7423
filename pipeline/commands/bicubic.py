"""The bicubic baseline: upscale every LR image with the MATLAB-compatible bicubic, keeping file names.

python scripts/bicubic.py --input LR_DIR --output OUT_DIR [--scale 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from pipeline.core.cli import run_cli
from pipeline.core.imageio import read_image, scan_image_folder, write_image
from pipeline.core.outputs import OutputPathError, check_output_dir, claim_output_dir, is_marked
from pipeline.core.resize import bicubic_upscale


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, type=Path)
    ap.add_argument("--output", required=True, type=Path)
    ap.add_argument("--scale", type=int, default=4)
    args = ap.parse_args(argv)
    if args.output.resolve() == args.input.resolve():
        raise OutputPathError(f"--output {args.output} is the input folder: choose another one")
    check_output_dir(args.output, ours=is_marked)  # new, empty or made by this script: nothing else is replaced
    files = scan_image_folder(args.input, subfolders=False)  # every input decoded: all bad files listed before any work
    with claim_output_dir(args.output, tool="bicubic.py"):  # this process's alone until it is done
        for path in tqdm(files, desc="bicubic", unit="img"):
            write_image(args.output / f"{path.stem}.png", bicubic_upscale(read_image(path), args.scale))
    print(f"bicubic: wrote {len(files)} images to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("bicubic", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
