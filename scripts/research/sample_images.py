"""Write the natural photos that scikit-image ships inside its wheel as HR PNGs (the quickstart's embedded data).

    python scripts/research/sample_images.py --out DIR [--names astronaut,chelsea,coffee,rocket]

Names: any ``skimage.data`` image function (``astronaut``, ``chelsea``, ``coffee``, ``rocket``, ...) plus
``motorcycle_left`` / ``motorcycle_right`` (the two views of ``skimage.data.stereo_motorcycle``); the photos are
read by pipeline/core/sample_photos.py.

No file of a third party is committed to this repository and nothing is downloaded: ``skimage.data`` holds these
photos in the installed package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.cli import run_cli
from pipeline.core.outputs import check_output_dir, claim_output_dir, is_marked
from pipeline.core.sample_photos import DEFAULT_NAMES, write_samples


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--names", default=",".join(DEFAULT_NAMES), help="comma-separated skimage.data image names")
    args = ap.parse_args(argv)
    check_output_dir(args.out, ours=is_marked)  # new, empty or made by this script: nothing else is replaced
    with claim_output_dir(args.out, tool="sample_images.py"):  # this process's alone until it is done
        paths = write_samples(args.out, tuple(n.strip() for n in args.names.split(",") if n.strip()))
    print(f"sample_images: wrote {len(paths)} HR photos to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("sample_images", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
