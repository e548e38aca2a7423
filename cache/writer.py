"""Crash-safe, resumable writer of the HDF5 feature cache (layout: :mod:`cache.schema`).

* Each image goes to its own file, written under a temporary name, flushed and fsynced, then renamed: an image is
  complete exactly when its final-named file exists. A kill -9 at any moment leaves at most a temp file, which the
  next run deletes and redoes. The HDF5 file is built in memory and written with plain writes, so a full disk is one
  :class:`pipeline.core.errors.DiskFullError` naming the file (its temp file removed; rerun once there is space).
* The index is written last, to a temp file that is renamed over the final name: it is either absent or complete.
* A lock (:class:`pipeline.core.locks.FileLock` on ``<cache>.lock.rank<N>``, one per rank) stops two writers on
  the same cache; :func:`lock_cache` takes it before anything slow happens (the experts load after it), and the lock
  file is deleted when the writer closes.
* On resume the stored meta (scale, expert fingerprints, LR method, layout and compression) must equal the new
  run's, or the writer refuses and says which field differs, naming both values; ``overwrite=True`` starts from
  scratch instead.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import torch

from cache.schema import (
    COMPRESSIONS,
    DATA_DIR_SUFFIX,
    FEAT_CHUNK,
    LOCK_SUFFIX,
    PART_SUFFIX,
    SCHEMA_VERSION,
    SR_CHUNK,
    SR_DTYPES,
    TOOL_VERSION,
    CacheLayout,
    CacheMeta,
    describe_mismatch,
)
from pipeline.core.atomic import replace_with_bytes
from pipeline.core.errors import OutputPathError, ToolkitError
from pipeline.core.locks import FileLock, LockedError
from pipeline.core.outputs import check_output_file

__all__ = [
    "CacheWriter",
    "CacheLockedError",
    "CacheMismatchError",
    "cache_bytes",
    "check_cache_out",
    "data_dir_of",
    "compression_filter",
    "encode_srs",
    "is_cache_index",
    "lock_cache",
    "part_path",
    "sha256_of",
    "stored_compression",
    "wipe_cache",
]

_META_FILE = "meta.json"


class CacheLockedError(ToolkitError, RuntimeError):
    """Another process is writing this cache."""


class CacheMismatchError(ToolkitError, ValueError):
    """A cache was made with other experts / scale / LR method than expected."""


def data_dir_of(index_path: Path) -> Path:
    return index_path.with_name(index_path.name + DATA_DIR_SUFFIX)


def cache_bytes(index_path: Path) -> int:
    """Bytes on disk of a cache: its index plus every file in its data folder."""
    return index_path.stat().st_size + sum(f.stat().st_size for f in data_dir_of(index_path).iterdir())


def is_cache_index(path: Path) -> bool:
    """``path`` is an HDF5 file carrying this toolkit's ``schema_version`` attribute (any version)."""
    try:
        with h5py.File(path, "r") as f:
            return "schema_version" in f.attrs and "manifest" in f
    except (OSError, ValueError):
        return False


def check_cache_out(path: str | os.PathLike) -> Path:
    """The cache index ``path`` (and its data folder) may be written — checked before any work, ``--overwrite`` or
    not: a file there must be a cache index and a data folder there must be an (interrupted) cache's own
    (``meta.json``) or empty. Anything else is refused with :class:`pipeline.core.errors.OutputPathError`: extraction
    never replaces a file it did not make."""
    p = Path(path)
    check_output_file(p, ours=is_cache_index, create_parents=True, label="cache index")
    data = data_dir_of(p)
    if data.exists() and not data.is_dir():
        raise OutputPathError(f"cache data folder {data} exists and is not a folder: refusing to replace it")
    if data.is_dir() and not (data / _META_FILE).is_file() and any(data.iterdir()):
        raise OutputPathError(
            f"cache data folder {data} holds files that are not a cache's (no {_META_FILE}): refusing to write into it"
        )
    return p


