"""Write the natural photos that scikit-image ships inside its wheel as HR PNGs (the quickstart's embedded data).

    python scripts/sample_images.py --out DIR [--names astronaut,chelsea,coffee,rocket]

Names: any ``skimage.data`` image function (``astronaut``, ``chelsea``, ``coffee``, ``rocket``, ...) plus
``motorcycle_left`` / ``motorcycle_right`` (the two views of ``skimage.data.stereo_motorcycle``).

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

from pipeline.core.cli import run_cli
from pipeline.core.imageio import write_image
from pipeline.core.outputs import check_output_dir, is_marked, mark_output_dir

DEFAULT_NAMES = ("astronaut", "chelsea", "coffee", "rocket")
_STEREO = {"motorcycle_left": 0, "motorcycle_right": 1}


def load_sample(name: str) -> np.ndarray:
    """``skimage.data`` photo ``name`` as an (H, W, C) uint8 array (from the installed wheel, never downloaded)."""
    if name in _STEREO:
        return np.asarray(skimage.data.stereo_motorcycle()[_STEREO[name]])
    loader = getattr(skimage.data, name, None)
    if loader is None or name.startswith("_"):
        raise ValueError(f"skimage.data has no image {name!r}")
    return np.asarray(loader())


def write_samples(out: Path, names: tuple[str, ...] = DEFAULT_NAMES) -> list[Path]:
    paths = []
    for name in names:
        arr = load_sample(name)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        img = torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
        paths.append(write_image(out / f"{name}.png", img))
    return paths


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--names", default=",".join(DEFAULT_NAMES), help="comma-separated skimage.data image names")
    args = ap.parse_args(argv)
    check_output_dir(args.out, ours=is_marked)  # new, empty or made by this script: nothing else is replaced
    mark_output_dir(args.out, tool="sample_images.py")
    paths = write_samples(args.out, tuple(n.strip() for n in args.names.split(",") if n.strip()))
    print(f"sample_images: wrote {len(paths)} HR photos to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("sample_images", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
