"""The ×8 self-ensemble (test-time augmentation): one type and one command-line option for every command.

:class:`SelfEnsemble` says where the eight dihedral transforms (:mod:`pipeline.core.augment`) are averaged:

* ``none``: no self-ensemble;
* ``experts-x8``: each **expert** runs on the 8 transforms of the LR and its outputs are averaged, then the fusion (or
  an ensemble) combines the averages once — the "+" results of the SR papers. A cache made so
  (``sr-fusion extract --self-ensemble experts-x8``) records ``self_ensemble: 8`` in its fingerprints;
* ``pipeline-x8``: the **whole pipeline** (experts and fusion or ensemble) runs on each transform and the 8 results
  are averaged.

Every command spells it ``--self-ensemble {none,experts-x8,pipeline-x8}`` (:func:`add_argument`), offering the
modes that make sense for it (caching and running experts alone: ``none`` and ``experts-x8``).
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Sequence

__all__ = ["FLAG", "SelfEnsemble", "add_argument"]

FLAG = "--self-ensemble"


class SelfEnsemble(enum.Enum):
    NONE = "none"
    EXPERTS = "experts-x8"
    PIPELINE = "pipeline-x8"

    @property
    def readme(self) -> str:
        """How a submission's readme.txt says it (``self-ensemble: <this>``)."""
        return _README[self]

    @property
    def expert_passes(self) -> int:
        """How many times each expert's output is averaged in what a cache stores (1 or 8)."""
        return 8 if self is SelfEnsemble.EXPERTS else 1

    def __str__(self) -> str:
        return self.value


_README = {
    SelfEnsemble.NONE: "no",
    SelfEnsemble.EXPERTS: "yes, x8 of each expert before combining",
    SelfEnsemble.PIPELINE: "yes, x8 of the whole pipeline",
}

_OLD = {  # the flags before issue 39: refused with the new spelling
    "--tta": "now --self-ensemble experts-x8 (extract, run-experts) or --self-ensemble pipeline-x8 (submit)",
    "--expert-tta": "now --self-ensemble experts-x8",
}


class _Renamed(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {_OLD[option_string]}")


def add_argument(
    ap: argparse.ArgumentParser, *, modes: Sequence[SelfEnsemble] = tuple(SelfEnsemble), help: str | None = None
) -> None:
    """``--self-ensemble MODE`` (default ``none``) on a parser, offering ``modes``; the value is a
    :class:`SelfEnsemble`. The old ``--tta`` / ``--expert-tta`` are refused with the new spelling."""
    choices = [m.value for m in modes]
    text = help or "x8 self-ensemble: " + ", ".join(
        {"none": "none (default)", "experts-x8": "experts-x8 (each expert)", "pipeline-x8": "pipeline-x8 (all)"}[c]
        for c in choices
    )
    ap.add_argument(
        FLAG,
        type=SelfEnsemble,
        choices=list(modes),
        default=SelfEnsemble.NONE,
        metavar="{" + ",".join(choices) + "}",
        help=text,
    )
    for old in _OLD:
        ap.add_argument(old, nargs=0, action=_Renamed, help=argparse.SUPPRESS)
