"""How the bundled experts of ``experts/zoo/`` were trained: one YAML, read by the script that rebuilds them and by
the test that checks each export against it (``configs/experts/zoo_recipe.yaml``)::

    experts:
      hat_s:                                          # experts/zoo/hat_s
        config: configs/experts/train/hat_s.yaml      # stage 1: this training config, from scratch
        fine_tune:                                    # stages 2, 3, ...: dotted overrides of the same config, each
          - [train.steps=4000, train.lr=4e-4]         # starting from the previous stage's (EMA) weights

Stage ``k`` trains run ``runs/<name>`` (k = 1), ``runs/<name>_ft`` (k = 2), ``runs/<name>_ft<k-1>`` (k > 2); a
fine-tuning stage gets ``model.init_from=runs/<previous run>`` in front of its overrides.

``python -m pipeline.training.expert.recipe RECIPE NAME`` prints one line per stage of ``NAME`` — the run name, a tab,
then the
training config and its overrides separated by spaces — and ``python -m pipeline.training.expert.recipe RECIPE`` the
entries'
names, one a line, for ``scripts/reproduce_zoo.sh``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.core.config import ConfigError, load_config

__all__ = ["ZooEntryRecipe", "ZooRecipe", "ZooStage", "load_zoo_recipe", "stage_run_name", "stages"]


@dataclass(frozen=True)
class ZooEntryRecipe:
    config: str  # the training config (scripts/train_expert.py CONFIG) of every stage
    fine_tune: tuple[tuple[str, ...], ...] = ()  # per stage after the first: its dotted overrides of `config`


@dataclass(frozen=True)
class ZooRecipe:
    experts: Mapping[str, ZooEntryRecipe]


@dataclass(frozen=True)
class ZooStage:
    run: str  # the run name (runs/<run>)
    config: str
    overrides: tuple[str, ...]  # what scripts/train_expert.py gets after CONFIG (model.init_from first when tuning)


def stage_run_name(name: str, index: int) -> str:
    """The run of stage ``index`` (0-based) of zoo entry ``name``."""
    return name if index == 0 else f"{name}_ft" if index == 1 else f"{name}_ft{index}"


def load_zoo_recipe(path: str | os.PathLike) -> ZooRecipe:
    recipe = load_config(ZooRecipe, path)
    if not recipe.experts:
        raise ConfigError(f"{path}: no experts")
    for name, entry in recipe.experts.items():
        for overrides in entry.fine_tune:
            for item in overrides:
                if (
                    "=" not in item
                    or any(c.isspace() for c in item)
                    or item.startswith(("model.init_from=", "train.name="))
                ):
                    raise ConfigError(
                        f"{path}: experts.{name}.fine_tune: {item!r} is not a dotted key=value without "
                        "spaces (model.init_from and train.name are set by the stage itself)"
                    )
    return recipe


def stages(recipe: ZooRecipe, name: str) -> list[ZooStage]:
    """Every stage of zoo entry ``name`` in training order."""
    if name not in recipe.experts:
        raise ConfigError(f"no zoo entry {name!r} in the recipe (entries: {', '.join(recipe.experts)})")
    entry = recipe.experts[name]
    out = [ZooStage(run=stage_run_name(name, 0), config=entry.config, overrides=())]
    for i, overrides in enumerate(entry.fine_tune, start=1):
        out.append(
            ZooStage(
                run=stage_run_name(name, i),
                config=entry.config,
                overrides=(f"model.init_from=runs/{out[-1].run}", *overrides),
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.training.expert.recipe", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("recipe", help="the recipe YAML (configs/experts/zoo_recipe.yaml)")
    parser.add_argument("name", nargs="?", help="a zoo entry of it (none: list the entries)")
    args = parser.parse_args(argv)
    try:
        recipe = load_zoo_recipe(args.recipe)
        recipe_stages = stages(recipe, args.name) if args.name else []
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    if not args.name:
        print("\n".join(recipe.experts))
    for stage in recipe_stages:
        print(f"{stage.run}\t{' '.join((stage.config, *stage.overrides))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