def lock_cache(path: str | os.PathLike, *, rank: int = 0) -> FileLock:
    """Take the writer's lock of the cache index ``path`` for ``rank`` (``<index>.lock.rank<N>``) → the held lock;
    :class:`CacheLockedError` at once when another process holds it."""
    p = Path(path)
    lock = FileLock(p.with_name(p.name + f"{LOCK_SUFFIX}.rank{rank}"))
    try:
        return lock.acquire()
    except LockedError as exc:
        raise CacheLockedError(
            f"{p} is being written by another process ({exc.holder}; lock {lock.path}); wait for it to finish or "
            "stop it"
        ) from None


def wipe_cache(path: Path) -> None:
    """Delete the cache index ``path`` and its data folder (``--overwrite``; the caller holds the lock)."""
    if path.exists():
        path.unlink()
    data = data_dir_of(path)
    if data.exists():
        shutil.rmtree(data)


def part_path(data_dir: Path, name: str) -> Path:
    return data_dir / f"{name}{PART_SUFFIX}"


def sha256_of(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def encode_srs(srs: torch.Tensor | np.ndarray, sr_dtype: str) -> np.ndarray:
    """Experts' SR images ``(E,3,sH,sW)`` in [0,1] → the array a cache of ``sr_dtype`` stores: float16, or the
    uint8 levels of that float16 (clamped to [0,1] and rounded, like the PNG a submission writes; the reader divides by
    255). Going through float16 makes a uint8 extraction bit-identical to re-packing a float16 cache."""
    arr = srs.detach().float().cpu().numpy() if isinstance(srs, torch.Tensor) else np.asarray(srs)
    arr = arr.astype(np.float16)
    if sr_dtype == "float16":
        return arr
    if sr_dtype == "uint8":
        return np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    raise ValueError(f"sr_dtype must be one of {SR_DTYPES}, got {sr_dtype!r}")


def compression_filter(compression: str) -> dict:
    """``create_dataset`` keyword arguments of a :data:`cache.schema.COMPRESSIONS` name."""
    if compression == "none":
        return {}
    if compression == "lzf":
        return {"compression": "lzf"}
    if compression in ("bitshuffle-lz4", "bitshuffle-zstd"):
        return dict(hdf5plugin.Bitshuffle(cname=compression.split("-", 1)[1]))
    raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")


def stored_compression(dataset: h5py.Dataset) -> str:
    """The :data:`cache.schema.COMPRESSIONS` name of a written dataset's filter (HDF5 filters are self-describing:
    bitshuffle, filter 32008, stores its codec as the 5th option — 2 LZ4, 3 zstd)."""
    filters = dataset._filters
    if "lzf" in filters:
        return "lzf"
    opts = filters.get(str(hdf5plugin.BSHUF_ID))
    if opts is not None:
        return "bitshuffle-zstd" if len(opts) > 4 and opts[4] == 3 else "bitshuffle-lz4"
    return "none"


def _in_memory(name: Path) -> h5py.File:
    """A new HDF5 file held in memory (the core driver, never written by HDF5 itself): :func:`_file_image` gives its
    bytes — the very bytes HDF5 would have written to ``name`` — which the writer puts on disk with plain writes. So
    a full disk is an ordinary ``OSError`` of our own write, never a failed HDF5 flush (after which HDF5 cannot close
    the file, and the interpreter segfaults at exit)."""
    return h5py.File(name, "w", driver="core", backing_store=False)


def _file_image(f: h5py.File) -> bytes:
    f.flush()
    return f.id.get_file_image()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunks(shape: tuple[int, ...], spatial: int) -> tuple[int, ...]:
    return tuple(shape[:-2]) + (min(spatial, shape[-2]), min(spatial, shape[-1]))


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or "\x00" in name:
        raise ValueError(f"invalid sample name {name!r} (no '/', no leading '.')")


class CacheWriter:
    """Writes samples of one cache; one instance per process (rank)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        meta: CacheMeta,
        compression: str = "none",
        overwrite: bool = False,
        rank: int = 0,
        lock: FileLock | None = None,
    ) -> None:
        """``lock``: this rank's lock, already taken with :func:`lock_cache` (the writer releases it on
        :meth:`close`); by default the writer takes it itself."""
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        self.path = Path(path)
        self.data_dir = data_dir_of(self.path)
        self.meta = meta
        self.compression = compression
        self.filters = compression_filter(compression)
        self.rank = rank
        self._lock = lock if lock is not None else lock_cache(self.path, rank=rank)
        try:
            if overwrite and rank == 0:
                wipe_cache(self.path)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._check_or_write_meta()
            self._remove_stale_temps()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release (and delete) this rank's lock; the writer writes nothing more."""
        self._lock.release()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ meta/resume
    def _meta_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "scale": self.meta.scale,
            "experts": json.loads(self.meta.experts_json()),
            "lr_method": self.meta.lr_method,
            "features": self.meta.layout.features,
            "sr_dtype": self.meta.layout.sr_dtype,
            "compression": self.compression,
        }

    def _check_or_write_meta(self) -> None:
        meta_path = self.data_dir / _META_FILE
        want = self._meta_dict()
        if meta_path.exists():
            have = json.loads(meta_path.read_text())
            if have.get("schema_version") != SCHEMA_VERSION:
                raise CacheMismatchError(
                    f"{self.path}: existing partial cache has schema {have.get('schema_version')}, this tool writes "
                    f"{SCHEMA_VERSION}; rerun with --overwrite"
                )
            found = CacheMeta(
                scale=have["scale"],
                experts=tuple(have["experts"]),
                lr_method=have["lr_method"],
                layout=CacheLayout.from_attrs(have),
            )
            diffs = describe_mismatch(found, self.meta)
            stored = have.get("compression") or self._stored_compression()  # absent: written before it was recorded
            if stored is not None and stored != self.compression:
                diffs.append(
                    f"compression: cache has {stored}, this run asks for {self.compression} "
                    f"(rerun with --compression {stored})"
                )
            if diffs:
                raise CacheMismatchError(
                    f"{self.path}: cannot resume, the existing cache was made differently: {'; '.join(diffs)}. "
                    "Rerun with --overwrite to start over."
                )
        elif self.rank == 0:
            text = json.dumps(want, indent=1, sort_keys=True)
            replace_with_bytes(meta_path, text.encode(), tmp=meta_path.with_name(f".{_META_FILE}.tmp"), what="it")

    def _stored_compression(self) -> str | None:
        """The compression of the samples already written (a partial cache made before meta.json recorded it), read
        from the first finished sample's ``sr`` dataset; None when there is none."""
        for part in sorted(self.data_dir.glob(f"*{PART_SUFFIX}")):
            try:
                with h5py.File(part, "r") as f:
                    return stored_compression(f["sr"])
            except (OSError, KeyError):
                continue
        return None

    def _remove_stale_temps(self) -> None:
        for tmp in self.data_dir.glob(f".*{PART_SUFFIX}.tmp-r{self.rank}"):
            tmp.unlink()

    def is_done(self, name: str) -> bool:
        """A sample is done when its final-named file exists (it is renamed only after a full, flushed write)."""
        return part_path(self.data_dir, name).is_file()

    # ---------------------------------------------------------------------------------------------------- writing
    def write_sample(
        self,
        name: str,
        *,
        lr: np.ndarray,  # uint8 (3,h,w)
        hr: np.ndarray | None,  # uint8 (3,s*h,s*w)
        srs: np.ndarray,  # float16 or uint8 (meta.layout.sr_dtype) (E,3,s*h,s*w)
        feats: Sequence[np.ndarray],  # E arrays float16 (C_e,h,w); empty with layout features "none"
        source_hr: str = "",
        source_lr: str = "",
    ) -> Path:
        _check_name(name)
        s, n_exp = self.meta.scale, len(self.meta.experts)
        if lr.dtype != np.uint8 or lr.ndim != 3 or lr.shape[0] != 3:
            raise ValueError(f"{name}: lr must be uint8 (3,h,w), got {lr.dtype} {lr.shape}")
        h, w = lr.shape[1:]
        layout = self.meta.layout
        if srs.dtype != np.dtype(layout.sr_dtype) or srs.shape != (n_exp, 3, s * h, s * w):
            raise ValueError(
                f"{name}: srs must be {layout.sr_dtype} {(n_exp, 3, s * h, s * w)}, got {srs.dtype} {srs.shape}"
            )
        if hr is not None and (hr.dtype != np.uint8 or hr.shape != (3, s * h, s * w)):
            raise ValueError(f"{name}: hr must be uint8 {(3, s * h, s * w)}, got {hr.dtype} {hr.shape}")
        if not layout.has_features and len(feats):
            raise ValueError(f"{name}: this cache stores no features (features none), got {len(feats)} feature maps")
        if layout.has_features and len(feats) != n_exp:
            raise ValueError(f"{name}: expected {n_exp} feature maps, got {len(feats)}")
        for fp, f in zip(self.meta.experts, feats):
            want = (int(fp["feature_channels"]), h, w)
            if f.dtype != np.float16 or f.shape != want:
                raise ValueError(f"{name}: features of {fp['name']} must be float16 {want}, got {f.dtype} {f.shape}")
        for label, arr in [("sr", srs), *((f"feat/{fp['name']}", f) for fp, f in zip(self.meta.experts, feats))]:
            if not np.isfinite(arr).all():
                raise ValueError(f"{name}: {label} contains NaN/Inf (fp16 overflow?)")

        final = part_path(self.data_dir, name)
        tmp = final.with_name(f".{final.name}.tmp-r{self.rank}")
        checksums = {}
        with _in_memory(tmp) as f:
            f.attrs.update({"name": name, "source_hr": source_hr, "source_lr": source_lr, "lr_h": h, "lr_w": w})
            self._put(f, "lr", lr, FEAT_CHUNK, checksums)
            if hr is not None:
                self._put(f, "hr", hr, SR_CHUNK, checksums)
            self._put(f, "sr", srs, SR_CHUNK, checksums)
            if layout.has_features:
                grp = f.create_group("feat")
                for fp, arr in zip(self.meta.experts, feats):
                    self._put(grp, str(fp["name"]), arr, FEAT_CHUNK, checksums, prefix="feat/")
            f.attrs["sha256"] = json.dumps(checksums, sort_keys=True)
            image = _file_image(f)
        replace_with_bytes(final, image, tmp=tmp, what=f"the sample {name!r}")
        _fsync_dir(self.data_dir)
        return final

    def _put(self, group: h5py.Group, key: str, arr: np.ndarray, chunk: int, sums: dict, prefix: str = "") -> None:
        group.create_dataset(key, data=arr, chunks=_chunks(arr.shape, chunk), **self.filters)
        sums[prefix + key] = sha256_of(arr)

    # ------------------------------------------------------------------------------------------------------ index
    def write_index(self, names: Sequence[str], *, skipped: Sequence[dict] = ()) -> Path:
        """Write the index over the given complete samples (rank 0, after every rank has finished)."""
        manifest = []
        has_hr = True
        for name in names:
            p = part_path(self.data_dir, name)
            if not p.is_file():
                raise FileNotFoundError(f"cannot index {name!r}: {p} is missing (extraction incomplete)")
            with h5py.File(p, "r") as f:
                manifest.append(
                    {"name": name, "file": p.name, "lr_h": int(f.attrs["lr_h"]), "lr_w": int(f.attrs["lr_w"])}
                )
                has_hr &= "hr" in f
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with _in_memory(tmp) as f:
            f.attrs.update(
                {
                    "schema_version": SCHEMA_VERSION,
                    "scale": self.meta.scale,
                    "experts": self.meta.experts_json(),
                    "lr_method": self.meta.lr_method,
                    "features": self.meta.layout.features,
                    "sr_dtype": self.meta.layout.sr_dtype,
                    "compression": self.compression,
                    "has_hr": bool(has_hr and bool(names)),
                    "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                    "tool_version": TOOL_VERSION,
                    "num_images": len(names),
                    "skipped": json.dumps(list(skipped)),
                }
            )
            f.create_dataset("manifest", data=[json.dumps(m) for m in manifest], dtype=h5py.string_dtype())
            grp = f.create_group("images")
            rel = self.data_dir.name
            for m in manifest:
                grp[m["name"]] = h5py.ExternalLink(f"{rel}/{m['file']}", "/")
            image = _file_image(f)
        replace_with_bytes(self.path, image, tmp=tmp, what="the index")
        _fsync_dir(self.path.parent)
        return self.path
