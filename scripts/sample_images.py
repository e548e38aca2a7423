"""Write the natural photos that scikit-image ships inside its wheel as HR PNGs (the quickstart's embedded data).

    python scripts/sample_images.py --out DIR [--names astronaut,chelsea,coffee,rocket]

No file of a third party is committed to this repository and nothing is downloaded: ``skimage.data`` holds these
photos in the installed package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import skimage.data
import torch

from pipeline.imageio import write_image

DEFAULT_NAMES = ("astronaut", "chelsea", "coffee", "rocket")


def write_samples(out: Path, names: tuple[str, ...] = DEFAULT_NAMES) -> list[Path]:
    paths = []
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ValueError(f"skimage.data has no image {name!r}")
        arr = np.asarray(loader())
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        img = torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
        paths.append(write_image(out / f"{name}.png", img))
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--names", default=",".join(DEFAULT_NAMES), help="comma-separated skimage.data image names")
    args = ap.parse_args(argv)
    paths = write_samples(args.out, tuple(n.strip() for n in args.names.split(",") if n.strip()))
    print(f"sample_images: wrote {len(paths)} HR photos to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
