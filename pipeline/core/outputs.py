"""Output paths are checked before any work: nothing a user owns is ever replaced.

Every script validates each output it will write with :func:`check_output_file` or :func:`check_output_dir` *before*
it reads a model or an image:

* a path that exists and was not made by this tool (``ours(path)`` is False) is refused — a file the user keeps
  there, a folder holding their own files;
* a path that cannot be written (its folder is missing — for files — or read-only, or a file stands where a folder
  should be) is refused;
* the check leaves nothing behind (a writability probe is a temp file deleted at once): a refused run leaves the
  disk as it was.

:func:`remove_stale_temps` deletes the hidden temporary files that an interrupted atomic write
(:mod:`pipeline.core.atomic`) leaves behind, so a rerun after ``kill -9`` cleans up after the killed one.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline.core.errors import OutputPathError

__all__ = [
    "MARKER",
    "OutputPathError",
    "check_output_dir",
    "check_output_file",
    "is_marked",
    "mark_output_dir",
    "remove_stale_temps",
]

MARKER = ".sr-fusion-output"  # a hidden file in each output folder a script created: "this folder is ours"

Ours = Callable[[Path], bool]


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable_dir(folder: Path, *, label: str, target: Path) -> None:
    if not folder.is_dir():
        raise OutputPathError(f"{label} {target} is not writable: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{label} {target} is not writable: no write permission in {folder}")
    try:  # os.access is not the whole truth (read-only mounts, root on some file systems): probe for real
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputPathError(f"{label} {target} is not writable: {folder}: {exc.strerror}") from None


def check_output_file(
    path: str | os.PathLike, *, ours: Ours | None = None, create_parents: bool = False, label: str = "output"
) -> Path:
    """``path`` may be written: it does not exist (its folder does, or ``create_parents``), or it is a file that
    ``ours`` recognises as this tool's own. Raises :class:`OutputPathError` naming the path otherwise."""
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(f"{label} {p} is a folder, expected a file path")
    if p.exists() or p.is_symlink():
        if ours is None or not ours(p):
            raise OutputPathError(
                f"{label} {p} already exists and was not written by this tool: refusing to "
                "replace it (move it away or choose another path)"
            )
    parent = p.parent if p.parent != Path("") else Path(".")
    if not parent.exists():
        if not create_parents:
            raise OutputPathError(f"{label} {p}: folder {parent} does not exist")
        parent = _nearest_existing(parent)
    _check_writable_dir(parent, label=label, target=p)
    return p


def check_output_dir(
    path: str | os.PathLike, *, ours: Ours | None = None, ignore: Iterable[str] = (), label: str = "output folder"
) -> Path:
    """``path`` may be written into: it does not exist (it will be created; its nearest existing ancestor must be
    writable), or it is an empty folder, or a folder that ``ours`` recognises as this tool's own output. Names in
    ``ignore`` and the hidden temp files of an interrupted atomic write do not count as content."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{label} {p} exists and is not a folder")
    if p.is_dir():
        skip = set(ignore)
        content = sorted(c.name for c in p.iterdir() if c.name not in skip and not _ATOMIC_TMP.match(c.name))
        if content and (ours is None or not ours(p)):
            shown = ", ".join(content[:5]) + (f", … ({len(content)} entries)" if len(content) > 5 else "")
            raise OutputPathError(
                f"{label} {p} already holds files this tool did not write ({shown}): choose a new or empty folder"
            )
        _check_writable_dir(p, label=label, target=p)
    else:
        _check_writable_dir(_nearest_existing(p), label=label, target=p)
    return p


_ATOMIC_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")  # pipeline.core.atomic: .<name>.<mkstemp>.tmp


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the hidden temp files an interrupted :mod:`pipeline.core.atomic` write left in ``folder``; returns them.
    Only call this where no other writer is active (the scripts hold the folder's outputs alone)."""
    d = Path(folder)
    if not d.is_dir():
        return []
    removed = []
    for f in d.iterdir():
        if _ATOMIC_TMP.match(f.name) and (f.is_file() or f.is_symlink()):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def is_marked(folder: Path) -> bool:
    """``folder`` was created by one of this toolkit's scripts (:func:`mark_output_dir`)."""
    return (Path(folder) / MARKER).is_file()


def mark_output_dir(folder: str | os.PathLike, *, tool: str) -> Path:
    """Create ``folder`` (checked before with :func:`check_output_dir`) and mark it as this toolkit's, so a rerun may
    write into it again; deletes the temp files a killed earlier run left there."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    marker = d / MARKER
    if not marker.is_file():
        marker.write_text(f"written by {tool} (sr-fusion); a rerun may replace the files in this folder\n")
    remove_stale_temps(d)
    return d
