"""Turn a trained run into an NTIRE ×4 submission: SR PNGs with the input file names, readme.txt, optional zip.

    python scripts/submit.py --run runs/NAME --input LR_DIR --output OUT_DIR [--tta | --expert-tta] [--zip]
                             [--device cpu|cuda] [--experts configs/experts/X.yaml] [--tile 256]
    python scripts/submit.py --method zzpm|mean|blend|ensir --experts configs/experts/X.yaml [--weights FIT.json] \
                             --input LR_DIR --output OUT_DIR [--tta | --expert-tta] [--zip]

* ``--run``: a run directory (its ``best`` checkpoint) or a checkpoint directory (model.safetensors + config.json +
  SHA256SUMS). The checkpoint's checksums are verified and the experts are loaded from the fingerprints it records —
  or from ``--experts`` (other paths/devices), whose checkpoints must have the recorded sha256.
* Every LR image runs through the whole pipeline at full resolution (experts tiled with ``--tile`` LR pixels to
  bound memory); outputs are written atomically as PNG with exactly the input file names (``0901x4.png`` stays
  ``0901x4.png``).
* ``--tta``: ×8 self-ensemble (flips × rot90) of the whole pipeline; ``--expert-tta``: ×8 self-ensemble of each
  expert, then one fusion (or ensemble) of the averages. The readme and the first printed line say which.
* ``--method mean|zzpm|blend|ensir --experts X.yaml [--weights FIT.json]``: a training-free ensemble of the experts
  (pipeline/inference/ensemblers.py) through the same verified path; ``blend`` and ``ensir`` need the file that
  ``scripts/fit_ensembler.py`` fitted on a training cache, and a file fitted for other experts is refused.
* ``--refiner configs/refiner/tsdsr.yaml``: perceptual track — every fused image is refined by the one-step TSD-SR
  diffusion model (pipeline/refiner/; lowers PSNR, never use it for the fidelity track). ``--refiner-override
  key=value`` changes a refiner config value (e.g. ``device=cuda:1``).
* ``readme.txt`` in the NTIRE format with the measured runtime per image; ``--zip`` packs PNGs + readme.txt at the
  zip root (``OUT_DIR.zip``: the folder's whole name plus ``.zip``, so ``run.v1`` → ``run.v1.zip``) and checks the
  image count.
* Every input problem (empty/missing input folder, non-image files, sub-folders, unreadable or truncated images —
  each LR is fully decoded first —, an LR too small for the experts, a missing or modified checkpoint) and every
  output problem (an unwritable output folder; an output folder or zip holding something this tool did not write,
  which is never replaced) is reported before any work is done: one line per bad file, exit status 2.
* Outputs are written atomically with the usual file permissions (0644 under the common umask); a killed run's
  temp files are deleted by the next run into the same folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from experts.ensemble import ExpertEnsemble
from pipeline.core import bundled
from pipeline.core.atomic import atomic_write_text
from pipeline.core.cli import program_name, run_cli
from pipeline.inference.ensemblers import METHODS, fit, method_class
from pipeline.inference.ensemblers import load as load_ensembler
from pipeline.inference.pipeline import expert_spec_from_yaml, load_pipeline
from pipeline.inference.submission import (
    MIN_LR_WHAT,
    README,
    SubmitError,
    claim_output,
    ensembler_method,
    fusion_method,
    make_zip,
    output_name,
    readme_text,
    scan_folders,
    super_resolve_files,
)

__all__ = ["main"]


def load_refiner(path: Path, overrides: list[str]):
    """The TSD-SR refiner (imports diffusers, so only when asked for); every file is checked before any work."""
    from pipeline.core.config import load_config
    from pipeline.refiner import RefinerConfig
    from pipeline.refiner.tsdsr import TSDSRRefiner

    return TSDSRRefiner.from_config(load_config(RefinerConfig, path, overrides))


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog=program_name("submit.py"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--method",
        choices=("fusion", *METHODS),
        default="fusion",
        help="the fusion network (default) or a training-free ensemble of the experts",
    )
    ap.add_argument("--run", type=Path, default=None, help="fusion: run directory or checkpoint directory")
    ap.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="blend / ensir (optional for mean / zzpm): the file of scripts/fit_ensembler.py",
    )
    ap.add_argument("--input", required=True, type=Path, help="folder of LR images")
    ap.add_argument("--output", required=True, type=Path, help="folder for the SR images (+ readme.txt)")
    ap.add_argument(
        "--experts",
        type=Path,
        default=None,
        help="expert YAML (required for an ensemble; for the fusion it overrides the recorded paths)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tile", type=int, default=None, help="expert LR tile size (bounded memory); 0 = whole image")
    ap.add_argument("--tta", action="store_true", help="x8 self-ensemble of the whole pipeline (flips x rot90)")
    ap.add_argument("--expert-tta", action="store_true", help="x8 self-ensemble of each expert before combining")
    ap.add_argument("--zip", action="store_true", help="also write OUTPUT.zip (PNGs + readme.txt at the root)")
    ap.add_argument("--extra-data", action="store_true", help="ensembles: declare extra training data in readme.txt")
    ap.add_argument("--refiner", type=Path, default=None, help="TSD-SR refiner config (perceptual track)")
    ap.add_argument("--refiner-override", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = ap.parse_args(argv)
    bundled.resolve_arguments(args, {"run": "run", "experts": "experts", "refiner": "refiner"})
    if args.tta and args.expert_tta:
        ap.error("--tta (x8 of the whole pipeline) and --expert-tta (x8 of each expert) exclude each other")
    regime = "pipeline-x8" if args.tta else "experts-x8" if args.expert_tta else "none"
    if args.method == "fusion":
        if args.run is None or args.weights is not None:
            ap.error("--method fusion needs --run (and no --weights)")
    elif args.experts is None or args.run is not None:
        ap.error(f"--method {args.method} needs --experts (and no --run)")
    elif method_class(args.method).fitted and args.weights is None:
        ap.error(f"--method {args.method} needs --weights (fit it with scripts/fit_ensembler.py)")

    # every output is checked and every input decoded before a model is loaded or anything is written; the output
    # folder is this process's alone from here on (a second submit into it is refused)
    scan = scan_folders(args.input, args.output, zip_too=args.zip)
    with claim_output(args.output):
        if args.method == "fusion":
            method = fusion_method(
                load_pipeline(args.run, experts_yaml=args.experts, device=args.device, tile=args.tile), regime=regime
            )
            source = f"checkpoint {args.run}"
        else:
            ensemble = ExpertEnsemble.from_spec(
                expert_spec_from_yaml(args.experts, device=args.device, tile=args.tile), gather_device=args.device
            )
            fps = [fp.to_dict() for fp in ensemble.fingerprints]
            ens = (
                load_ensembler(args.weights, experts=fps)
                if args.weights is not None
                else fit(args.method, [], experts=fps)
            )
            if ens.method != args.method:
                raise SubmitError(f"{args.weights} holds a {ens.method!r} ensembler, not {args.method!r}")
            method = ensembler_method(ensemble, ens, regime=regime, device=args.device, extra_data=args.extra_data)
            source = f"weights {args.weights}" if args.weights is not None else "no fitted weights"
        files = scan.check(min_side=method.min_lr, what=MIN_LR_WHAT)  # every bad input in one go, the small ones too
        refiner = load_refiner(args.refiner, args.refiner_override) if args.refiner is not None else None

        print(
            f"submit: {len(files)} images, method {method.name} ({source}), self-ensemble {regime}, "
            f"device {args.device}"
        )
        times = list(
            tqdm(
                super_resolve_files(method, files, args.output, refine=refiner),
                total=len(files),
                desc="submit",
                unit="img",
            )
        )
        runtime = sum(times) / len(times)
        readme = readme_text(method, runtime=runtime, refined=refiner is not None)
        atomic_write_text(args.output / README, readme, what="the readme")
        print(f"submit: wrote {len(files)} images + readme.txt to {args.output} ({runtime:.2f} s/image)")
        if args.zip:
            z = make_zip(args.output, [output_name(f) for f in files])
            print(f"submit: {z} ({z.stat().st_size / 2**20:.1f} MiB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("submit", _main, argv)
