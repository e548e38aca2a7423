"""The one place where the HDF5 cache layout is defined (names, attributes, chunking, SCHEMA_VERSION).

Layout (schema version 1) — a cache called ``train.h5`` is the index file plus its data folder ``train.h5.d/``::

    train.h5                          index, written last and atomically (temp file + rename)
      attrs  schema_version  int      SCHEMA_VERSION
             scale           int      SR scale (4)
             experts         str      JSON list of expert fingerprints, in expert order (see CacheMeta)
             lr_method       str      "matlab_bicubic" (LR made from HR by pipeline.core.resize.make_lr) or "given"
             features        str      "full" (every expert's hooked features) or "none" (SR images only); absent: full
             sr_dtype        str      "float16" or "uint8" (SR rounded to 8-bit levels, like the submission); absent:
                                      float16
             compression     str      COMPRESSIONS name every sample was written with (absent: a cache made
                                      before it was recorded; a resume then reads it from the samples' filters)
             has_hr          bool     whether every sample holds its HR image
             created         str      ISO-8601 UTC time of the index
             tool_version    str      version of this toolkit
             num_images      int
             skipped         str      JSON list of {"name", "reason"} for inputs that were reported and skipped
      manifest               vlen str, one JSON object per image: {"name", "file", "lr_h", "lr_w"}
      images/<name>          HDF5 external link to train.h5.d/<name>.h5:/  (so any HDF5 tool sees one tree)

    train.h5.d/meta.json              what the cache is made from and how it is stored (scale, experts, LR method,
                                      features, sr_dtype, compression): a resume or re-pack into this cache must
                                      ask for exactly that, or it is refused naming both values
    train.h5.d/<name>.h5              one file per image, written to a temp name, fsynced, then renamed
      attrs  name, source_hr, source_lr, lr_h, lr_w, sha256 (JSON {dataset: hex digest of its raw bytes})
      lr     uint8   (3, h, w)                   the LR image
      hr     uint8   (3, s*h, s*w)               the HR image (cropped to s*h × s*w), absent with --lr only
      sr     float16 (E, 3, s*h, s*w)            every expert's SR output (uint8 with sr_dtype "uint8": 2x smaller)
      feat/<expert>  float16 (C_e, h, w)         hooked features of each expert, cropped to the LR size (absent with
                                                 features "none")

Layout options (``CacheLayout``: features, sr_dtype) trade bytes for what the fusion can read; a cache holding less
than a fusion was trained on is refused by :func:`describe_layout_shortfall`'s callers, naming both.

Arrays are CHW like the rest of the toolkit. Whole images are stored — never one crop per image — and chunked so
that a random training crop touches few chunks (``SR_CHUNK`` × ``SR_CHUNK`` spatial chunks in HR space, ``FEAT_CHUNK``
in LR space). Compression is optional: none (default, fastest to read), lzf, or bitshuffle + LZ4 / zstd (the
``hdf5plugin`` filters made for numeric arrays; every reader and writer imports hdf5plugin to register them).

Per-image files are what make extraction crash-safe without relying on HDF5's own crash behaviour: a sample is
complete exactly when its file exists under its final name (the rename happens after the data are flushed), and the
index only ever appears complete. Under ``torchrun`` every rank writes its own images into the same data folder
and rank 0 writes the index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1
TOOL_VERSION = "0.1.0"

DATA_DIR_SUFFIX = ".d"
PART_SUFFIX = ".h5"
LOCK_SUFFIX = ".lock"

SR_CHUNK = 64  # HR-space spatial chunk of `sr` and `hr`
FEAT_CHUNK = 16  # LR-space spatial chunk of `lr` and `feat/*`
COMPRESSIONS = ("none", "lzf", "bitshuffle-lz4", "bitshuffle-zstd")  # per-dataset HDF5 filters (self-describing)

LR_METHODS = ("matlab_bicubic", "given")
FEATURE_MODES = ("full", "none")
SR_DTYPES = ("float16", "uint8")

# fingerprint fields that must agree between a cache and what a fusion config expects
FINGERPRINT_FIELDS = (
    "name",
    "architecture",
    "sha256",
    "hook_layers",
    "feature_channels",
    "scale",
    "input",
    "self_ensemble",
)
SELF_ENSEMBLE_KEY = (
    "self_ensemble"  # in a fingerprint: 8 when the cached SR is the expert's ×8 self-ensemble (absent: 1)
)


@dataclass(frozen=True)
class CacheLayout:
    """What a cache stores per image beyond LR/HR: hooked features or not, and the SR images' precision."""

    features: str = "full"  # "full" | "none"
    sr_dtype: str = "float16"  # "float16" | "uint8"

    def __post_init__(self) -> None:
        if self.features not in FEATURE_MODES:
            raise ValueError(f"features must be one of {FEATURE_MODES}, got {self.features!r}")
        if self.sr_dtype not in SR_DTYPES:
            raise ValueError(f"sr_dtype must be one of {SR_DTYPES}, got {self.sr_dtype!r}")

    @property
    def has_features(self) -> bool:
        return self.features == "full"

    def describe(self) -> str:
        return f"features {self.features}, sr {self.sr_dtype}"

    @classmethod
    def from_attrs(cls, attrs: Any) -> CacheLayout:
        """From an index's attributes or a meta.json dict (caches written before the options existed: full/float16)."""
        return cls(features=str(attrs.get("features", "full")), sr_dtype=str(attrs.get("sr_dtype", "float16")))


