"""The files the toolkit ships — expert YAMLs, run configs, the bundled experts and fusions — and their names.

Where they are (:func:`root`):

* in a checkout, the repository itself: ``configs/``, ``checkpoints/``, ``experts/zoo/``;
* in an installed wheel, the package data folder ``pipeline/_bundled/`` (read with :mod:`importlib.resources`), which
  mirrors those three folders (``[tool.setuptools.package-dir]`` in pyproject.toml maps them there): the wheel adds no
  top-level name beside ``pipeline``, ``experts`` and ``cache``.

The mirror keeps every relative path between the assets the same in both: the bundled expert YAML's
``../../experts/zoo/hat_s/model.safetensors`` (relative to the YAML's folder, as every expert YAML's paths are) and the
bundled fusion's recorded ``experts/zoo/hat_s/model.safetensors`` (relative to :func:`root`, as every recorded path
is: :func:`experts.spec.recorded_path`).

Names (:data:`KINDS`, ``sr-fusion list``): a command that takes one of these files also takes its bundled name —
``--run fusion_zoo_small``, ``--experts zoo_small``, ``--config zoo_small`` — from any folder. A path that exists
always wins over a name (:func:`resolve`); what is neither is one :class:`BundledError` naming the path it resolved
to and the bundled names of that kind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pipeline.core.errors import ToolkitError, shorten

__all__ = [
    "INSTALLED_FOLDER",
    "KINDS",
    "BundledError",
    "Kind",
    "find",
    "installed",
    "named",
    "names",
    "resolve",
    "resolve_arguments",
    "root",
]

INSTALLED_FOLDER = "_bundled"  # pipeline/_bundled/ in a wheel: the mirror of configs/, checkpoints/, experts/zoo/


class BundledError(ToolkitError, FileNotFoundError):
    """A path that does not exist and is no bundled name either (or the bundled files are missing)."""


@dataclass(frozen=True)
class Kind:
    """One kind of bundled file: where it lives below :func:`root` and whether it is a folder or a YAML file."""

    folder: str  # relative to root(), '/'-separated; several: separated by ' '
    folders: bool  # True: each sub-folder is one asset (a checkpoint); False: each *.yaml file is one
    what: str  # what a user reads in `sr-fusion list` and in errors
    flags: str  # the options that take it
    exclude: tuple[str, ...] = ()  # names in the folder that are something else


# the package holding this module: "pipeline", or its vendored copy in an NTIRE export (models.team…._vendor.pipeline)
_PACKAGE = __name__.rsplit(".core.", 1)[0]

KINDS: dict[str, Kind] = {
    # zoo_recipe.yaml beside the expert YAMLs is how the zoo was trained (pipeline/training/expert/recipe.py)
    "experts": Kind("configs/experts", False, "expert YAML", "--experts, --config", exclude=("zoo_recipe",)),
    "run": Kind("checkpoints", True, "fusion checkpoint", "--run, --fusion, --init, train.init_from"),
    "train": Kind("configs configs/train", False, "fusion training config", "sr-fusion train CONFIG"),
    "expert-train": Kind("configs/experts/train", False, "expert training config", "scripts/train_expert.py CONFIG"),
    "zoo": Kind("experts/zoo", True, "trained expert (a folder: weights, config.json, expert.yaml)", "model.init_from"),
    "refiner": Kind("configs/refiner", False, "refiner config", "--refiner"),
}


def installed() -> bool:
    """True when this is an installed wheel (its package data folder ``pipeline/_bundled/`` exists)."""
    return _installed_folder() is not None


def _installed_folder() -> Path | None:
    folder = resources.files(_PACKAGE) / INSTALLED_FOLDER
    if not folder.is_dir():
        return None
    if not isinstance(folder, Path):  # a zipped install: the files must be real files (h5py, safetensors, spandrel)
        raise BundledError(f"{folder}: the bundled files are inside an archive; install the wheel unpacked (pip does)")
    return folder


def root() -> Path:
    """The folder the bundled files lie below: ``site-packages/pipeline/_bundled`` when installed, else the checkout
    (the folder holding ``pipeline/``)."""
    folder = _installed_folder()
    if folder is not None:
        return folder
    package = resources.files(_PACKAGE)
    if not isinstance(package, Path):
        raise BundledError(f"{package}: the toolkit is inside an archive; install it unpacked (pip does)")
    return package.parent


def names(kind: str) -> dict[str, Path]:
    """``{name: path}`` of every bundled file of ``kind`` (:data:`KINDS`), sorted by name."""
    k = KINDS[kind]
    found: dict[str, Path] = {}
    for rel in k.folder.split():
        folder = root().joinpath(*rel.split("/"))
        if not folder.is_dir():
            continue
        if k.folders:
            found.update({p.name: p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))})
        else:
            found.update({p.stem: p for p in folder.glob("*.yaml") if p.is_file()})
    return {n: found[n] for n in sorted(found) if n not in k.exclude}


def find(kind: str, name: str) -> Path | None:
    """The bundled file of ``kind`` called ``name``, else None."""
    return names(kind).get(name)


def _is_name(value: str) -> bool:
    return bool(value) and "/" not in value and os.sep not in value and not value.startswith(".")


def resolve(value: str | os.PathLike, kind: str, *, flag: str | None = None) -> Path:
    """What ``value`` names: the path itself when it exists (a path always wins), else the bundled ``kind`` of that
    name. Neither: a :class:`BundledError` naming the path it resolved to and the bundled names."""
    path = Path(value).expanduser()
    if path.exists():
        return path
    text = os.fspath(value)
    if _is_name(text):
        found = find(kind, text)
        if found is not None:
            return found
    k = KINDS[kind]
    bundled = ", ".join(names(kind)) or "none"
    where = f"{flag} " if flag else ""
    raise BundledError(
        f"{where}{shorten(text)}: no such file or folder ({path.absolute()}), and no bundled {k.what} of that name "
        f"(bundled: {bundled}; `sr-fusion list` shows where they are)"
    )


def named(value: str | os.PathLike, kind: str) -> Path:
    """Like :func:`resolve`, but what is neither a path nor a bundled name is returned as it is (for callers whose own
    checks name what is missing)."""
    path = Path(value).expanduser()
    if path.exists() or not _is_name(os.fspath(value)):
        return path
    return find(kind, os.fspath(value)) or path


def resolve_arguments(args: object, kinds: dict[str, str]) -> None:
    """For a parsed command line: ``args.<dest>`` = :func:`resolve` of it for each ``dest → kind`` of ``kinds`` that is
    set (the error names the option, ``--dest``)."""
    for dest, kind in kinds.items():
        value = getattr(args, dest)
        if value is not None:
            setattr(args, dest, resolve(value, kind, flag="--" + dest.replace("_", "-")))
