"""Re-pack an existing cache into a leaner layout without running the experts again (``scripts/repack_cache.py``).

A cache can only lose information this way: features ``full`` → ``none``, SR ``float16`` → ``uint8`` (rounded like
:func:`cache.writer.encode_srs` does at extraction, so a re-packed cache equals one extracted with that layout), and
any compression. The output is written by :class:`cache.writer.CacheWriter`: crash-safe and resumable like an
extraction (rerun the same command after a kill), refused over a file that is not a cache.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from tqdm import tqdm

from cache.reader import CacheReader
from cache.schema import CacheLayout
from cache.writer import CacheWriter, check_cache_out, encode_srs
from pipeline.core.errors import ToolkitError

__all__ = ["RepackError", "repack"]


class RepackError(ToolkitError, ValueError):
    """The requested layout needs data the source cache does not hold, or the output is the source."""


def repack(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layout: CacheLayout,
    compression: str = "none",
    overwrite: bool = False,
) -> CacheReader:
    """Write every image of the cache ``src`` to ``out`` in ``layout`` → a reader of the new cache."""
    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise RepackError(f"{out}: re-packing writes a new cache, not over its source")
    reader = CacheReader(src)
    have = reader.layout
    if layout.has_features and not have.has_features:
        raise RepackError(f"{src} stores no features (features none): it cannot be re-packed with features full")
    if layout.sr_dtype == "float16" and have.sr_dtype == "uint8":
        raise RepackError(f"{src} stores 8-bit SR images (sr uint8): their float16 precision is gone")
    check_cache_out(out)
    meta = dataclasses.replace(reader.meta, layout=layout)
    with CacheWriter(out, meta=meta, compression=compression, overwrite=overwrite) as writer:
        for i, name in enumerate(tqdm(reader.names, desc="repack", unit="img")):
            if writer.is_done(name):
                continue
            s = reader.read_stored(i)
            srs = s["srs"] if have.sr_dtype == layout.sr_dtype else encode_srs(s["srs"], layout.sr_dtype)
            writer.write_sample(
                name,
                lr=s["lr"],
                hr=s["hr"],
                srs=srs,
                feats=s["feats"] if layout.has_features else [],
                source_hr=s["source_hr"],
                source_lr=s["source_lr"],
            )
        writer.write_index(reader.names, skipped=reader.skipped)
    reader.close()
    return CacheReader(out)
