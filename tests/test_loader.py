"""The batch loader (cache/dataset.py CropBatches + finish_batch): its batches equal the stacked per-item crops bit for
bit — for the full (float16 SR + features) and the lean (8-bit SR) layouts, whatever the RAM budget (all images
kept, some, none) and the number of workers — and a resumed stream (from step s) is the tail of the whole one."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cache.batch_loader import LoaderError, SlotLoader
from cache.dataset import CachedSRDataset, CropBatches, ImageStore, crop_draws, finish_batch, mix_seed
from cache.schema import CacheLayout, CacheMeta
from cache.writer import CacheWriter, encode_srs
from pipeline.training.steps import StepBatchSampler, worker_init

BATCH, STEPS = 3, 5
REPO = Path(__file__).resolve().parents[1]


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


def test_crop_draws_are_torchs_randint_so_earlier_runs_keep_their_crops():
    """plan() draws with numpy's legacy MT19937 (4 µs) what it drew with torch.Generator + torch.randint (18 µs): the
    crop boxes and flips of every earlier training run — and the committed checkpoints' reruns — stay the same."""
    rng = np.random.default_rng(0)
    for seed, idx in [(0, 0), (0, 1), (1, 0), (2**40 + 5, 123_456_789)] + [
        (int(s), int(i)) for s, i in rng.integers(0, 2**62, size=(200, 2))
    ]:
        s = mix_seed(seed, idx, 2)
        ranges = [int(n) for n in rng.integers(1, 5000, size=2)] + [8]
        g = torch.Generator().manual_seed(s)
        want = [int(torch.randint(0, n, (), generator=g)) for n in ranges]
        assert [d % n for d, n in zip(crop_draws(s), ranges, strict=True)] == want


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


# ---------------------------------------------------------------------------------------------------------------------
# SlotLoader (cache/batch_loader.py): the training loader — same stream for any number of worker processes, resumable,
# and no process, shared memory or descriptor outlives it
# ---------------------------------------------------------------------------------------------------------------------
SLOT_BATCH, SLOT_STEPS = 2, 7  # 3 images: batches (2,3) and (8,9) straddle an epoch boundary; 7 batches reuse slots


def _slot_loader(cache, *, workers: int, budget: int, sampler, prefetch: int = 2) -> SlotLoader:
    ds = CachedSRDataset(cache, patch=8, seed=5)
    return SlotLoader(
        CropBatches(ds, ram_budget_bytes=budget, workers=workers),
        sampler=sampler,
        batch_size=SLOT_BATCH,
        workers=workers,
        prefetch=prefetch,
    )


def _slot_stream(cache, *, workers: int, budget: int, start: int = 0, prefetch: int = 2) -> list[tuple[dict, dict]]:
    """(the stored batch, cloned, as the loader yields it; the finished batch) per step from ``start``."""
    sampler = StepBatchSampler(start_step=start, steps=SLOT_STEPS, batch_size=SLOT_BATCH)
    loader = _slot_loader(cache, workers=workers, budget=budget, sampler=sampler, prefetch=prefetch)
    fc = loader.dataset.meta.feature_channels
    out = []
    for b in loader:  # a yielded batch is a view of its slot: clone the stored crops, finish before the next one
        out.append(
            ({k: v.clone() for k, v in b.items()}, finish_batch(b, device=torch.device("cpu"), feat_channels=fc))
        )
    return out


