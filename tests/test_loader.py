"""The batch loader (cache/dataset.py CropBatches + finish_batch): its batches equal the stacked per-item crops bit for
bit — for the full (float16 SR + features) and the lean (8-bit SR) layouts, whatever the RAM budget (all images
kept, some, none) and the number of workers — and a resumed stream (from step s) is the tail of the whole one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cache.dataset import CachedSRDataset, CropBatches, ImageStore, finish_batch
from cache.schema import CacheLayout, CacheMeta
from cache.writer import CacheWriter, encode_srs
from pipeline.training.loop import StepBatchSampler, worker_init

BATCH, STEPS = 3, 5


def _write(path, *, layout: CacheLayout, sizes=((20, 24), (33, 17), (16, 40))):
    meta = CacheMeta(
        scale=4,
        experts=tuple({"name": f"e{i}", "feature_channels": c, "sha256": f"{i:064x}"} for i, c in enumerate((5, 3))),
        lr_method="matlab_bicubic",
        layout=layout,
    )
    rng = np.random.default_rng(0)
    with CacheWriter(path, meta=meta) as w:
        for j, (h, wd) in enumerate(sizes):
            srs = torch.from_numpy(rng.random((2, 3, 4 * h, 4 * wd)).astype(np.float32))
            w.write_sample(
                f"im{j}",
                lr=rng.integers(0, 256, (3, h, wd), dtype=np.uint8),
                hr=rng.integers(0, 256, (3, 4 * h, 4 * wd), dtype=np.uint8),
                srs=encode_srs(srs, layout.sr_dtype),
                feats=[rng.standard_normal((c, h, wd)).astype(np.float16) for c in meta.feature_channels]
                if layout.has_features
                else [],
            )
        w.write_index([f"im{j}" for j in range(len(sizes))])
    return path


@pytest.fixture(scope="module", params=["full-f16", "lean-u8"])
def cache(request, tmp_path_factory):
    layout = CacheLayout() if request.param == "full-f16" else CacheLayout(features="none", sr_dtype="uint8")
    return _write(tmp_path_factory.mktemp("loader") / "c.h5", layout=layout)


def _reference(ds: CachedSRDataset, indices) -> dict:
    items = [ds[k] for k in indices]
    return {
        "lr": torch.stack([it["lr"] for it in items]),
        "hr": torch.stack([it["hr"] for it in items]),
        "srs": torch.stack([it["srs"] for it in items]),
        "feats": [torch.stack([it["feats"][e] for it in items]) for e in range(len(items[0]["feats"]))],
        "box": torch.stack([it["box"] for it in items]),
        "aug": torch.tensor([it["aug"] for it in items]),
    }


def _assert_equal(batch: dict, ref: dict) -> None:
    for key in ("lr", "hr", "srs", "box", "aug"):
        assert batch[key].shape == ref[key].shape and torch.equal(batch[key], ref[key]), key
        if batch[key].is_floating_point():
            assert batch[key].is_contiguous() and batch[key].dtype == torch.float32
    assert len(batch["feats"]) == len(ref["feats"])
    for f, g in zip(batch["feats"], ref["feats"]):
        assert f.is_contiguous() and torch.equal(f, g)


def _stream(cache, *, workers: int, start: int, budget: int) -> list[dict]:
    ds = CachedSRDataset(cache, patch=8, seed=5)
    loader = DataLoader(
        CropBatches(ds, ram_budget_bytes=budget, workers=workers),
        batch_size=None,
        sampler=StepBatchSampler(start_step=start, steps=STEPS, batch_size=BATCH),
        num_workers=workers,
        worker_init_fn=worker_init,
    )
    fc = ds.meta.feature_channels
    return [finish_batch(b, device=torch.device("cpu"), feat_channels=fc) for b in loader]


@pytest.mark.parametrize("budget", [10**9, 150_000, 0], ids=["all-kept", "some-kept", "none-kept"])
def test_batches_equal_the_stacked_items(cache, budget):
    ds = CachedSRDataset(cache, patch=8, seed=5)
    batches = CropBatches(ds, ram_budget_bytes=budget, workers=0)
    for step in range(8):
        indices = list(range(step * BATCH, (step + 1) * BATCH))
        _assert_equal(
            finish_batch(batches[indices], device=torch.device("cpu"), feat_channels=ds.meta.feature_channels),
            _reference(ds, indices),
        )
    store = batches.store
    assert store.used <= budget and store.hits + store.misses == 8 * BATCH
    if budget == 0:
        assert store.hits == 0
    elif budget == 10**9:
        assert store.misses == 0 and len(store._images) == 3
    else:
        assert store.hits and store.misses  # part kept, part cropped from the files


def test_same_stream_for_0_1_2_workers_and_after_a_resume(cache):
    ref = _stream(cache, workers=0, start=0, budget=10**9)
    assert len(ref) == STEPS
    ds = CachedSRDataset(cache, patch=8, seed=5)
    for s, b in enumerate(ref):  # = the per-item dataset, the stream training always had
        _assert_equal(b, _reference(ds, range(s * BATCH, (s + 1) * BATCH)))
    for workers, budget in ((1, 10**9), (2, 10**9), (2, 0)):
        for a, b in zip(_stream(cache, workers=workers, start=0, budget=budget), ref, strict=True):
            _assert_equal(a, b)
    for a, b in zip(_stream(cache, workers=2, start=2, budget=10**9), ref[2:], strict=True):  # resumed at step 2
        _assert_equal(a, b)


def test_image_store_budget_and_bytes(cache):
    ds = CachedSRDataset(cache, patch=8)
    store = ImageStore(ds.reader, budget_bytes=10**9)
    for i in range(3):
        st = ds.reader.read_stored(i)
        stored = sum(a.nbytes for a in (st["lr"], st["hr"], st["srs"], *st["feats"]))
        assert store.image_bytes(i) == stored
    with pytest.raises(ValueError, match="budget_bytes"):
        ImageStore(ds.reader, budget_bytes=-1)
    with pytest.raises(ValueError, match="ram_budget_bytes"):
        CropBatches(ds, ram_budget_bytes=-1, workers=0)
    assert CropBatches(ds, ram_budget_bytes=1000, workers=4).budget == 250  # the budget is shared by the workers
