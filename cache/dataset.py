"""Training/validation datasets over the HDF5 feature cache.

``CachedSRDataset`` yields aligned random crops: an LR patch of ``patch`` pixels at (top, left), the HR and every
expert's SR at ``scale ×`` those coordinates, and every expert's features at the LR coordinates — then one random
flip/rot90 applied identically to all members. The cache file is opened lazily in each DataLoader worker.

Randomness is a pure function of ``(seed, index)``: item ``k`` takes image ``perm_e[k mod n]`` where ``perm_e`` is
the seeded permutation of epoch ``e = k div n``, and its crop and augmentation from a generator seeded with
``(seed, k)``. Indices may run past ``len()`` (a training run asks for item ``step × batch + b``), so the data stream
of a run — and therefore a resumed run — is identical whatever the number of workers.

The training loader (``CropBatches`` + :func:`finish_batch`) cuts the same crops batch by batch: a worker draws
each item's image, box and augmentation exactly as ``CachedSRDataset[k]`` does, copies the un-augmented crops as
stored (8-bit / float16, channels last) out of images it holds decoded in RAM (``ImageStore``: each image read once
per worker while the byte budget lasts; the rest cropped from the file) into one batch, and the consumer converts
to float and applies each item's flip/rot90 on its device. Converting and flipping are exact, so a batch equals
the stacked ``CachedSRDataset`` items bit for bit — 4× fewer bytes cross the worker → GPU path, and the per-crop
HDF5 reads (~2.7 ms a crop) become memory copies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cache.reader import CacheReader
from cache.schema import CacheMeta
from pipeline.core.augment import AUGMENTATIONS, augment

__all__ = [
    "SUBSET_SEED",
    "CachedSRDataset",
    "CachedFullImageDataset",
    "CropBatches",
    "CropPlan",
    "ImageStore",
    "crop_draws",
    "finish_batch",
    "image_subset",
    "mix_seed",
]

SUBSET_SEED = 20261204  # fixed: the subsets of every size are nested (the first N of one permutation)


def image_subset(total: int, count: int | None) -> list[int]:
    """The indices (sorted) of ``count`` of a cache's ``total`` images: the first ``count`` of one fixed permutation,
    so smaller subsets are contained in larger ones (learning curves); ``None``: every image."""
    if count is None:
        return list(range(total))
    if not 1 <= count <= total:
        raise ValueError(f"cannot take {count} of {total} images")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(SUBSET_SEED))
    return sorted(int(i) for i in order[:count])


class CachedSRDataset(Dataset):
    def __init__(
        self,
        path: str | os.PathLike,
        *,
        patch: int,
        repeat: int = 1,
        augment: bool = True,
        expect: CacheMeta | None = None,
        seed: int = 0,
        skip_small: bool = False,
        images: int | None = None,
    ) -> None:
        """Random aligned ``patch``×``patch`` LR crops (and the matching SR/HR/feature crops) of a cache.

        An LR image smaller than the patch is an error, or — with ``skip_small`` — left out of sampling (named in
        :attr:`skipped`; T91 has LR images from 19 px). ``images``: sample only that many of the cache's images
        (:func:`image_subset`, nested across sizes)."""
        self.path = Path(path)
        self.reader = CacheReader(self.path, expect=expect)
        if not self.reader.has_hr:
            raise ValueError(f"{self.path}: training needs HR images, but this cache was extracted with --lr only")
        subset = image_subset(len(self.reader), images)
        small = [self.reader.names[i] for i in subset if min(self.reader.lr_size(i)) < patch]
        if small and not skip_small:
            raise ValueError(
                f"{self.path}: {len(small)} LR image(s) are smaller than patch={patch}: {small[:5]} "
                "(use a smaller patch, or skip_small / data.skip_small=true to leave them out)"
            )
        self.skipped = tuple(small)
        self.images = [i for i in subset if self.reader.names[i] not in set(small)]  # sampled image indices
        if not self.images:
            raise ValueError(f"{self.path}: every LR image is smaller than patch={patch}")
        if repeat < 1:
            raise ValueError("repeat must be >= 1")
        self.patch = patch
        self.repeat = repeat
        self.augment = augment
        self.seed = seed
        self._perms: dict[int, list[int]] = {}  # epoch → its image permutation (the last two epochs)

    @property
    def meta(self) -> CacheMeta:
        return self.reader.meta

    def __len__(self) -> int:
        return len(self.images) * self.repeat

    def image_of(self, idx: int) -> int:
        n = len(self.images)
        epoch, pos = divmod(idx, n)
        perms = self._perms
        perm = perms.get(epoch)
        if perm is None:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch, 1))).tolist()
            if len(perms) >= 2:
                perms.pop(min(perms))
            perms[epoch] = perm
        return self.images[perm[pos]]

    def plan(self, idx: int) -> CropPlan:
        """Where item ``idx`` crops and how it is augmented — a pure function of ``(seed, idx)``."""
        if idx < 0:
            raise IndexError(idx)
        i = self.image_of(idx)
        h, w = self.reader.lr_size(i)
        p = self.patch
        r_top, r_left, r_aug = crop_draws(mix_seed(self.seed, idx, 2))
        k = r_aug % AUGMENTATIONS if self.augment else 0
        return CropPlan(image=i, top=r_top % (h - p + 1), left=r_left % (w - p + 1), aug=k)

    def __getitem__(self, idx: int) -> dict:
        c = self.plan(idx)
        i, top, left, k, p = c.image, c.top, c.left, c.aug, self.patch
        sample = self.reader.read(i, box=(top, left, p, p))
        return {
            "lr": augment(sample.lr, k),  # (3,p,p)
            "hr": augment(sample.hr, k),  # (3,s*p,s*p)
            "srs": augment(sample.srs, k),  # (E,3,s*p,s*p)
            "feats": [augment(f, k) for f in sample.feats],  # E × (C_e,p,p)
            "index": i,
            "box": torch.tensor([top, left, p, p]),
            "aug": k,
        }


@dataclass(frozen=True)
class CropPlan:
    """Item ``k`` of a :class:`CachedSRDataset`: image index, LR box corner, dihedral transform (0 = none)."""

    image: int
    top: int
    left: int
    aug: int


_DRAW_BITS = np.random.MT19937()
_DRAW_STATE = np.random.RandomState(_DRAW_BITS)  # seeds _DRAW_BITS the legacy way (frozen by NumPy's stream policy)


def crop_draws(seed: int) -> tuple[int, int, int]:
    """The first three raw 32-bit outputs of MT19937 seeded with ``seed``'s low 32 bits — exactly what
    ``torch.Generator().manual_seed(seed)`` draws, so ``draw % n`` equals ``torch.randint(0, n, (), generator=g)``
    (n < 2³²) and every crop of earlier runs is unchanged (tests/test_loader.py holds the two equal); 4 µs instead of
    torch's 18 µs a crop, which the batch loader spends per crop."""
    _DRAW_STATE.seed(seed & 0xFFFFFFFF)
    a, b, c = _DRAW_BITS.random_raw(3).tolist()
    return a, b, c


