"""Run every expert of a config on a folder of LR images.

    python -m experts.run --config configs/experts/shared_real.yaml --input LR_DIR --output OUT_DIR \
        [--root REPO_ROOT] [--device NAME=DEVICE ...] [--gather-device cpu]

Writes ``OUT_DIR/<expert>/<image stem>.png`` (8-bit, rounded) for every expert and every image of ``LR_DIR``, and
``OUT_DIR/fingerprints.json`` (name, architecture, sha256, hooks, feature channels, detected hyper-parameters of each
expert). Checkpoint paths in the config are relative to the repository root unless ``--root`` says otherwise.
``--device craft=cuda:1`` moves one expert without editing the YAML. ``--tta``: ×8 self-ensemble of each expert
(:meth:`experts.ensemble.ExpertEnsemble.self_ensemble`; ``fingerprints.json`` records ``self_ensemble: 8``).
Every input is decoded and the output folder checked (new, empty, or made by this command) before any work.

    python -m experts.run --config MY_EXPERTS.yaml --check

onboards a new YAML: every expert parsed and loaded on its own, every problem of each listed in one pass (keys,
opt-in, files, pins, the weights against the class, the smallest input side, the probe of experts/probe.py), and
each working expert's probe PSNR; exit status 2 when any expert fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from experts.check import check_experts, format_checks
from experts.ensemble import ExpertEnsemble
from experts.spec import load_ensemble_spec, with_devices
from pipeline.core.atomic import atomic_write_text
from pipeline.core.cli import program_name, run_cli
from pipeline.core.config import ConfigError
from pipeline.core.imageio import read_image, scan_images, write_image
from pipeline.core.outputs import OutputPathError, check_output_dir, claim_output_dir, is_marked, mark_output_dir

__all__ = ["main", "parse_device_map"]


def parse_device_map(items: list[str]) -> dict[str, str]:
    """``["craft=cuda:1", ...]`` → ``{"craft": "cuda:1", ...}``."""
    devices: dict[str, str] = {}
    for item in items:
        name, sep, device = item.partition("=")
        if not sep or not name or not device:
            raise ConfigError(f"--device {item!r} is not of the form NAME=DEVICE")
        devices[name] = device
    return devices


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog=program_name("python -m experts.run"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config", required=True, type=Path, help="expert YAML (configs/experts/*.yaml)")
    ap.add_argument("--input", type=Path, help="folder of LR images")
    ap.add_argument("--output", type=Path, help="output folder (one sub-folder per expert)")
    ap.add_argument(
        "--check",
        action="store_true",
        help="onboarding: parse and load every expert of --config on its own and print each one's problems or "
        "probe PSNR (experts/check.py); no --input/--output; exit 2 if any expert fails",
    )
    ap.add_argument(
        "--root", type=Path, default=None, help="resolve relative checkpoint paths here (default: repo root)"
    )
    ap.add_argument("--device", action="append", default=[], metavar="NAME=DEVICE", help="per-expert device override")
    ap.add_argument("--gather-device", default="cpu", help="device the outputs are gathered on (default cpu)")
    ap.add_argument("--tta", action="store_true", help="x8 self-ensemble of each expert (flips x rot90, averaged)")
    args = ap.parse_args(argv)
    if args.check:
        checks, problems = check_experts(args.config, root=args.root)
        print("\n".join(format_checks(checks, problems)))
        return 0 if checks and all(c.ok for c in checks) and not problems else 2
    if args.input is None or args.output is None:
        ap.error("--input and --output are required (or --check)")

    # the output folder and every input (decoded) are checked before an expert is loaded or anything written
    if args.output.resolve() == args.input.resolve():
        raise OutputPathError(f"output folder {args.output} is the input folder: choose another one")
    check_output_dir(args.output, ours=is_marked)
    scan = scan_images(args.input, subfolders=False)  # every input decoded; its problems raised with the small ones
    spec = with_devices(load_ensemble_spec(args.config), parse_device_map(args.device))
    with claim_output_dir(args.output, tool="experts.run"):  # this process's alone from before the experts load
        ensemble = ExpertEnsemble.from_spec(spec, root=args.root, gather_device=args.gather_device)
        files = scan.check(min_side=ensemble.min_lr_size, what="the experts' minimum LR side")
        for name in ensemble.names:
            mark_output_dir(args.output / name, tool="experts.run")
        fingerprints = [{**fp.to_dict(), "self_ensemble": 8 if args.tta else 1} for fp in ensemble.fingerprints]
        atomic_write_text(args.output / "fingerprints.json", json.dumps(fingerprints, indent=2))
        for path in tqdm(files, desc="experts x8" if args.tta else "experts", unit="img"):
            lr = read_image(path)  # (1,3,H,W)
            out = ensemble.self_ensemble(lr) if args.tta else ensemble(lr)
            for i, name in enumerate(ensemble.names):
                write_image(args.output / name / f"{path.stem}.png", out.srs[0, i])  # (3,4H,4W)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("experts.run", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
