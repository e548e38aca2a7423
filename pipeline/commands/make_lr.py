"""Make ×s LR images from HR images with the MATLAB-compatible bicubic (antialiased) downscale.

    python scripts/make_lr.py --hr HR_DIR --out LR_DIR [--scale 4] [--hr-out HR_CROPPED_DIR]

Each HR image is first cropped to a multiple of the scale; the LR is written as ``{stem}x{scale}.png`` (the NTIRE /
DIV2K naming). ``--hr-out`` also writes the cropped HR as ``{stem}.png`` (what the LR corresponds to exactly).
Every HR image is decoded before anything is written (all bad files listed, one line each, exit status 2); an output
folder must be new, empty or one this script made (it leaves a hidden ``.sr-fusion-output`` marker).
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from pipeline.core.cli import program_name, run_cli
from pipeline.core.imageio import read_image, scan_image_folder, write_image
from pipeline.core.outputs import OutputPathError, check_output_dir, claim_output_dir, is_marked
from pipeline.core.resize import make_lr


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog=program_name("make_lr.py"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hr", required=True, type=Path, help="folder of HR images (png/jpg/bmp/tif)")
    ap.add_argument("--out", required=True, type=Path, help="output folder for {stem}x{scale}.png")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--hr-out", type=Path, default=None, help="also write the HR cropped to a multiple of the scale")
    args = ap.parse_args(argv)
    if args.scale < 1:
        ap.error(f"--scale must be >= 1, got {args.scale}")

    outs = [args.out] + ([args.hr_out] if args.hr_out is not None else [])
    for out in outs:  # outputs first (cheap), then every input decoded: all before anything is written
        if out.resolve() == args.hr.resolve():
            raise OutputPathError(f"output folder {out} is the HR folder: choose another one")
        check_output_dir(out, ours=is_marked)
    files = scan_image_folder(args.hr, min_side=args.scale, subfolders=False, label="HR folder")
    with ExitStack() as stack:  # every output folder this process's alone until it is done
        for out in outs:
            stack.enter_context(claim_output_dir(out, tool="make_lr.py"))
        for path in tqdm(files, desc="make_lr", unit="img"):
            hr, lr = make_lr(read_image(path), args.scale)
            write_image(args.out / f"{path.stem}x{args.scale}.png", lr)
            if args.hr_out is not None:
                write_image(args.hr_out / f"{path.stem}.png", hr)
    print(f"make_lr: wrote {len(files)} LR images (x{args.scale}) to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("make_lr", _main, argv)