# what extract_features writes unless told otherwise: SR images only, at 8-bit levels — 12.8 bytes per HR pixel for
# three experts of any width (full/float16: 40 for CRAFT/DITN/SPAN, 77 for HAT-L/DAT/NAFNet), for a fusion PSNR
# within 0.002 dB of the full cache's on BSD100 (cache/README.md). It feeds the default fusion (configs/fusion.yaml).
EXTRACT_LAYOUT = CacheLayout(features="none", sr_dtype="uint8")


@dataclass(frozen=True)
class CacheMeta:
    """What a cache was made from; stored in the index and checked on resume and on read."""

    scale: int
    experts: tuple[dict[str, Any], ...]  # fingerprints, in expert order
    lr_method: str
    layout: CacheLayout = CacheLayout()

    def __post_init__(self) -> None:
        if self.lr_method not in LR_METHODS:
            raise ValueError(f"lr_method must be one of {LR_METHODS}, got {self.lr_method!r}")
        if not self.experts:
            raise ValueError("a cache needs at least one expert")
        for fp in self.experts:
            missing = [k for k in ("name", "feature_channels") if k not in fp]
            if missing:
                raise ValueError(f"expert fingerprint {fp!r} lacks {missing}")

    @property
    def expert_names(self) -> tuple[str, ...]:
        return tuple(str(fp["name"]) for fp in self.experts)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        return tuple(int(fp["feature_channels"]) for fp in self.experts)

    def experts_json(self) -> str:
        return json.dumps(list(self.experts), sort_keys=True)


def describe_mismatch(found: CacheMeta, expected: CacheMeta, *, layout: bool = True) -> list[str]:
    """Human-readable differences between two metas (empty when they agree); ``layout=False`` compares what the cache
    was made from (experts, scale, LR method) but not how it stores it."""
    diffs = []
    if layout and found.layout != expected.layout:
        diffs.append(f"layout: cache has {found.layout.describe()}, expected {expected.layout.describe()}")
    if found.scale != expected.scale:
        diffs.append(f"scale: cache has {found.scale}, expected {expected.scale}")
    if found.lr_method != expected.lr_method:
        diffs.append(f"lr_method: cache has {found.lr_method!r}, expected {expected.lr_method!r}")
    if len(found.experts) != len(expected.experts):
        diffs.append(f"experts: cache has {list(found.expert_names)}, expected {list(expected.expert_names)}")
        return diffs
    for i, (a, b) in enumerate(zip(found.experts, expected.experts)):
        for key in FINGERPRINT_FIELDS:
            if key in a and key in b and _norm(a[key]) != _norm(b[key]):
                diffs.append(f"experts[{i}].{key}: cache has {a[key]!r}, expected {b[key]!r}")
            elif (key in a) != (key in b):
                diffs.append(f"experts[{i}].{key}: present in only one of cache/expected")
    return diffs


def describe_layout_shortfall(cache: CacheLayout, *, reads_features: bool, sr_dtype: str) -> list[str]:
    """What a fusion that reads hooked features (or not) and was trained on ``sr_dtype`` SR images would miss in a
    cache of layout ``cache`` (empty: it can read it). A cache holding *more* is fine: a features-free fusion ignores
    stored features, and a fusion trained on uint8 SR rounds its input to 8-bit levels itself."""
    problems = []
    if reads_features and not cache.has_features:
        problems.append(
            "the cache stores no features (features none) but the fusion reads them (model.inputs.features=true)"
        )
    if cache.sr_dtype == "uint8" and sr_dtype != "uint8":
        problems.append(
            f"the cache stores 8-bit SR images (sr uint8) but the fusion was trained on {sr_dtype} ones "
            "(model.inputs.sr_dtype)"
        )
    return problems


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v))  # tuples vs lists, int vs float-of-int are compared as JSON
