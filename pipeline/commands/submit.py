"""Turn a trained run (or a training-free ensemble) into an NTIRE ×4 submission: SR PNGs with the input file names,
readme.txt, optional zip.

    sr-fusion submit --run RUN --input LR_DIR --output OUT_DIR [--self-ensemble none|experts-x8|pipeline-x8]
        [--zip] [--device cpu|cuda] [--experts EXPERTS] [--tile 256]
    sr-fusion submit --method mean|zzpm|blend|topk|blend_reg|ensir --experts EXPERTS [--weights FIT.json]
        --input LR_DIR --output OUT_DIR [--self-ensemble ...] [--zip]

* ``--run``: a run directory (its ``best`` checkpoint), a checkpoint directory (model.safetensors + config.json +
  SHA256SUMS) or a bundled fusion's name (``fusion_zoo_small``; ``sr-fusion list``). The checkpoint's checksums are
  verified and the experts are loaded from the fingerprints it records — or from ``--experts`` (an expert YAML or a
  bundled name, with other paths/devices), whose checkpoints must have the recorded sha256.
* Every LR image runs through the whole pipeline at full resolution (experts tiled with ``--tile`` LR pixels to
  bound memory); outputs are written atomically as PNG with exactly the input file names (``0901x4.png`` stays
  ``0901x4.png``).
* ``--self-ensemble pipeline-x8``: ×8 self-ensemble (flips × rot90) of the whole pipeline; ``experts-x8``: ×8
  self-ensemble of each expert, then one fusion (or ensemble) of the averages. The readme and the first printed line
  say which.
* ``--method METHOD --experts EXPERTS [--weights FIT.json]``: a training-free ensemble of the experts
  (pipeline/inference/ensemblers/) through the same verified path (pipeline/inference/methods.py); the methods fitted
  on training images (blend, topk, blend_reg, ensir) need the file ``sr-fusion fit`` made on a training cache, and a
  file fitted for other experts is refused.
* ``--refiner tsdsr`` (a refiner config or its bundled name): perceptual track — every fused image is refined by the
  one-step TSD-SR diffusion model (pipeline/refiner/; lowers PSNR, never use it for the fidelity track).
  ``--refiner-override key=value`` changes a refiner config value (e.g. ``device=cuda:1``).
* ``readme.txt`` in the NTIRE format with the measured runtime per image; ``--zip`` packs PNGs + readme.txt at the
  zip root (``OUT_DIR.zip``: the folder's whole name plus ``.zip``, so ``run.v1`` → ``run.v1.zip``) and checks the
  image count.
* Every input problem (empty/missing input folder, non-image files, sub-folders, unreadable or truncated images —
  each LR is fully decoded first —, an LR too small for the experts, a missing or modified checkpoint) and every
  output problem (an unwritable output folder; an output folder or zip holding something this tool did not write,
  which is never replaced) is reported before any work is done: one line per bad file, exit status 2.
* ``--refiner``: pipeline/refiner/README.md says what to download and where to put it (tested on tiny random SD3
  models only: no real weights or GPU were available).
* Every expert output comes from the expert-output store (experts/store.py, ``sr-fusion store``; ``--store DIR``,
  ``--no-store``) when it is there and is stored when not: a second submission with another method, fusion or
  self-ensemble mode on the same LR folder runs no expert again (exact outputs: the PNGs are the same without it).
* Outputs are written atomically with the usual file permissions (0644 under the common umask); a killed run's
  temp files are deleted by the next run into the same folder.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from experts.store import ExpertStore
from pipeline.commands.common import add_store_arguments, store_from_args
from pipeline.core import bundled, self_ensemble
from pipeline.core.atomic import atomic_write_text
from pipeline.core.cli import command_parser, run_cli
from pipeline.core.self_ensemble import SelfEnsemble
from pipeline.inference.methods import CHOICES, FUSION, MethodChoice, build, choose
from pipeline.inference.submission import (
    MIN_LR_WHAT,
    README,
    claim_output,
    make_zip,
    output_name,
    readme_text,
    scan_folders,
    super_resolve_files,
)

__all__ = ["main", "parser", "submit"]


def load_refiner(path: Path, overrides: list[str]):
    """The TSD-SR refiner (imports diffusers, so only when asked for); every file is checked before any work."""
    from pipeline.core.config import load_config
    from pipeline.refiner import RefinerConfig
    from pipeline.refiner.tsdsr import TSDSRRefiner

    return TSDSRRefiner.from_config(load_config(RefinerConfig, path, overrides))


def parser() -> argparse.ArgumentParser:
    ap = command_parser("submit", __doc__)
    ap.add_argument(
        "--method",
        choices=list(CHOICES),
        default=FUSION,
        help="the fusion network (default) or a training-free ensemble of the experts",
    )
    ap.add_argument("--run", type=Path, default=None, help="fusion: run or checkpoint directory, or a bundled name")
    ap.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="blend / topk / blend_reg / ensir (optional for mean / zzpm): the file of sr-fusion fit",
    )
    ap.add_argument("--input", required=True, type=Path, help="folder of LR images")
    ap.add_argument("--output", required=True, type=Path, help="folder for the SR images (+ readme.txt)")
    ap.add_argument(
        "--experts",
        type=Path,
        default=None,
        help="expert YAML or bundled name (required for an ensemble; for the fusion it overrides the recorded paths)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tile", type=int, default=None, help="expert LR tile size (bounded memory); 0 = whole image")
    self_ensemble.add_argument(ap)
    ap.add_argument("--zip", action="store_true", help="also write OUTPUT.zip (PNGs + readme.txt at the root)")
    ap.add_argument("--extra-data", action="store_true", help="ensembles: declare extra training data in readme.txt")
    ap.add_argument("--refiner", type=Path, default=None, help="TSD-SR refiner config or bundled name (perceptual)")
    ap.add_argument("--refiner-override", action="append", default=[], metavar="KEY=VALUE")
    add_store_arguments(ap)
    return ap


def submit(
    choice: MethodChoice,
    input_dir: Path,
    output_dir: Path,
    *,
    device: str,
    tile: int | None = None,
    self_ensemble: SelfEnsemble = SelfEnsemble.NONE,
    zip_too: bool = False,
    extra_data: bool = False,
    refiner: Path | None = None,
    refiner_overrides: Sequence[str] = (),
    store: ExpertStore | None = None,
) -> Path:
    """The submission of ``choice`` (:func:`pipeline.inference.methods.choose`) for every LR image of ``input_dir``
    into ``output_dir`` (+ ``OUTPUT.zip`` with ``zip_too``) → the output folder."""
    # every output is checked and every input decoded before a model is loaded or anything is written; the output
    # folder is this process's alone from here on (a second submit into it is refused)
    scan = scan_folders(input_dir, output_dir, zip_too=zip_too)
    with claim_output(output_dir):
        method = build(
            choice, device=device, tile=tile, self_ensemble=self_ensemble, extra_data=extra_data, store=store
        )
        files = scan.check(min_side=method.min_lr, what=MIN_LR_WHAT)  # every bad input in one go, the small ones too
        refine = load_refiner(refiner, list(refiner_overrides)) if refiner is not None else None

        print(
            f"submit: {len(files)} images, method {method.name} ({choice.source()}), self-ensemble {self_ensemble}, "
            f"device {device}"
        )
        times = list(
            tqdm(
                super_resolve_files(method, files, output_dir, refine=refine),
                total=len(files),
                desc="submit",
                unit="img",
            )
        )
        runtime = sum(times) / len(times)
        readme = readme_text(method, runtime=runtime, refined=refine is not None)
        atomic_write_text(output_dir / README, readme, what="the readme")
        print(f"submit: wrote {len(files)} images + readme.txt to {output_dir} ({runtime:.2f} s/image)")
        if store is not None:
            print(f"submit: {store.summary()}")
        if zip_too:
            z = make_zip(output_dir, [output_name(f) for f in files])
            print(f"submit: {z} ({z.stat().st_size / 2**20:.1f} MiB)")
    return output_dir


def _main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    store = store_from_args(ap, args)
    bundled.resolve_arguments(args, {"run": "run", "experts": "experts", "refiner": "refiner"})
    submit(
        choose(args.method, run=args.run, experts=args.experts, weights=args.weights),
        args.input,
        args.output,
        device=args.device,
        tile=args.tile,
        self_ensemble=args.self_ensemble,
        zip_too=args.zip,
        extra_data=args.extra_data,
        refiner=args.refiner,
        refiner_overrides=args.refiner_override,
        store=store,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("submit", _main, argv)