def _assert_same_stored(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("budget", [10**9, 150_000], ids=["all-kept", "some-kept"])
def test_slot_loader_same_stream_for_0_1_2_workers_and_after_a_resume(cache, budget):
    ds = CachedSRDataset(cache, patch=8, seed=5)
    ref = _slot_stream(cache, workers=0, budget=budget)
    assert len(ref) == SLOT_STEPS
    for s, (_, fin) in enumerate(ref):  # = the stacked per-item crops, the stream training always had
        _assert_equal(fin, _reference(ds, range(s * SLOT_BATCH, (s + 1) * SLOT_BATCH)))
    for workers, prefetch in ((1, 2), (2, 2), (2, 1)):
        for (a, fa), (b, fb) in zip(_slot_stream(cache, workers=workers, budget=budget, prefetch=prefetch), ref):
            _assert_same_stored(a, b)
            _assert_equal(fa, fb)
    for workers in (0, 1, 2):  # resumed at step 3: the uninterrupted stream's tail
        tail = _slot_stream(cache, workers=workers, budget=budget, start=3)
        assert len(tail) == SLOT_STEPS - 3
        for (a, fa), (b, fb) in zip(tail, ref[3:]):
            _assert_same_stored(a, b)
            _assert_equal(fa, fb)


def test_slot_loader_short_last_batch(cache):
    sampler = [[0, 1], [2, 3], [4]]  # a last batch of fewer items than the slots hold
    ds = CachedSRDataset(cache, patch=8, seed=5)
    for workers in (0, 2):
        loader = _slot_loader(cache, workers=workers, budget=150_000, sampler=sampler)
        got = [finish_batch(b, device=torch.device("cpu"), feat_channels=ds.meta.feature_channels) for b in loader]
        assert [len(b["aug"]) for b in got] == [2, 2, 1]
        for b, indices in zip(got, sampler):
            _assert_equal(b, _reference(ds, indices))


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _no_leftovers(fds_before: set[str]) -> None:
    """No loader process alive, and every descriptor it opened (slots' shared memory, pipes) closed again."""
    gc.collect()
    deadline = time.monotonic() + 10
    while mp.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not mp.active_children()
    leaked = {
        fd: os.readlink(f"/proc/self/fd/{fd}")
        for fd in _open_fds() - fds_before
        if os.path.exists(f"/proc/self/fd/{fd}")
    }
    assert not leaked, leaked


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")
def test_slot_loader_cleans_up_when_closed_abandoned_or_failing(cache):
    sampler = StepBatchSampler(start_step=0, steps=SLOT_STEPS, batch_size=SLOT_BATCH)
    gc.collect()
    fds = _open_fds()

    for b in _slot_loader(cache, workers=2, budget=10**9, sampler=sampler):  # noqa: B007 (b: deleted below)
        pass
    del b  # the last batch: a view of its slot
    _no_leftovers(fds)

    it = iter(_slot_loader(cache, workers=2, budget=10**9, sampler=sampler))  # stopped early, then closed
    next(it)
    assert len(mp.active_children()) == 2
    it.close()
    _no_leftovers(fds)

    it = iter(_slot_loader(cache, workers=2, budget=10**9, sampler=sampler))  # abandoned: garbage collected
    next(it)
    del it
    _no_leftovers(fds)

    def training_loop_that_fails():
        for step, _ in enumerate(_slot_loader(cache, workers=2, budget=10**9, sampler=sampler)):
            if step == 2:
                raise ValueError("the training step failed")

    try:  # not pytest.raises: its ExceptionInfo would keep the frame, and so the loader, alive
        training_loop_that_fails()
    except ValueError:
        pass
    _no_leftovers(fds)

    bad = _slot_loader(cache, workers=2, budget=10**9, sampler=[[0, 1], [-1, 2]])  # a worker fails: reported
    try:
        list(bad)
    except LoaderError as exc:
        assert "IndexError" in str(exc)
    else:
        raise AssertionError("a failing worker must raise LoaderError")
    _no_leftovers(fds)


_ORPHAN = """
import multiprocessing as mp, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_loader import _slot_loader
from pipeline.training.steps import StepBatchSampler
it = iter(_slot_loader(Path({cache!r}), workers=2, budget=10**9, sampler=StepBatchSampler(start_step=0, steps=7,
          batch_size=2)))
next(it)
print(" ".join(str(p.pid) for p in mp.active_children()), flush=True)
time.sleep(120)
"""


@pytest.mark.slow  # a fresh interpreter (5 s): not in the --fast path
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (Linux)")
def test_slot_loader_workers_exit_when_the_training_process_is_killed(cache, tmp_path):
    """SIGKILL (the OOM killer) runs no clean-up: the workers notice that their parent is gone and exit."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code = _ORPHAN.format(tests=str(REPO / "tests"), cache=str(cache))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 15
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and _state(p) != "Z"]
    assert not alive, f"loader workers {alive} outlived the killed training process"


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


class _FakeCudart:
    """torch.cuda.cudart() stand-in: records page-locking, fails the ``fail_at``-th registration (1-based)."""

    def __init__(self, fail_at: int = 0) -> None:
        self.fail_at, self.registered, self.calls, self.children_at_register = fail_at, set(), 0, []

    def cudaHostRegister(self, ptr, size, flags):  # noqa: N802 - the CUDA runtime's name
        self.calls += 1
        self.children_at_register.append(len(mp.active_children()))
        if self.calls == self.fail_at:
            return 1
        assert ptr not in self.registered
        self.registered.add(ptr)
        return 0

    def cudaHostUnregister(self, ptr):  # noqa: N802
        self.registered.remove(ptr)
        return 0


@pytest.mark.parametrize("workers", [0, 2])
def test_slot_loader_page_locks_after_forking_and_unlocks_at_the_end(cache, workers, monkeypatch):
    """``pin``: the slots are registered once the workers run (a driver may keep registered pages out of forked
    children), asynchronous copies are announced while they are, and every registration is undone at the end — also
    after a failed registration, which leaves the slots pageable."""
    sampler = StepBatchSampler(start_step=0, steps=4, batch_size=SLOT_BATCH)
    fake = _FakeCudart()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    loader = _slot_loader(cache, workers=workers, budget=10**9, sampler=sampler)
    loader.pin = True
    for _ in loader:
        assert loader.pinned and fake.registered
    assert not loader.pinned and not fake.registered
    assert fake.calls == max(1, 2 * workers) * len(loader.dataset.shapes(1))
    assert set(fake.children_at_register) == {workers}

    fake = _FakeCudart(fail_at=3)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    assert len(list(loader)) == 4
    assert not loader.pinned and not fake.registered and fake.calls == 3
