"""Run every expert of an expert YAML on a folder of LR images.

    sr-fusion run-experts --config EXPERTS --input LR_DIR --output OUT_DIR [--device NAME=DEVICE ...]
        [--gather-device cpu] [--self-ensemble none|experts-x8]
    sr-fusion run-experts --config MY_EXPERTS.yaml --check

Writes ``OUT_DIR/<expert>/<image stem>.png`` (8-bit, rounded) for every expert and every image of ``LR_DIR``, and
``OUT_DIR/fingerprints.json`` (name, architecture, sha256, hooks, feature channels, detected hyper-parameters of each
expert). ``--config`` is an expert YAML (its paths relative to its own folder) or a bundled name (``zoo_small``;
``sr-fusion list``). ``--device craft=cuda:1`` moves one expert without editing the YAML. ``--self-ensemble
experts-x8``: ×8 self-ensemble of each expert (:meth:`experts.ensemble.ExpertEnsemble.self_ensemble`;
``fingerprints.json`` records ``self_ensemble: 8``).
Any architecture spandrel detects (HAT, DAT, SwinIR, DRCT, ATD, CRAFT, DITN, SPAN, Compact, NAFNet, …) or a team's
own model file (``code:``, with ``trust_code: true``) is an expert described by a few lines of YAML; loading is
strict: a missing file, a wrong architecture or scale, a missing or mis-shaped tensor, or a sha256 other than the
pinned one is an error naming the file — never random weights (experts/README.md). The three real experts of
../shared/weights reproduce BasicSR's golden per-image PSNR on Set5 and Set14 within 2e-7 dB through this path.
Every input is decoded and the output folder checked (new, empty, or made by this command) before any work.

``--check`` onboards a new YAML: every expert parsed and loaded on its own, every problem of each listed in one pass
(keys, opt-in, files, pins, the weights against the class, the smallest input side, the probe of experts/probe.py),
and each working expert's probe PSNR; exit status 2 when any expert fails.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from experts.check import check_experts, format_checks
from experts.ensemble import ExpertEnsemble
from experts.spec import load_ensemble_spec, with_devices
from pipeline.core import bundled, self_ensemble
from pipeline.core.atomic import atomic_write_text
from pipeline.core.cli import command_parser, run_cli
from pipeline.core.config import ConfigError
from pipeline.core.imageio import read_image, write_image
from pipeline.core.outputs import claim_output_dir, mark_output_dir, scan_for_outputs
from pipeline.core.self_ensemble import SelfEnsemble

__all__ = ["main", "parse_device_map", "parser"]


def parse_device_map(items: list[str]) -> dict[str, str]:
    """``["craft=cuda:1", ...]`` → ``{"craft": "cuda:1", ...}``."""
    devices: dict[str, str] = {}
    for item in items:
        name, sep, device = item.partition("=")
        if not sep or not name or not device:
            raise ConfigError(f"--device {item!r} is not of the form NAME=DEVICE")
        devices[name] = device
    return devices


def parser() -> argparse.ArgumentParser:
    ap = command_parser("run-experts", __doc__)
    ap.add_argument("--config", required=True, type=Path, help="expert YAML (configs/experts/*.yaml) or bundled name")
    ap.add_argument("--input", type=Path, help="folder of LR images")
    ap.add_argument("--output", type=Path, help="output folder (one sub-folder per expert)")
    ap.add_argument(
        "--check",
        action="store_true",
        help="onboarding: parse and load every expert of --config on its own and print each one's problems or "
        "probe PSNR (experts/check.py); no --input/--output; exit 2 if any expert fails",
    )
    ap.add_argument("--device", action="append", default=[], metavar="NAME=DEVICE", help="per-expert device override")
    ap.add_argument("--gather-device", default="cpu", help="device the outputs are gathered on (default cpu)")
    self_ensemble.add_argument(ap, modes=(SelfEnsemble.NONE, SelfEnsemble.EXPERTS))
    return ap


def _main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    bundled.resolve_arguments(args, {"config": "experts"})
    if args.check:
        checks, problems = check_experts(args.config)
        print("\n".join(format_checks(checks, problems)))
        return 0 if checks and all(c.ok for c in checks) and not problems else 2
    if args.input is None or args.output is None:
        ap.error("--input and --output are required (or --check)")

    # the output folder and every input (decoded) are checked before an expert is loaded or anything written
    scan = scan_for_outputs(args.input, args.output)  # every input decoded; its problems raised with the small ones
    spec = with_devices(load_ensemble_spec(args.config), parse_device_map(args.device))
    with claim_output_dir(args.output, tool="run-experts"):  # this process's alone from before the experts load
        ensemble = ExpertEnsemble.from_spec(spec, gather_device=args.gather_device)
        files = scan.check(min_side=ensemble.min_lr_size, what="the experts' minimum LR side")
        for name in ensemble.names:
            mark_output_dir(args.output / name, tool="run-experts")
        mode = args.self_ensemble
        fingerprints = [{**fp.to_dict(), "self_ensemble": mode.expert_passes} for fp in ensemble.fingerprints]
        atomic_write_text(args.output / "fingerprints.json", json.dumps(fingerprints, indent=2))
        for path in tqdm(files, desc=f"experts ({mode})", unit="img"):
            lr = read_image(path)  # (1,3,H,W)
            out = ensemble.outputs(lr, mode)
            for i, name in enumerate(ensemble.names):
                write_image(args.output / name / f"{path.stem}.png", out.srs[0, i])  # (3,4H,4W)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("run-experts", _main, argv)