def mix_seed(seed: int, idx: int, stream: int) -> int:
    """A 63-bit generator seed from (seed, index, stream): distinct streams never share seeds."""
    x = (seed * 0x9E3779B97F4A7C15 + idx * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) & ((1 << 64) - 1)
    x ^= x >> 31
    x = (x * 0xD6E8FEEBA1B1A5D5) & ((1 << 64) - 1)
    return x >> 1


class ImageStore:
    """The stored arrays of a cache's images, decoded once and kept in RAM (channels last, stored dtype) while the
    byte budget lasts — one store per process (each DataLoader worker builds its own).

    An image is read whole on its first crop if it fits in what is left of the budget, and then kept (never evicted:
    under uniformly random crops a bounded cache has hit rate budget ÷ cache size whatever it evicts, and a miss that
    re-reads a whole image costs ~10× a crop read, so an LRU would only add whole-image reads); an image that does not
    fit is cropped from its file each time. Either way the bytes of a crop are the file's."""

    def __init__(self, reader: CacheReader, *, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.reader = reader
        self.budget = budget_bytes
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._images: dict[int, dict[str, np.ndarray]] = {}
        self._refused: set[int] = set()

    def image_bytes(self, i: int) -> int:
        """Bytes image ``i`` takes in RAM (what its file stores, uncompressed)."""
        h, w = self.reader.lr_size(i)
        meta, s = self.reader.meta, self.reader.scale
        sr_item = np.dtype(self.reader.layout.sr_dtype).itemsize
        n = 3 * h * w + len(meta.experts) * 3 * s * s * h * w * sr_item
        if self.reader.has_hr:
            n += 3 * s * s * h * w
        if self.reader.layout.has_features:
            n += 2 * sum(meta.feature_channels) * h * w
        return n

    def _resident(self, i: int) -> dict[str, np.ndarray] | None:
        arrays = self._images.get(i)
        if arrays is not None or i in self._refused:
            return arrays
        size = self.image_bytes(i)
        if self.used + size > self.budget:
            self._refused.add(i)
            return None
        st = self.reader.read_stored(i)
        srs = st["srs"]  # (E,3,sH,sW)
        arrays = {
            "lr": np.ascontiguousarray(st["lr"].transpose(1, 2, 0)),  # (h,w,3)
            "srs": np.ascontiguousarray(srs.transpose(2, 3, 0, 1)).reshape(srs.shape[2], srs.shape[3], -1),
        }  # srs: (sH,sW,E*3), channel e*3+c
        if st["hr"] is not None:
            arrays["hr"] = np.ascontiguousarray(st["hr"].transpose(1, 2, 0))  # (sH,sW,3)
        if st["feats"]:
            arrays["feats"] = np.ascontiguousarray(np.concatenate(st["feats"], axis=0).transpose(1, 2, 0))  # (h,w,ΣC)
        self._images[i] = arrays
        self.used += size
        return arrays

    def crop_into(self, out: dict[str, np.ndarray], b: int, *, image: int, top: int, left: int, patch: int) -> None:
        """Copy the ``patch``² LR crop at (top, left) of ``image`` (and its HR/SR/feature crops) into row ``b`` of the
        channels-last batch arrays ``out`` (keys as :meth:`CropBatches.__getitem__` returns)."""
        s, p = self.reader.scale, patch
        arrays = self._resident(image)
        if arrays is not None:
            self.hits += 1
            lr_sl = (slice(top, top + p), slice(left, left + p))
            hr_sl = (slice(s * top, s * (top + p)), slice(s * left, s * (left + p)))
            out["lr"][b] = arrays["lr"][lr_sl]
            out["srs"][b] = arrays["srs"][hr_sl]
            if "hr" in out:
                out["hr"][b] = arrays["hr"][hr_sl]
            if "feats" in out:
                out["feats"][b] = arrays["feats"][lr_sl]
            return
        self.misses += 1
        st = self.reader.read_stored(image, box=(top, left, p, p))
        out["lr"][b] = st["lr"].transpose(1, 2, 0)
        sr = st["srs"]  # (E,3,s*p,s*p)
        out["srs"][b].reshape(s * p, s * p, sr.shape[0], 3)[...] = sr.transpose(2, 3, 0, 1)
        if "hr" in out:
            out["hr"][b] = st["hr"].transpose(1, 2, 0)
        if "feats" in out:
            out["feats"][b] = np.concatenate(st["feats"], axis=0).transpose(1, 2, 0)


class CropBatches(Dataset):
    """Whole training batches of a :class:`CachedSRDataset`: item ``[k0, k1, …]`` (use it with ``batch_size=None``
    and a sampler that yields lists of item indices, e.g. :class:`pipeline.training.steps.StepBatchSampler`) is the
    batch of those items, un-augmented and as stored, channels last:

    ``lr`` (B,p,p,3) uint8, ``hr`` (B,sp,sp,3) uint8, ``srs`` (B,sp,sp,E·3) uint8 or float16 (channel e·3+c),
    ``feats`` (B,p,p,ΣC_e) float16 (only when the cache stores features), ``index``/``box``/``aug`` as the dataset's
    items. :func:`finish_batch` turns it into exactly the stacked ``CachedSRDataset`` items.

    ``ram_budget_bytes`` is shared by the ``workers`` processes that read (each gets an equal part; 0 workers: the
    main process gets all of it): see :class:`ImageStore`."""

    def __init__(self, dataset: CachedSRDataset, *, ram_budget_bytes: int, workers: int) -> None:
        if ram_budget_bytes < 0 or workers < 0:
            raise ValueError(f"need ram_budget_bytes >= 0 and workers >= 0, got {ram_budget_bytes}/{workers}")
        self.dataset = dataset
        self.budget = ram_budget_bytes // max(1, workers)
        self._store: ImageStore | None = None

    @property
    def reader(self) -> CacheReader:
        return self.dataset.reader

    @property
    def meta(self) -> CacheMeta:
        return self.dataset.meta

    @property
    def store(self) -> ImageStore:
        if self._store is None:  # built in the process that reads (a worker), never pickled
            self._store = ImageStore(self.dataset.reader, budget_bytes=self.budget)
        return self._store

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_store"] = None
        return state

    def __len__(self) -> int:
        return len(self.dataset)

    def shapes(self, n: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of each stored-crop tensor of an ``n``-item batch."""
        ds = self.dataset
        p, s, meta, layout = ds.patch, ds.reader.scale, ds.meta, ds.reader.layout
        shapes = {
            "lr": ((n, p, p, 3), torch.uint8),
            "hr": ((n, s * p, s * p, 3), torch.uint8),
            "srs": ((n, s * p, s * p, 3 * len(meta.experts)), getattr(torch, layout.sr_dtype)),
        }
        if layout.has_features:
            shapes["feats"] = ((n, p, p, sum(meta.feature_channels)), torch.float16)
        return shapes

    def fill(self, out: dict[str, torch.Tensor], indices: list[int]) -> dict[str, torch.Tensor]:
        """Crop items ``indices`` into the first ``len(indices)`` rows of ``out`` (tensors shaped by :meth:`shapes`)
        → their ``index``, ``box`` and ``aug``."""
        ds, store = self.dataset, self.store
        plans = [ds.plan(int(k)) for k in indices]
        arrays = {k: v.numpy() for k, v in out.items()}
        p = ds.patch
        for b, c in enumerate(plans):
            store.crop_into(arrays, b, image=c.image, top=c.top, left=c.left, patch=p)
        return {
            "index": torch.tensor([c.image for c in plans]),
            "box": torch.tensor([[c.top, c.left, p, p] for c in plans]),
            "aug": torch.tensor([c.aug for c in plans]),
        }

    def __getitem__(self, indices: list[int]) -> dict:
        batch = {k: _batch_tensor(shape, dtype) for k, (shape, dtype) in self.shapes(len(indices)).items()}
        return {**batch, **self.fill(batch, indices)}


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker allocated in shared memory (as default_collate does), so
    sending it to the main process copies nothing."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


_UNIT_LUT = torch.from_numpy(np.arange(256, dtype=np.uint8).astype(np.float32) / 255.0)  # exactly CacheReader's /255


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """Stored values → float32 exactly as :class:`CacheReader` converts them (uint8 levels /255, float16 as is)."""
    if x.dtype == torch.uint8:
        lut = _UNIT_LUT.to(x.device)
        return lut.index_select(0, x.reshape(-1).int()).view(x.shape)
    return x.float()


def _augment_rows(x: torch.Tensor, aug: list[int]) -> torch.Tensor:
    """Row ``b`` of ``x`` (B,…,H,W) under dihedral transform ``aug[b]`` (square crops: shapes are kept), NCHW
    contiguous."""
    x = x.contiguous()
    if not any(aug):
        return x
    out = torch.empty_like(x)
    for k in sorted(set(aug)):
        rows = torch.tensor([b for b, a in enumerate(aug) if a == k], device=x.device)
        out.index_copy_(0, rows, augment(x.index_select(0, rows), k))
    return out


def finish_batch(
    batch: dict, *, device: torch.device, feat_channels: tuple[int, ...], non_blocking: bool = False
) -> dict:
    """A :class:`CropBatches` batch on ``device`` as float RGB [0,1] NCHW, augmented: ``lr`` (B,3,p,p), ``hr``
    (B,3,sp,sp), ``srs`` (B,E,3,sp,sp), ``feats`` E × (B,C_e,p,p) (empty without features) — equal bit for bit to
    the stacked :class:`CachedSRDataset` items (conversion and flips are exact, on any device)."""
    aug = [int(a) for a in batch["aug"].tolist()]

    def nchw(key: str) -> torch.Tensor:  # (B,H,W,C) stored → (B,C,H,W) float on the device
        return _to_unit(batch[key].to(device, non_blocking=non_blocking)).permute(0, 3, 1, 2)

    srs = nchw("srs")  # (B,E*3,sp,sp)
    n, _, sh, sw = srs.shape
    out = {
        "lr": _augment_rows(nchw("lr"), aug),
        "hr": _augment_rows(nchw("hr"), aug),
        "srs": _augment_rows(srs, aug).view(n, -1, 3, sh, sw),
        "feats": [],
        "index": batch["index"],
        "box": batch["box"],
        "aug": batch["aug"],
    }
    if "feats" in batch:
        feats = _augment_rows(nchw("feats"), aug)  # (B,ΣC,p,p)
        out["feats"] = [f.contiguous() for f in feats.split(list(feat_channels), dim=1)]
    return out


class CachedFullImageDataset(Dataset):
    """Whole images of a (validation) cache, one per item, un-augmented (use batch_size=1: sizes differ)."""

    def __init__(self, path: str | os.PathLike, *, expect: CacheMeta | None = None) -> None:
        self.reader = CacheReader(path, expect=expect)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> dict:
        s = self.reader.read(i)
        out = {"name": s.name, "lr": s.lr, "srs": s.srs, "feats": list(s.feats)}
        if s.hr is not None:
            out["hr"] = s.hr
        return out
