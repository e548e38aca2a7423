"""Make ×s LR images from HR images with the MATLAB-compatible bicubic (antialiased) downscale.

    sr-fusion make-lr --hr HR_DIR --out LR_DIR [--scale 4] [--hr-out HR_CROPPED_DIR] [--hr-scale 0.5]

Each HR image is first cropped to a multiple of the scale; the LR is written as ``{stem}x{scale}.png`` (the NTIRE /
DIV2K naming). ``--hr-out`` also writes the cropped HR as ``{stem}.png`` (what the LR corresponds to exactly).

``--hr-scale S`` (0 < S ≤ 1) makes *multi-scale training data*: each HR image is first downscaled by S with the same
MATLAB bicubic (8-bit, like ``imresize(hr, S)`` on a uint8 image) and named ``{stem}_s{100·S:03d}`` (0.75 →
``_s075``), so the pairs of several scales can share one training cache with the originals.

The downscale re-implements MATLAB's ``imresize(img, 1/4, 'bicubic')`` (cubic a = −0.5, antialiased kernel,
symmetric border, and the uint8 path's rounding after *each* 1-D pass). Against the official LR images of Set5 and
Set14 (tests/test_resize.py): max |diff| = 1 grey level, 99.86–99.99 % of pixels identical (without the per-pass
rounding ~90 %, PIL's bicubic ~83 %).

Every HR image is decoded before anything is written (all bad files listed, one line each, exit status 2); an output
folder must be new, empty or one this command made (it leaves a hidden ``.sr-fusion-output`` marker).
"""

from __future__ import annotations

import argparse
import math
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from pipeline.core.cli import command_parser, run_cli
from pipeline.core.config import ConfigError
from pipeline.core.imageio import read_image, scan_image_folder, write_image
from pipeline.core.outputs import OutputPathError, check_output_dir, claim_output_dir, is_marked
from pipeline.core.resize import imresize, make_lr


def parser() -> argparse.ArgumentParser:
    ap = command_parser("make-lr", __doc__)
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
    return ap


def make_lr_images(
    hr_dir: Path, out: Path, *, scale: int = 4, hr_out: Path | None = None, hr_scale: float = 1.0
) -> list[Path]:
    """Every HR image of ``hr_dir`` → ``out/{stem}{suffix}x{scale}.png`` (and the cropped HR into ``hr_out``); the
    LR files written. Outputs are checked and every input decoded before anything is written."""
    if scale < 1:
        raise ConfigError(f"--scale must be >= 1, got {scale}")
    if not 0 < hr_scale <= 1:
        raise ConfigError(f"--hr-scale must be in (0, 1], got {hr_scale}")
    suffix = hr_scale_suffix(hr_scale)
    outs = [out] + ([hr_out] if hr_out is not None else [])
    for folder in outs:  # outputs first (cheap), then every input decoded: all before anything is written
        if folder.resolve() == hr_dir.resolve():
            raise OutputPathError(f"output folder {folder} is the HR folder: choose another one")
        check_output_dir(folder, ours=is_marked)
    min_side = math.ceil(scale / hr_scale)  # the downscaled HR must still hold one LR pixel
    files = scan_image_folder(hr_dir, min_side=min_side, subfolders=False, label="HR folder")
    written = []
    with ExitStack() as stack:  # every output folder this process's alone until it is done
        for folder in outs:
            stack.enter_context(claim_output_dir(folder, tool="make_lr.py"))
        for path in tqdm(files, desc="make_lr", unit="img"):
            hr = read_image(path)  # (1,3,H,W)
            if suffix:
                hr = imresize(hr, hr_scale, uint8=True)
            hr, lr = make_lr(hr, scale)
            written.append(out / f"{path.stem}{suffix}x{scale}.png")
            write_image(written[-1], lr)
            if hr_out is not None:
                write_image(hr_out / f"{path.stem}{suffix}.png", hr)
    at = f" from HR downscaled by {hr_scale:g}" if suffix else ""
    print(f"make_lr: wrote {len(files)} LR images (x{scale}){at} to {out}")
    return written


def _main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    make_lr_images(args.hr, args.out, scale=args.scale, hr_out=args.hr_out, hr_scale=args.hr_scale)
    return 0


def hr_scale_suffix(hr_scale: float) -> str:
    """The name suffix of images downscaled by ``hr_scale``: ``_s075`` for 0.75, ``""`` for 1 (the originals)."""
    return "" if hr_scale == 1 else f"_s{round(100 * hr_scale):03d}"


def main(argv: list[str] | None = None) -> int:
    return run_cli("make_lr", _main, argv)
