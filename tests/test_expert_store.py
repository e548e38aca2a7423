"""experts/store.py: each expert's output computed once, exact, verified on read, crash-safe, bounded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from experts.ensemble import ExpertEnsemble
from experts.store import ExpertStore, StoreError


@pytest.fixture
def ensemble(tiny_compact_experts) -> ExpertEnsemble:
    return ExpertEnsemble.from_yaml(tiny_compact_experts["yaml"])


def _lr(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(seed))


def _same(a, b) -> None:
    assert torch.equal(a.srs, b.srs)
    assert all(torch.equal(x, y) for x, y in zip(a.feats, b.feats, strict=True))


def test_outputs_are_the_live_ones_bit_for_bit_and_computed_once(ensemble, tmp_path):
    lr = _lr()
    live, live_x8 = ensemble(lr), ensemble.self_ensemble(lr)
    store = ExpertStore(tmp_path / "s")
    ensemble.store = store
    first = ensemble(lr)
    assert (store.hits, store.misses) == (0, 2) and store.usage().entries == 2
    again = ensemble(lr)
    assert (store.hits, store.misses) == (2, 2)
    _same(first, live)
    _same(again, live)
    x8 = ensemble.self_ensemble(lr)  # the identity pass is stored already: 7 new transforms × 2 experts
    assert store.usage().entries == 2 + 14 and store.hits == 4
    _same(x8, live_x8)
    _same(ensemble.self_ensemble(lr), live_x8)
    assert store.usage().entries == 16 and store.hits == 4 + 16
    ensemble(_lr(1))  # another image: another key
    assert store.usage().entries == 18
    assert store.verify() == []


def test_the_key_follows_everything_that_changes_the_output():
    x = _lr()
    fp = {"name": "a", "sha256": "0" * 64, "precision": "fp32"}
    base = ExpertStore.key(fingerprint=fp, tile=0, tile_overlap=32, device="cpu", x=x)
    assert base == ExpertStore.key(fingerprint=dict(fp), tile=0, tile_overlap=32, device="cpu", x=x.clone())
    others = [
        ExpertStore.key(fingerprint={**fp, "sha256": "1" * 64}, tile=0, tile_overlap=32, device="cpu", x=x),
        ExpertStore.key(fingerprint={**fp, "precision": "fp16"}, tile=0, tile_overlap=32, device="cpu", x=x),
        ExpertStore.key(fingerprint=fp, tile=64, tile_overlap=32, device="cpu", x=x),
        ExpertStore.key(fingerprint=fp, tile=0, tile_overlap=32, device="cuda:1", x=x),
        ExpertStore.key(fingerprint=fp, tile=0, tile_overlap=32, device="cpu", x=x.flip(-1)),
        ExpertStore.key(fingerprint=fp, tile=0, tile_overlap=32, device="cpu", x=x.double()),
        ExpertStore.key(fingerprint={**fp, "code": {"sha256": "2" * 64}}, tile=0, tile_overlap=32, device="cpu", x=x),
    ]
    assert len({base, *others}) == 1 + len(others)
    # where the expert lies and what it is called do not change what it computes: the same entry (a checkpoint's
    # portable path and a YAML's absolute path for the same weights; found on a real pool: every entry missed)
    code = {"sha256": "2" * 64, "class_name": "Net", "file": "../zoo/net.py"}
    moved = {
        **fp,
        "name": "b",
        "checkpoint": "/elsewhere/w.pth",
        "tags": ["x"],
        "code": {**code, "file": "/abs/net.py"},
    }
    assert ExpertStore.key(fingerprint={**fp, "checkpoint": "w.pth", "code": code}, **_K, x=x) == ExpertStore.key(
        fingerprint=moved, **_K, x=x
    )
    assert ExpertStore.key(fingerprint={**fp, "code": {**code, "class_name": "Other"}}, **_K, x=x) != ExpertStore.key(
        fingerprint={**fp, "code": code}, **_K, x=x
    )


_K = {"tile": 0, "tile_overlap": 32, "device": "cpu"}


def test_a_corrupt_entry_is_deleted_and_recomputed(ensemble, tmp_path, capsys):
    lr = _lr()
    live = ensemble(lr)
    store = ExpertStore(tmp_path / "s")
    ensemble.store = store
    ensemble(lr)
    victim = sorted((tmp_path / "s").glob("??/*.safetensors"))[0]
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in a tensor
    victim.write_bytes(bytes(data))
    assert "checksum mismatch" in "\n".join(store.verify())
    assert not victim.exists()
    _same(ensemble(lr), live)  # recomputed
    other = sorted((tmp_path / "s").glob("??/*.safetensors"))[1]
    other.write_bytes(other.read_bytes()[:100])  # a truncated copy
    _same(ensemble(lr), live)
    assert "unreadable" in capsys.readouterr().err
    assert store.verify() == [] and store.usage().entries == 2


def test_a_killed_write_leaves_no_entry(ensemble, tmp_path, monkeypatch):
    import experts.store as mod

    lr = _lr()
    live = ensemble(lr)
    store = ExpertStore(tmp_path / "s")
    ensemble.store = store

    def dies(tensors, path, metadata):
        open(path, "wb").write(b"half")  # noqa: SIM115 - a partial file, as a kill leaves it
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        ensemble(lr)
    assert store.usage().entries == 0
    monkeypatch.undo()
    _same(ensemble(lr), live)
    assert store.verify() == [] and store.usage().entries == 2
    (tmp_path / "s" / "ab").mkdir(exist_ok=True)
    (tmp_path / "s" / "ab" / ".x.safetensors.tmp-1-2").write_bytes(b"stale")
    store.prune(10**12)
    assert not list((tmp_path / "s").glob("??/.*tmp*"))


def test_bounded_least_recently_used_first(ensemble, tmp_path):
    store = ExpertStore(tmp_path / "s", max_bytes=None)
    ensemble.store = store
    for seed in range(3):
        ensemble(_lr(seed))
    size = store.usage().bytes
    per_image = size // 3
    files = sorted((tmp_path / "s").glob("??/*.safetensors"), key=os.path.getmtime)
    for i, f in enumerate(files):  # a clear age order: image 0 oldest
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
    ensemble(_lr(0))  # read again: image 0 becomes the most recent
    removed = store.prune(size - per_image)
    assert removed.entries == 2 and store.usage().bytes <= size - per_image
    ensemble.store = ExpertStore(tmp_path / "s", max_bytes=None)
    ensemble(_lr(0))
    assert ensemble.store.hits == 2  # the recently read image survived
    bounded = ExpertStore(tmp_path / "b", max_bytes=per_image * 2)
    ensemble.store = bounded
    for seed in range(4):
        ensemble(_lr(seed))
    assert bounded.usage().bytes <= per_image * 2


def test_a_foreign_folder_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="not an expert store"):
        ExpertStore(tmp_path / "mine")
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        ExpertStore(tmp_path / "f")


def test_the_store_command(ensemble, tmp_path, capsys):
    from pipeline.app import main

    root = tmp_path / "s"
    ensemble.store = ExpertStore(root)
    ensemble(_lr(0))
    ensemble(_lr(1))
    assert main(["store", "--store", str(root)]) == 0
    assert "4 entries" in capsys.readouterr().out
    assert main(["store", "--store", str(root), "--verify"]) == 0
    assert "0 bad entries" in capsys.readouterr().out
    victim = sorted(root.glob("??/*.safetensors"))[0]
    victim.write_bytes(victim.read_bytes()[:50])
    assert main(["store", "--store", str(root), "--verify"]) == 1
    assert "unreadable" in capsys.readouterr().out
    assert main(["store", "--store", str(root), "--prune", "0"]) == 0
    assert "removed 3 entries" in capsys.readouterr().out
    ensemble(_lr(0))
    assert main(["store", "--store", str(root), "--clear"]) == 0
    assert "0 entries" in capsys.readouterr().out
    assert main(["store", "--store", str(root), "--prune", "-1"]) == 2


_WRITER = """
import sys, torch
torch.set_num_threads(1)
from experts.ensemble import ExpertEnsemble
from experts.store import ExpertStore
ens = ExpertEnsemble.from_yaml(sys.argv[1])
ens.store = ExpertStore(sys.argv[2])
seed = 0
while True:  # new inputs for ever: the parent kills it while it writes
    ens(torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(seed % 40)))
    seed += 1
"""


@pytest.mark.slow  # ~6 s: two fresh interpreters (torch + spandrel imports), each killed
def test_kill_9_while_writing_then_rerun(ensemble, tiny_compact_experts, tmp_path):
    """A real ``kill -9`` of a process that writes the store, wherever it lands: the store verifies clean, and a
    rerun's outputs equal the live ones (from entries that survived or recomputed)."""
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "s"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for wait_entries in (1, 3):  # killed once early, once later (the second run resumes the first's store)
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tiny_compact_experts["yaml"]), str(root)], env=env)
        try:
            deadline = time.monotonic() + 300
            while not (root.is_dir() and len(list(root.glob("??/*.safetensors"))) >= wait_entries * 2):
                assert proc.poll() is None, "the writer died by itself"
                assert time.monotonic() < deadline, "the writer wrote nothing in 300 s"
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    store = ExpertStore(root)
    assert store.verify() == []
    before = store.usage().entries
    ensemble.store = store
    for seed in range(3):
        lr = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(seed))
        stored = ensemble(lr)
        ensemble.store = None
        _same(stored, ensemble(lr))
        ensemble.store = store
    assert store.hits >= 2 and before >= 2
    assert store.verify() == []
