"""``sr-fusion``: the toolkit's one console command, a subcommand per user-facing program.

    sr-fusion --help
    sr-fusion submit --run runs/NAME --input LR_DIR --output OUT_DIR
    sr-fusion SUBCOMMAND --help

Each subcommand is the program of the same purpose in the repository (``sr-fusion submit`` ≡ ``python
scripts/submit.py``): the same ``main`` in pipeline/commands/ (or ``experts.run``), the same arguments, the same exit
status. Installed with the package (``pip install .``; ``[project.scripts]`` in pyproject.toml); without installing,
``python -m pipeline.app`` is the same command.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.core.cli import call_main, invoked_as

__all__ = ["COMMANDS", "Command", "main"]

PROG = "sr-fusion"


@dataclass(frozen=True)
class Command:
    module: str  # holds main(argv) -> int
    script: str  # the same program as a file of the repository
    summary: str


COMMANDS: dict[str, Command] = {
    "quickstart": Command(
        "pipeline.commands.quickstart", "scripts/quickstart.py", "the whole pipeline end to end on bundled photos"
    ),
    "make-lr": Command("pipeline.commands.make_lr", "scripts/make_lr.py", "x4 LR images from HR (MATLAB bicubic)"),
    "run-experts": Command("experts.run", "python -m experts.run", "run each expert of a YAML on LR images"),
    "extract": Command(
        "pipeline.commands.extract_features",
        "scripts/extract_features.py",
        "run the experts once and cache their SR outputs and features (HDF5)",
    ),
    "merge-caches": Command(
        "pipeline.commands.merge_caches",
        "scripts/merge_caches.py",
        "one training cache from several of the same experts (hard links, no expert runs)",
    ),
    "store": Command(
        "pipeline.commands.store", "python -m pipeline.app store", "the expert-output store: size, verify, prune, clear"
    ),
    "train": Command("pipeline.commands.train", "train.py", "train the fusion network on a cache"),
    "fit": Command(
        "pipeline.commands.fit_ensembler", "scripts/fit_ensembler.py", "fit a training-free ensembler on a cache"
    ),
    "submit": Command("pipeline.commands.submit", "scripts/submit.py", "a run → an NTIRE x4 submission folder / zip"),
    "evaluate": Command("pipeline.commands.evaluate", "scripts/evaluate.py", "score SR images as the NTIRE organisers"),
    "compare": Command(
        "pipeline.commands.compare_ensembles",
        "scripts/compare_ensembles.py",
        "the fusion against every ensemble of the experts, one table",
    ),
    "report": Command("pipeline.commands.report", "scripts/report.py", "HTML report of a fusion on a set of images"),
    "export": Command(
        "pipeline.commands.export_ntire", "scripts/export_ntire.py", "a run → an NTIRE code submission folder"
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: {PROG} SUBCOMMAND [ARGS ...]   ({PROG} SUBCOMMAND --help for its arguments)",
        "",
        "NTIRE x4 super-resolution by multi-expert fusion. Subcommands:",
        "",
        *(f"  {name:<{width}}  {c.summary} ({c.script})" for name, c in COMMANDS.items()),
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
    run = importlib.import_module(command.module).main
    with invoked_as(f"{PROG} {name}"):
        return call_main(run, rest)


if __name__ == "__main__":
    sys.exit(main())
