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

:func:`claim_output_dir` is how a script then writes a checked folder: it creates it, locks it for this process (a
second writer into the same folder is refused at once, naming the first; :mod:`pipeline.core.locks`), marks it as
the toolkit's, and on the way out deletes the lock file — and the folder itself when this run created it and failed
before writing anything into it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.atomic import atomic_write_text
from pipeline.core.errors import OutputPathError
from pipeline.core.imageio import ImageScan, scan_images
from pipeline.core.locks import FileLock, LockedError

__all__ = [
    "MARKER",
    "OUTPUT_LOCK",
    "OutputLockedError",
    "OutputPathError",
    "check_output_dir",
    "claim_output_dir",
    "check_output_file",
    "check_table_outputs",
    "is_marked",
    "mark_output_dir",
    "remove_stale_temps",
]

MARKER = ".sr-fusion-output"  # a hidden file in each output folder a script created: "this folder is ours"
OUTPUT_LOCK = ".sr-fusion.lock"  # the lock file of the process writing an output folder (claim_output_dir)


class OutputLockedError(OutputPathError):
    """Another process is writing into this output folder right now."""


Ours = Callable[[Path], bool]


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable_dir(folder: Path, *, label: str, target: Path, missing: Path | None = None) -> None:
    """``folder`` (an existing folder) can be written into. ``missing``: the folder the output needs that does not
    exist yet and would be created under ``folder`` — the one an error then names (not ``folder`` itself, which
    exists)."""
    if missing is not None:
        what = f"folder {missing} cannot be created (in {folder}"
    else:
        what = f"cannot write into {folder} ("
    if not folder.is_dir():
        raise OutputPathError(f"{label} {target} is not writable: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        sep = ": " if missing is not None else ""
        raise OutputPathError(f"{label} {target} is not writable: {what}{sep}no write permission)")
    try:  # os.access is not the whole truth (read-only mounts, root on some file systems): probe for real
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        sep = ": " if missing is not None else ""
        raise OutputPathError(f"{label} {target} is not writable: {what}{sep}{exc.strerror})") from None


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
    missing = None
    if not parent.exists():
        if not create_parents:
            raise OutputPathError(f"{label} {p}: folder {parent} does not exist")
        missing, parent = parent, _nearest_existing(parent)
    _check_writable_dir(parent, label=label, target=p, missing=missing)
    return p


def check_table_outputs(out: str | os.PathLike, *, ours: Ours, label: str = "--out") -> tuple[Path, Path]:
    """A table written as ``OUT.json`` + ``OUT.md``: both may be written (:func:`check_output_file`, parents created);
    the Markdown counts as this tool's own when the JSON beside it does. Returns ``(OUT.json, OUT.md)``."""
    out_json, out_md = Path(out).with_suffix(".json"), Path(out).with_suffix(".md")
    check_output_file(out_json, ours=ours, create_parents=True, label=label)
    check_output_file(out_md, ours=lambda _: out_json.is_file() and ours(out_json), create_parents=True, label=label)
    return out_json, out_md


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
        skip = {*ignore, MARKER, OUTPUT_LOCK}  # the toolkit's own bookkeeping is not content
        content = sorted(c.name for c in p.iterdir() if c.name not in skip and not _ATOMIC_TMP.match(c.name))
        if content and (ours is None or not ours(p)):
            shown = ", ".join(content[:5]) + (f", … ({len(content)} entries)" if len(content) > 5 else "")
            raise OutputPathError(
                f"{label} {p} already holds files this tool did not write ({shown}): choose a new or empty folder"
            )
        _check_writable_dir(p, label=label, target=p)
    else:
        _check_writable_dir(_nearest_existing(p), label=label, target=p, missing=p)
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
        atomic_write_text(
            marker, f"written by {tool} (sr-fusion); a rerun may replace the files in this folder\n", what="its marker"
        )
    remove_stale_temps(d)
    return d


@contextmanager
def claim_output_dir(folder: str | os.PathLike, *, tool: str) -> Iterator[Path]:
    """Write into the output ``folder`` (checked before with :func:`check_output_dir`) as its only writer::

        with claim_output_dir(out, tool="submit.py"):
            ...  # load models, write files

    Creates the folder (and missing parents), takes its lock (``.sr-fusion.lock`` inside; another process writing
    there → :class:`OutputLockedError` at once), marks it (:func:`mark_output_dir`, which also deletes a killed
    run's temp files: safe now that no one else writes there). On the way out the lock file is deleted; if the block
    raised and this call created the folder, which holds nothing else, the folder (and the parents it created) is
    removed again: a refused or failed run leaves no trace."""
    d = Path(folder)
    created = []  # the folders this call creates, deepest first
    p = d.absolute()
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    lock = FileLock(d / OUTPUT_LOCK)
    try:
        lock.acquire()
    except LockedError as exc:
        raise OutputLockedError(
            f"output folder {d} is being written right now by {exc.holder} (lock {lock.path}): wait for it to finish "
            "or choose another folder"
        ) from None
    ok = False
    try:
        mark_output_dir(d, tool=tool)
        yield d
        ok = True
    finally:
        try:
            if not ok and created and d.is_dir() and {c.name for c in d.iterdir()} <= {MARKER, OUTPUT_LOCK}:
                shutil.rmtree(d, ignore_errors=True)  # still locked while it goes
                for parent in created[1:]:
                    try:
                        parent.rmdir()
                    except OSError:
                        break
        finally:
            lock.release()


def scan_for_outputs(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    ours: Ours | None = None,
    other_files: bool = True,
    label: str = "output folder",
) -> ImageScan:
    """A folder of images in, a folder of outputs named after them out (submit, run-experts, bicubic): the output
    folder must not be the input folder (the names would collide) and may be written (:func:`check_output_dir`; ``ours``
    default: :func:`is_marked`) — checked first, it is cheap —, then every input is decoded
    (:func:`pipeline.core.imageio.scan_images`, sub-folders are problems; :meth:`ImageScan.check` raises the input
    problems once the minimum size is known). Nothing is written: :func:`claim_output_dir` comes next."""
    if Path(output_dir).resolve() == Path(input_dir).resolve():
        raise OutputPathError(f"{label} {output_dir} is the input folder: choose another one (outputs keep its names)")
    check_output_dir(output_dir, ours=is_marked if ours is None else ours, label=label)
    return scan_images(input_dir, other_files=other_files, subfolders=False)
