"""Make ×s LR images from HR images with the MATLAB-compatible bicubic (antialiased) downscale.

    python scripts/make_lr.py --hr HR_DIR --out LR_DIR [--scale 4] [--hr-out HR_CROPPED_DIR] [--hr-scale 0.5]

Each HR image is first cropped to a multiple of the scale; the LR is written as ``{stem}x{scale}.png`` (the NTIRE /
DIV2K naming). ``--hr-out`` also writes the cropped HR as ``{stem}.png`` (what the LR corresponds to exactly).

``--hr-scale S`` (0 < S ≤ 1) makes *multi-scale training data*: each HR image is first downscaled by S with the same
MATLAB bicubic (8-bit, like ``imresize(hr, S)`` on a uint8 image) and named ``{stem}_s{100·S:03d}`` (0.75 →
``_s075``), so the pairs of several scales can share one training cache with the originals.

Every HR image is decoded before anything is written (all bad files listed, one line each, exit status 2); an output
folder must be new, empty or one this script made (it leaves a hidden ``.sr-fusion-output`` marker).
"""

from __future__ import annotations

import argparse
import math
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from pipeline.core.cli import program_name, run_cli
from pipeline.core.imageio import read_image, scan_image_folder, write_image
from pipeline.core.outputs import OutputPathError, check_output_dir, claim_output_dir, is_marked
from pipeline.core.resize import imresize, make_lr


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog=program_name("make_lr.py"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hr", required=True, type=Path, help="folder of HR images (png/jpg/bmp/tif)")
    ap.add_argument("--out", required=True, type=Path, help="output folder for {stem}x{scale}.png")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--hr-out", type=Path, default=None, help="also write the HR cropped to a multiple of the scale")
    ap.add_argument(
        "--hr-scale",
        type=float,
        default=1.0,
        help="downscale each HR image by this factor first (multi-scale training data; names get _s{100*S:03d})",
    )
    args = ap.parse_args(argv)
    if args.scale < 1:
        ap.error(f"--scale must be >= 1, got {args.scale}")
    if not 0 < args.hr_scale <= 1:
        ap.error(f"--hr-scale must be in (0, 1], got {args.hr_scale}")
    suffix = hr_scale_suffix(args.hr_scale)

    outs = [args.out] + ([args.hr_out] if args.hr_out is not None else [])
    for out in outs:  # outputs first (cheap), then every input decoded: all before anything is written
        if out.resolve() == args.hr.resolve():
            raise OutputPathError(f"output folder {out} is the HR folder: choose another one")
        check_output_dir(out, ours=is_marked)
    min_side = math.ceil(args.scale / args.hr_scale)  # the downscaled HR must still hold one LR pixel
    files = scan_image_folder(args.hr, min_side=min_side, subfolders=False, label="HR folder")
    with ExitStack() as stack:  # every output folder this process's alone until it is done
        for out in outs:
            stack.enter_context(claim_output_dir(out, tool="make_lr.py"))
        for path in tqdm(files, desc="make_lr", unit="img"):
            hr = read_image(path)  # (1,3,H,W)
            if suffix:
                hr = imresize(hr, args.hr_scale, uint8=True)
            hr, lr = make_lr(hr, args.scale)
            write_image(args.out / f"{path.stem}{suffix}x{args.scale}.png", lr)
            if args.hr_out is not None:
                write_image(args.hr_out / f"{path.stem}{suffix}.png", hr)
    at = f" from HR downscaled by {args.hr_scale:g}" if suffix else ""
    print(f"make_lr: wrote {len(files)} LR images (x{args.scale}){at} to {args.out}")
    return 0


def hr_scale_suffix(hr_scale: float) -> str:
    """The name suffix of images downscaled by ``hr_scale``: ``_s075`` for 0.75, ``""`` for 1 (the originals)."""
    return "" if hr_scale == 1 else f"_s{round(100 * hr_scale):03d}"


def main(argv: list[str] | None = None) -> int:
    return run_cli("make_lr", _main, argv)
