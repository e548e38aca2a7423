"""Turn a trained run into an NTIRE ×4 submission: SR PNGs with the input file names, readme.txt, optional zip.

    python scripts/submit.py --run runs/NAME --input LR_DIR --output OUT_DIR [--tta] [--zip] [--device cpu|cuda]
                             [--experts configs/experts/X.yaml] [--tile 256]

* ``--run``: a run directory (its ``best`` checkpoint) or a checkpoint directory (model.safetensors + config.json +
  SHA256SUMS). The checkpoint's checksums are verified and the experts are loaded from the fingerprints it records —
  or from ``--experts`` (other paths/devices), whose checkpoints must have the recorded sha256.
* Every LR image runs through the whole pipeline at full resolution (experts tiled with ``--tile`` LR pixels to
  bound memory); outputs are written atomically as PNG with exactly the input file names (``0901x4.png`` stays
  ``0901x4.png``).
* ``--tta``: ×8 self-ensemble (flips × rot90) of the whole pipeline.
* ``--refiner configs/refiner/tsdsr.yaml``: perceptual track — every fused image is refined by the one-step TSD-SR
  diffusion model (pipeline/refiner/; lowers PSNR, never use it for the fidelity track). ``--refiner-override
  key=value`` changes a refiner config value (e.g. ``device=cuda:1``).
* ``readme.txt`` in the NTIRE format with the measured runtime per image; ``--zip`` packs PNGs + readme.txt at the
  zip root (``OUT_DIR.zip``) and checks the image count.
* Every input problem (empty/missing input folder, non-image files, an LR too small for the experts, an unwritable
  output folder, a missing or modified checkpoint) is reported before any work is done.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.atomic import atomic_write_text
from pipeline.inference import FusionPipeline, load_pipeline
from pipeline.refiner import RefinerError
from pipeline.run_checkpoint import ChecksumError
from pipeline.submission import SubmitError, check_folders, check_inputs, output_name, super_resolve_files

__all__ = ["SubmitError", "check_inputs", "main", "make_zip", "readme_text"]


def load_refiner(path: Path, overrides: list[str]):
    """The TSD-SR refiner (imports diffusers, so only when asked for); every file is checked before any work."""
    from pipeline.config import load_config
    from pipeline.refiner import RefinerConfig
    from pipeline.refiner.tsdsr import TSDSRRefiner

    return TSDSRRefiner.from_config(load_config(RefinerConfig, path, overrides))


def readme_text(pipe: FusionPipeline, *, runtime: float, tta: bool, refined: bool = False) -> str:
    sub = pipe.extra.get("submission", {})
    experts = ", ".join(f"{fp['name']} ({fp['architecture']})" for fp in pipe.extra["experts"])
    params = sum(p.numel() for p in pipe.fusion.parameters())
    description = (f"Multi-expert fusion: frozen experts {experts}; a {params / 1e3:.0f}K-parameter fusion network "
                   f"(frequency decomposition, cross-expert attention, per-pixel gating) trained on the experts' "
                   f"outputs; self-ensemble x8: {'yes' if tta else 'no'}.")
    if refined:
        description += " Perceptual refinement: one-step TSD-SR (SD3-medium + TSD-SR LoRA) on the fused image."
    if sub.get("description"):
        description += " " + sub["description"]
    return (
        f"runtime per image [s] : {runtime:.2f}\n"
        f"CPU[1] / GPU[0] : {0 if pipe.device.type == 'cuda' else 1}\n"
        f"Extra Data [1] / No Extra Data [0] : {1 if sub.get('extra_data') else 0}\n"
        f"Other description : {description}\n"
    )


def make_zip(out_dir: Path, names: list[str]) -> Path:
    zip_path = out_dir.with_suffix(".zip")
    tmp = zip_path.with_name(f".{zip_path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:  # PNGs are compressed already
        for name in names:
            zf.write(out_dir / name, arcname=name)
        zf.write(out_dir / "readme.txt", arcname="readme.txt")
    with zipfile.ZipFile(tmp) as zf:
        pngs = [n for n in zf.namelist() if n.lower().endswith(".png")]
        if len(pngs) != len(names) or any("/" in n for n in zf.namelist()):
            tmp.unlink()
            raise SubmitError(f"zip check failed: {len(pngs)} PNGs for {len(names)} inputs")
    os.replace(tmp, zip_path)
    return zip_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="run directory or checkpoint directory")
    ap.add_argument("--input", required=True, type=Path, help="folder of LR images")
    ap.add_argument("--output", required=True, type=Path, help="folder for the SR images (+ readme.txt)")
    ap.add_argument("--experts", type=Path, default=None, help="expert YAML overriding the recorded paths")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tile", type=int, default=None, help="expert LR tile size (bounded memory); 0 = whole image")
    ap.add_argument("--tta", action="store_true", help="x8 self-ensemble (flips x rot90)")
    ap.add_argument("--zip", action="store_true", help="also write OUTPUT.zip (PNGs + readme.txt at the root)")
    ap.add_argument("--refiner", type=Path, default=None, help="TSD-SR refiner config (perceptual track)")
    ap.add_argument("--refiner-override", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    try:
        pipe = load_pipeline(args.run, experts_yaml=args.experts, device=args.device, tile=args.tile)
        files = check_folders(args.input, args.output, min_lr=pipe.ensemble.min_lr_size)
        refiner = load_refiner(args.refiner, args.refiner_override) if args.refiner is not None else None
    except (SubmitError, ChecksumError, FileNotFoundError, ValueError, RefinerError) as exc:
        print(f"submit: {exc}", file=sys.stderr)
        return 2

    print(f"submit: {len(files)} images, checkpoint {pipe.checkpoint}, experts {list(pipe.ensemble.names)}, "
          f"device {args.device}, TTA {'x8' if args.tta else 'off'}")
    times = list(tqdm(super_resolve_files(pipe, files, args.output, tta=args.tta, refine=refiner),
                      total=len(files), desc="submit", unit="img"))
    runtime = sum(times) / len(times)
    atomic_write_text(args.output / "readme.txt",
                      readme_text(pipe, runtime=runtime, tta=args.tta, refined=refiner is not None))
    print(f"submit: wrote {len(files)} images + readme.txt to {args.output} ({runtime:.2f} s/image)")
    if args.zip:
        try:
            z = make_zip(args.output, [output_name(f) for f in files])
        except SubmitError as exc:
            print(f"submit: {exc}", file=sys.stderr)
            return 1
        print(f"submit: {z} ({z.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
