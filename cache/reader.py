"""Lazy reader of the HDF5 feature cache (layout: :mod:`cache.schema`).

The index is read once; per-image files are opened on first access and kept open in a small LRU. The reader is
picklable without open handles, so each DataLoader worker opens its own files (h5py handles must not cross fork).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - registers the bitshuffle/zstd filters a cache may use
import numpy as np
import torch

from cache.schema import SCHEMA_VERSION, CacheLayout, CacheMeta, describe_mismatch
from cache.writer import CacheMismatchError, data_dir_of, sha256_of
from pipeline.core.errors import ToolkitError

__all__ = ["CacheReader", "CacheSample", "CacheError"]


class CacheError(ToolkitError, RuntimeError):
    """The cache is missing, incomplete or unreadable."""


@dataclass(frozen=True)
class CacheSample:
    """One (possibly cropped) sample as float32 tensors in [0,1] (features as stored; none with layout features
    "none"; 8-bit SR images come back as their levels /255)."""

    name: str
    lr: torch.Tensor  # (3,h,w)
    hr: torch.Tensor | None  # (3,s*h,s*w)
    srs: torch.Tensor  # (E,3,s*h,s*w)
    feats: tuple[torch.Tensor, ...]  # E × (C_e,h,w), or () when the cache stores no features


class CacheReader:
    def __init__(self, path: str | os.PathLike, *, expect: CacheMeta | None = None, max_open: int = 32) -> None:
        self.path = Path(path)
        self.data_dir = data_dir_of(self.path)
        if not self.path.is_file():
            partial = (
                " (its data folder exists: extraction is unfinished — rerun extract_features)"
                if self.data_dir.is_dir()
                else ""
            )
            raise CacheError(f"cache index not found: {self.path}{partial}")
        try:
            with h5py.File(self.path, "r") as f:
                attrs = dict(f.attrs)
                manifest = [json.loads(s) for s in f["manifest"].asstr()[()]]
        except (OSError, KeyError) as exc:
            raise CacheError(f"{self.path}: not a readable cache index ({exc})") from exc
        version = int(attrs.get("schema_version", -1))
        if version != SCHEMA_VERSION:
            raise CacheMismatchError(
                f"{self.path}: schema_version is {version}, this toolkit reads {SCHEMA_VERSION}; re-extract the cache"
            )
        self.meta = CacheMeta(
            scale=int(attrs["scale"]),
            experts=tuple(json.loads(attrs["experts"])),
            lr_method=str(attrs["lr_method"]),
            layout=CacheLayout.from_attrs(attrs),
        )
        if expect is not None:  # the experts must agree; the layout is checked against what reads it (the fusion)
            diffs = [d for d in describe_mismatch(self.meta, expect, layout=False) if not d.startswith("lr_method")]
            if diffs:
                raise CacheMismatchError(f"{self.path} does not match the expected experts: {'; '.join(diffs)}")
        self.compression = str(attrs["compression"]) if "compression" in attrs else None  # None: not recorded
        self.has_hr = bool(attrs["has_hr"])
        self.created = str(attrs.get("created", ""))
        self.skipped = json.loads(attrs.get("skipped", "[]"))
        self._manifest = manifest
        self._max_open = max_open
        self._handles: OrderedDict[int, h5py.File] = OrderedDict()

    # -------------------------------------------------------------------------------------------------- metadata
    def __len__(self) -> int:
        return len(self._manifest)

    @property
    def names(self) -> list[str]:
        return [m["name"] for m in self._manifest]

    @property
    def scale(self) -> int:
        return self.meta.scale

    @property
    def layout(self) -> CacheLayout:
        return self.meta.layout

    def lr_size(self, i: int) -> tuple[int, int]:
        m = self._manifest[i]
        return int(m["lr_h"]), int(m["lr_w"])

    def sample_file(self, i: int) -> Path:
        """The HDF5 file that holds sample ``i`` (in the cache's data folder)."""
        return self.data_dir / self._manifest[i]["file"]

    # ---------------------------------------------------------------------------------------------------- access
    def _file(self, i: int) -> h5py.File:
        f = self._handles.get(i)
        if f is not None:
            self._handles.move_to_end(i)
            return f
        p = self.sample_file(i)
        try:
            f = h5py.File(p, "r")
        except (OSError, FileNotFoundError) as exc:
            raise CacheError(f"cache sample file unreadable: {p} ({exc})") from exc
        self._handles[i] = f
        if len(self._handles) > self._max_open:
            _, old = self._handles.popitem(last=False)
            old.close()
        return f

    def read(self, i: int, *, box: tuple[int, int, int, int] | None = None) -> CacheSample:
        """Sample ``i``; ``box = (top, left, height, width)`` in LR pixels crops every member consistently."""
        stored = self.read_stored(i, box=box)
        lr = torch.from_numpy(stored["lr"].astype(np.float32) / 255.0)
        hr = torch.from_numpy(stored["hr"].astype(np.float32) / 255.0) if stored["hr"] is not None else None
        srs = torch.from_numpy(stored["srs"].astype(np.float32))
        if self.layout.sr_dtype == "uint8":
            srs = srs / 255.0
        feats = tuple(torch.from_numpy(feat.astype(np.float32)) for feat in stored["feats"])
        return CacheSample(name=self._manifest[i]["name"], lr=lr, hr=hr, srs=srs, feats=feats)

    def read_stored(self, i: int, *, box: tuple[int, int, int, int] | None = None) -> dict:
        """Sample ``i`` exactly as stored (numpy arrays, no conversion): ``lr``, ``hr`` (or None), ``srs``, ``feats``
        (a list, empty without features) and the ``source_hr`` / ``source_lr`` attributes — for re-packing, and
        (with ``box`` = (top, left, height, width) in LR pixels: that crop of every member) for the batch loader."""
        f = self._file(i)
        s = self.meta.scale
        h, w = self.lr_size(i)
        t, l, bh, bw = box if box is not None else (0, 0, h, w)
        if t < 0 or l < 0 or bh <= 0 or bw <= 0 or t + bh > h or l + bw > w:
            raise ValueError(f"box {box} outside the {h}x{w} LR image of {self._manifest[i]['name']}")
        lr_sl = (slice(None), slice(t, t + bh), slice(l, l + bw))
        hr_sl = (slice(None), slice(s * t, s * (t + bh)), slice(s * l, s * (l + bw)))
        feats = [f["feat"][n][lr_sl] for n in self.meta.expert_names] if self.layout.has_features else []
        return {
            "lr": f["lr"][lr_sl],
            "hr": f["hr"][hr_sl] if "hr" in f else None,
            "srs": f["sr"][(slice(None), *hr_sl)],
            "feats": feats,
            "source_hr": str(f.attrs.get("source_hr", "")),
            "source_lr": str(f.attrs.get("source_lr", "")),
        }

    def verify(self) -> list[str]:
        """Re-read every sample: presence, shapes, finiteness and stored sha256. Returns one line per problem."""
        problems = []
        s, n_exp = self.meta.scale, len(self.meta.experts)
        for i, m in enumerate(self._manifest):
            name = m["name"]
            try:
                f = self._file(i)
                sums = json.loads(f.attrs["sha256"])
                h, w = m["lr_h"], m["lr_w"]
                sr_dtype = np.dtype(self.layout.sr_dtype)
                expected = {"lr": ((3, h, w), np.uint8), "sr": ((n_exp, 3, s * h, s * w), sr_dtype)}
                if self.has_hr:
                    expected["hr"] = ((3, s * h, s * w), np.uint8)
                if self.layout.has_features:
                    for fp in self.meta.experts:
                        expected[f"feat/{fp['name']}"] = ((int(fp["feature_channels"]), h, w), np.float16)
                elif "feat" in f and len(f["feat"]):
                    problems.append(f"{name}: holds features, but the index says features none")
                for key, (shape, dtype) in expected.items():
                    if key not in f:
                        problems.append(f"{name}: missing dataset {key}")
                        continue
                    arr = f[key][()]
                    if arr.shape != shape or arr.dtype != dtype:
                        problems.append(f"{name}: {key} is {arr.dtype}{arr.shape}, expected {np.dtype(dtype)}{shape}")
                    elif arr.dtype == np.float16 and not np.isfinite(arr).all():
                        problems.append(f"{name}: {key} contains NaN/Inf")
                    elif sums.get(key) != sha256_of(arr):
                        problems.append(f"{name}: {key} checksum mismatch (data corrupted)")
            except (CacheError, OSError, KeyError, ValueError) as exc:
                problems.append(f"{name}: unreadable ({exc})")
        return problems

    # ----------------------------------------------------------------------------------------- pickling / closing
    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
