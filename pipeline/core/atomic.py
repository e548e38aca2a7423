"""Atomic file writes: write a temporary file in the destination folder, fsync, then ``os.replace``.

A reader never sees a half-written file under the final name, whatever moment the writer is killed at. The file
gets the permissions a plain ``open(path, "w")`` would give it (0666 less the umask, i.e. usually 0644) — not the
0600 of the temporary file — so a submission folder is readable by others. A kill leaves at most a hidden
``.<name>.<random>.tmp`` file, which :func:`pipeline.core.outputs.remove_stale_temps` deletes on the next run.

Any other failure — a full disk above all — removes the temporary file at once; a full disk (``ENOSPC``) or an
exceeded quota (``EDQUOT``) becomes one :class:`pipeline.core.errors.DiskFullError` naming the file and what was being
written, so the run stops with one line and a rerun after freeing space resumes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pipeline.core.errors import disk_full, is_disk_full

__all__ = ["atomic_write_bytes", "atomic_write_text", "default_file_mode", "replace_with_bytes"]


def default_file_mode() -> int:
    """0666 less the process umask: the mode ``open(path, "w")`` creates files with."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _finish(fd: int, tmp: Path, final: Path, data: bytes, what: str) -> Path:
    """Write ``data`` to the open ``fd`` of ``tmp``, fsync, close, rename to ``final``; on failure ``tmp`` goes."""
    try:
        try:
            os.fchmod(fd, default_file_mode())  # mkstemp makes 0600
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(final, what, exc) from None
        raise
    return final


def replace_with_bytes(path: str | os.PathLike, data: bytes, *, tmp: str | os.PathLike, what: str = "it") -> Path:
    """:func:`atomic_write_bytes` through a temporary file of a fixed name ``tmp`` (beside ``path``; a stale one from
    a killed run is replaced) — for writers that find their own leftovers by name (the cache)."""
    tmp = Path(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path, what, exc) from None
        raise
    return _finish(fd, tmp, Path(path), data, what)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "it") -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); ``what`` names the content in a disk-full
    error (e.g. ``"the zip"``)."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(p, what, exc) from None
        raise
    return _finish(fd, Path(tmp), p, data, what)


def atomic_write_text(path: str | os.PathLike, text: str, *, what: str = "it") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), what=what)
