"""Make ×s LR images from HR images with the MATLAB-compatible bicubic (antialiased) downscale.

    python scripts/make_lr.py --hr HR_DIR --out LR_DIR [--scale 4] [--hr-out HR_CROPPED_DIR]

Each HR image is first cropped to a multiple of the scale; the LR is written as ``{stem}x{scale}.png`` (the NTIRE /
DIV2K naming). ``--hr-out`` also writes the cropped HR as ``{stem}.png`` (what the LR corresponds to exactly).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from pipeline.imageio import ImageReadError, list_images, read_image, write_image
from pipeline.resize import make_lr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hr", required=True, type=Path, help="folder of HR images (png/jpg/bmp/tif)")
    ap.add_argument("--out", required=True, type=Path, help="output folder for {stem}x{scale}.png")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--hr-out", type=Path, default=None, help="also write the HR cropped to a multiple of the scale")
    args = ap.parse_args(argv)

    files = list_images(args.hr)
    if not files:
        print(f"make_lr: no images found in {args.hr}", file=sys.stderr)
        return 2
    failed = []
    for path in tqdm(files, desc="make_lr", unit="img"):
        try:
            hr = read_image(path)
        except ImageReadError as exc:
            failed.append(str(exc))
            continue
        hr, lr = make_lr(hr, args.scale)
        write_image(args.out / f"{path.stem}x{args.scale}.png", lr)
        if args.hr_out is not None:
            write_image(args.hr_out / f"{path.stem}.png", hr)
    print(f"make_lr: wrote {len(files) - len(failed)} LR images (x{args.scale}) to {args.out}")
    for msg in failed:
        print(f"make_lr: skipped {msg}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
