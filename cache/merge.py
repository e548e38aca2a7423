"""One training cache from several (``sr-fusion merge-caches``): DF2K + LSDIR, or the originals plus new images.

The experts ran once per image; merging never runs them again and never copies an image's data where the file system
can share it: each image's file is hard-linked into the new cache's data folder (copied, and fsynced, across file
systems). A cache's files are never modified in place (the writer replaces them whole), so a link is as safe as a
copy: re-extracting or deleting a source later leaves the merged cache intact.

Every source must hold the same experts (names, checkpoints' sha256, hooks), scale, LR method, layout and compression,
and no image name may appear twice — each refused before anything is written, naming the caches and the field. The
output is written like an extraction: locked, resumable (kill it, rerun it), its index written last.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from cache.reader import CacheReader
from cache.schema import describe_mismatch
from cache.writer import CacheWriter, _fsync_dir, check_cache_out, part_path
from pipeline.core.errors import ToolkitError, disk_full, is_disk_full

__all__ = ["MergeError", "merge_caches"]


class MergeError(ToolkitError, ValueError):
    """The caches cannot be merged: other experts, layout or compression, or an image name twice."""


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s content: a hard link where possible, else a copy flushed to disk; atomic (a temp
    name, then a rename), so a killed merge leaves at most a temp file that the next run replaces."""
    tmp = dst.with_name(f".{dst.name}.tmp-r0")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        try:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        except OSError as copy_exc:
            tmp.unlink(missing_ok=True)
            if is_disk_full(copy_exc):
                raise disk_full(dst, f"the copy of {src.name}", copy_exc) from None
            raise
    os.replace(tmp, dst)


def merge_caches(
    sources: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False
) -> CacheReader:
    """Every image of every cache in ``sources`` (in that order) → the new cache ``out``; → a reader of it."""
    srcs = [Path(s) for s in sources]
    out = Path(out)
    if len(srcs) < 2:
        raise MergeError(f"merging needs at least two caches, got {len(srcs)}")
    if out.resolve() in {s.resolve() for s in srcs}:
        raise MergeError(f"{out}: the merged cache must be a new file, not one of its sources")
    readers = [CacheReader(s) for s in srcs]
    try:
        first = readers[0]
        problems = []
        for s, r in zip(srcs[1:], readers[1:]):
            diffs = describe_mismatch(r.meta, first.meta)
            if r.compression != first.compression:
                diffs.append(f"compression: {r.compression} vs {first.compression}")
            if r.has_hr != first.has_hr:
                diffs.append(f"HR images: {'stored' if r.has_hr else 'none'} vs {'stored' if first.has_hr else 'none'}")
            if diffs:
                problems.append(f"{s} differs from {srcs[0]}: {'; '.join(diffs)}")
        owner: dict[str, Path] = {}
        for s, r in zip(srcs, readers):
            for name in r.names:
                if name in owner:
                    problems.append(f"image {name!r} is in both {owner[name]} and {s}")
                owner.setdefault(name, s)
        if problems:
            shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
            raise MergeError("cannot merge: " + " | ".join(shown))
        check_cache_out(out)
        with CacheWriter(out, meta=first.meta, compression=first.compression or "none", overwrite=overwrite) as w:
            jobs = [(r, i, name) for r in readers for i, name in enumerate(r.names)]
            for r, i, name in tqdm(jobs, desc="merge", unit="img"):
                if not w.is_done(name):
                    _link_or_copy(r.sample_file(i), part_path(w.data_dir, name))
            _fsync_dir(w.data_dir)
            w.write_index([name for _, _, name in jobs], skipped=[s for r in readers for s in r.skipped])
    finally:
        for r in readers:
            r.close()
    return CacheReader(out)
