"""``sr-fusion``: the toolkit's one console command, a subcommand per user-facing program.

    sr-fusion --help
    sr-fusion submit --run fusion_zoo_small --input LR_DIR --output OUT_DIR
    sr-fusion SUBCOMMAND --help

Each subcommand's code is ``pipeline/commands/<module>.py`` (its ``parser()`` and ``main``); the files of scripts/ and
train.py are thin shims that run the same ``main`` (``python scripts/submit.py`` ≡ ``sr-fusion submit``). Installed
with the package (``pip install .``; ``[project.scripts]`` in pyproject.toml); without installing, ``python -m
pipeline.app`` is the same command. docs/CLI.md is generated from these parsers (pipeline/commands/cli_docs.py).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.core.cli import PROG, call_main

__all__ = ["COMMANDS", "Command", "main"]


@dataclass(frozen=True)
class Command:
    module: str  # pipeline.commands.<module>: holds parser() and main(argv) -> int
    shim: str  # the thin program file of the repository that runs the same main
    summary: str


COMMANDS: dict[str, Command] = {
    "list": Command("list_bundled", "", "every bundled file (experts, fusions, configs) by name, and where it lives"),
    "quickstart": Command("quickstart", "scripts/quickstart.py", "the whole pipeline end to end on bundled photos"),
    "make-lr": Command("make_lr", "scripts/make_lr.py", "x4 LR images from HR (MATLAB bicubic)"),
    "bicubic": Command("bicubic", "scripts/bicubic.py", "the bicubic baseline: upscale LR images (MATLAB bicubic)"),
    "run-experts": Command("run_experts", "scripts/run_experts.py", "run each expert of a YAML on LR images"),
    "extract": Command(
        "extract_features",
        "scripts/extract_features.py",
        "run the experts once and cache their SR outputs and features (HDF5)",
    ),
    "repack": Command("repack_cache", "scripts/repack_cache.py", "re-pack a cache into a leaner layout"),
    "merge-caches": Command(
        "merge_caches",
        "scripts/merge_caches.py",
        "one training cache from several of the same experts (hard links, no expert runs)",
    ),
    "train": Command("train", "train.py", "train the fusion network on a cache"),
    "stack-gates": Command("stack_gates", "", "average independently trained set gates in one checkpoint"),
    "train-expert": Command("train_expert", "scripts/train_expert.py", "train or fine-tune one expert"),
    "fit": Command("fit_ensembler", "scripts/fit_ensembler.py", "fit a training-free ensembler on a cache"),
    "submit": Command("submit", "scripts/submit.py", "a run or an ensemble → an NTIRE x4 submission folder / zip"),
    "evaluate": Command("evaluate", "scripts/evaluate.py", "score SR images as the NTIRE organisers"),
    "store": Command("store", "", "the expert-output store: where, how big, verify, prune, clear"),
    "compare": Command(
        "compare_ensembles", "scripts/compare_ensembles.py", "the fusion against every ensemble of the experts"
    ),
    "report": Command("report", "scripts/report.py", "HTML report of a fusion on a set of images"),
    "export": Command("export_ntire", "scripts/export_ntire.py", "a run or an ensemble → an NTIRE code submission"),
}


def module(name: str):
    """The command module of the subcommand ``name``."""
    return importlib.import_module(f"pipeline.commands.{COMMANDS[name].module}")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: {PROG} SUBCOMMAND [ARGS ...]   ({PROG} SUBCOMMAND --help for its arguments)",
        "",
        "NTIRE x4 super-resolution by multi-expert fusion. Subcommands:",
        "",
        *(f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()),
        "",
        "--debug (any subcommand): show the traceback of an input or config error instead of one line.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``sr-fusion SUBCOMMAND ARGS...`` → the subcommand's exit status (``--help``: the list of subcommands)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"{PROG}: unknown subcommand {name!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return call_main(module(name).main, rest)


if __name__ == "__main__":
    sys.exit(main())
