"""End-to-end quickstart on real photos: HR → MATLAB-bicubic LR → SR → official NTIRE scoring.

    bash scripts/quickstart.sh [--out quickstart_out] [--hr MY_HR_DIR]

Stages that exist today run for real; stages not built yet are named as such, never faked:
  1. HR photos: scikit-image's bundled natural photos (astronaut, chelsea, coffee, rocket), or --hr
  2. LR: scripts/make_lr.py (MATLAB-compatible bicubic x4)
  3. SR: the bicubic baseline (scripts/bicubic.py)
  4. scoring: scripts/evaluate.py (PSNR/SSIM on the BT.601 Y channel, border 4)
Experts → HDF5 cache → fusion training → submission join this script as they land.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from scripts import bicubic, evaluate, make_lr, sample_images


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("quickstart_out"), help="work folder (recreated)")
    ap.add_argument("--hr", type=Path, default=None, help="your own HR folder instead of the bundled photos")
    ap.add_argument("--scale", type=int, default=4)
    args = ap.parse_args(argv)

    t0 = time.time()
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    hr_dir = out / "hr"
    if args.hr is None:
        print("[1/4] HR photos from skimage.data (shipped inside the scikit-image wheel)")
        sample_images.write_samples(hr_dir)
    else:
        print(f"[1/4] HR photos from {args.hr}")
        hr_dir = args.hr
    s = str(args.scale)
    print("[2/4] LR images with the MATLAB-compatible bicubic")
    if make_lr.main(["--hr", str(hr_dir), "--out", str(out / "lr"), "--hr-out", str(out / "hr_cropped"), "--scale", s]):
        return 1
    print("[3/4] SR: bicubic baseline")
    if bicubic.main(["--input", str(out / "lr"), "--output", str(out / "sr_bicubic"), "--scale", s]):
        return 1
    print("[4/4] NTIRE scoring (Y channel, border = scale)")
    json_path = out / "scores_bicubic.json"
    if evaluate.main(["--sr", str(out / "sr_bicubic"), "--hr", str(out / "hr_cropped"), "--scale", s, "--json", str(json_path)]):
        return 1
    mean = json.loads(json_path.read_text())["mean"]
    print()
    print(f"quickstart: bicubic x{s}: PSNR-Y {mean['psnr']:.2f} dB, SSIM-Y {mean['ssim']:.4f}")
    print("quickstart: experts, HDF5 cache, fusion training and submission stages are not built yet (see the issues);")
    print("            this run covers I/O, MATLAB bicubic and the official scoring only.")
    print(f"quickstart: outputs in {out}/ — finished in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
