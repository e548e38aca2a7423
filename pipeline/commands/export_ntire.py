"""Export a trained run as an NTIRE 2025 ImageSR ×4 code submission (the layout of the organisers' repository).

    sr-fusion export --run RUN --team-id 17 --team-name Name --out DIR [--experts EXPERTS] [--overwrite]
    sr-fusion export --method METHOD --experts EXPERTS [--weights FIT.json] --team-id 17 --team-name Name --out DIR

writes::

    DIR/models/team17_Name/          the package: ``from models.team17_Name import main``
        __init__.py                  main(model_dir, input_path, output_path, device=None)
        README.md, requirements.txt
        _vendor/                     the subset of pipeline/, experts/, cache/ that main imports (see below)
    DIR/model_zoo/team17_Name/       model_dir: the fusion checkpoint (model.safetensors, config.json), experts.yaml,
        experts/<name>.pth           the expert checkpoints it was trained with, and SHA256SUMS of all of them

The organisers copy both folders into their repository root and call
``main(model_dir="model_zoo/team17_Name", input_path=LR_DIR, output_path=OUT_DIR, device=device)``, which runs the
whole pipeline (``pipeline.inference.submission.run_model_dir``, the same code as ``sr-fusion submit``, without
self-ensemble): every file of ``SHA256SUMS`` is verified at load, each expert is pinned to the sha256 recorded when
the fusion was trained, and every LR image becomes a PNG with the input's file name.

A training-free ensemble (``--method``, pipeline/inference/methods.py: a fitted one with its ``--weights`` file,
``mean`` / ``zzpm`` without) exports ``ensembler.json`` instead of the fusion checkpoint, its experts pinned to the
sha256 it was fitted for (or, without a file, to the files' own).

Vendoring: the modules ``pipeline.inference.submission`` needs (the closure of its imports, found by parsing the
source) are copied into ``_vendor/`` with every import of our packages rewritten to a relative one (``from
pipeline.x import y`` → ``from ..pipeline.x import y``). So they load as ``models.team17_Name._vendor.pipeline.x``:
nothing is added to ``sys.path`` and no top-level name (``pipeline``, ``utils``, ``models`` …) can collide with the
organisers' modules or installed packages. The third-party packages the vendored modules import go to requirements.txt.

Every check runs before anything is written: the fusion checkpoint's checksums, each expert checkpoint's sha256
against the fingerprint recorded at training (the recorded paths, or ``--experts``), the team id and name, and
``--out`` (an existing non-empty folder needs ``--overwrite``). The export is built in a temporary folder next to
``--out`` and renamed into place, so a failure leaves nothing half-written.

Tested in a fresh interpreter where this repository is not importable: ``main`` on two images writes byte-identical
PNGs to ``sr-fusion submit``. Needs Python ≥ 3.11. The export itself: pipeline/inference/ntire_export.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core import bundled
from pipeline.core.cli import command_parser, run_cli
from pipeline.inference.methods import CHOICES, FUSION, MethodError, choose
from pipeline.inference.ntire_export import (
    ExportError,
    check_export_out,
    checked_ensemble_experts,
    checked_experts,
    export,
    export_lock,
    package_name,
)
from pipeline.model.io import ChecksumError, resolve_checkpoint, verify_checksums


def parser() -> argparse.ArgumentParser:
    ap = command_parser("export", __doc__)
    ap.add_argument("--run", type=Path, default=None, help="run (its best checkpoint), checkpoint dir or name")
    ap.add_argument(
        "--method",
        choices=list(CHOICES),
        default=FUSION,
        help="the fusion (default) or a training-free ensemble of the experts (needs --experts)",
    )
    ap.add_argument("--weights", type=Path, default=None, help="a fitted ensemble: the file of sr-fusion fit")
    ap.add_argument("--team-id", required=True, type=int)
    ap.add_argument("--team-name", required=True)
    ap.add_argument("--out", required=True, type=Path, help="export folder (gets models/ and model_zoo/)")
    ap.add_argument("--experts", type=Path, default=None, help="expert YAML (or bundled name) for the recorded paths")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    return ap


def _main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        bundled.resolve_arguments(args, {"run": "run", "experts": "experts"})
        choice = choose(args.method, run=args.run, experts=args.experts, weights=args.weights)
        pkg = package_name(args.team_id, args.team_name)
        out = args.out.resolve()
        check_export_out(out, overwrite=args.overwrite)
        ensembler = None
        if choice.ensembler_class is None:
            ckpt = resolve_checkpoint(args.run, which="best")
            verify_checksums(ckpt)
            spec, files = checked_experts(ckpt, args.experts)
        else:
            ckpt = None
            spec, files, ensembler = checked_ensemble_experts(choice)
    except (ExportError, MethodError, ChecksumError, FileNotFoundError, ValueError) as exc:
        print(f"export_ntire: {exc}", file=sys.stderr)
        return 2

    with export_lock(out):  # a second export into --out is refused; checked again now that none can start
        check_export_out(out, overwrite=args.overwrite)
        export(
            out,
            pkg=pkg,
            team_id=args.team_id,
            run=args.run,
            ckpt=ckpt,
            spec=spec,
            files=files,
            ensembler=ensembler,
            ensembler_source=args.weights,
        )
    print(
        f"export_ntire: wrote {out}/models/{pkg} and {out}/model_zoo/{pkg} (experts {[e.name for e in spec.experts]})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("export_ntire", _main, argv)
