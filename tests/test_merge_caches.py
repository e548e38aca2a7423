"""cache/merge.py and ``merge-caches``: one training cache from several, hard-linked, strict, resumable."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import program, run_main

from cache.merge import MergeError, merge_caches
from cache.reader import CacheReader
from cache.schema import CacheMeta
from cache.writer import CacheWriter


def _meta(sha: str = "0" * 64) -> CacheMeta:
    return CacheMeta(
        scale=4,
        experts=tuple(
            {"name": f"e{i}", "architecture": "X", "sha256": sha, "hook_layers": ["body"], "feature_channels": c}
            for i, c in enumerate((5, 3))
        ),
        lr_method="matlab_bicubic",
    )


def _write(path: Path, names: list[str], *, seed: int, meta: CacheMeta | None = None) -> Path:
    meta = meta or _meta()
    rng = np.random.default_rng(seed)
    with CacheWriter(path, meta=meta) as w:
        for name in names:
            h, w_ = int(rng.integers(8, 20)), int(rng.integers(8, 20))
            w.write_sample(
                name,
                lr=rng.integers(0, 256, (3, h, w_), dtype=np.uint8),
                hr=rng.integers(0, 256, (3, 4 * h, 4 * w_), dtype=np.uint8),
                srs=rng.random((2, 3, 4 * h, 4 * w_)).astype(np.float16),
                feats=[rng.standard_normal((c, h, w_)).astype(np.float16) for c in (5, 3)],
            )
        w.write_index(names)
    return path


def _same_samples(merged: CacheReader, sources: list[CacheReader]) -> None:
    k = 0
    for src in sources:
        for i in range(len(src)):
            a, b = merged.read_stored(k), src.read_stored(i)
            assert merged.names[k] == src.names[i]
            for key in ("lr", "hr", "srs"):
                np.testing.assert_array_equal(a[key], b[key])
            for fa, fb in zip(a["feats"], b["feats"], strict=True):
                np.testing.assert_array_equal(fa, fb)
            k += 1
    assert k == len(merged)


def test_merge_keeps_every_sample_in_order_by_hard_links(tmp_path):
    a = _write(tmp_path / "a.h5", ["x1", "x2"], seed=0)
    b = _write(tmp_path / "b.h5", ["y1", "y2", "y3"], seed=1)
    merged = merge_caches([a, b], tmp_path / "m.h5")
    ra, rb = CacheReader(a), CacheReader(b)
    assert merged.names == ["x1", "x2", "y1", "y2", "y3"] and merged.meta == ra.meta
    _same_samples(merged, [ra, rb])
    assert merged.verify() == []
    assert os.stat(merged.sample_file(0)).st_ino == os.stat(ra.sample_file(0)).st_ino  # a link, not a copy
    assert os.stat(merged.sample_file(2)).st_ino == os.stat(rb.sample_file(0)).st_ino


def test_copy_across_file_systems(tmp_path, monkeypatch):
    a = _write(tmp_path / "a.h5", ["x1"], seed=0)
    b = _write(tmp_path / "b.h5", ["y1"], seed=1)

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    merged = merge_caches([a, b], tmp_path / "m.h5")
    assert os.stat(merged.sample_file(0)).st_ino != os.stat(CacheReader(a).sample_file(0)).st_ino
    _same_samples(merged, [CacheReader(a), CacheReader(b)])
    assert merged.verify() == []


def test_other_experts_or_a_name_twice_are_refused_before_anything_is_written(tmp_path):
    a = _write(tmp_path / "a.h5", ["x1", "x2"], seed=0)
    other = _write(tmp_path / "o.h5", ["z1"], seed=2, meta=_meta(sha="1" * 64))
    twice = _write(tmp_path / "t.h5", ["x2", "z2"], seed=3)
    with pytest.raises(MergeError, match=r"o\.h5 differs from .*a\.h5: experts\[0\]\.sha256"):
        merge_caches([a, other], tmp_path / "m.h5")
    with pytest.raises(MergeError, match=r"image 'x2' is in both .*a\.h5 and .*t\.h5"):
        merge_caches([a, twice], tmp_path / "m.h5")
    with pytest.raises(MergeError, match="at least two"):
        merge_caches([a], tmp_path / "m.h5")
    with pytest.raises(MergeError, match="not one of its sources"):
        merge_caches([a, twice], a)
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "m.h5.d").exists()


def test_resume_after_a_kill_and_the_command(tmp_path, capsys):
    a = _write(tmp_path / "a.h5", ["x1", "x2"], seed=0)
    b = _write(tmp_path / "b.h5", ["y1"], seed=1)
    out = tmp_path / "m.h5"
    merge_caches([a, b], out).close()
    # a merge killed before its index: one image done, a stale temp file of the next
    out.unlink()
    data = tmp_path / "m.h5.d"
    victim = sorted(data.glob("y1*"))[0]
    victim.rename(victim.with_name(f".{victim.name}.tmp-r0"))
    assert run_main(program("merge_caches").main, [str(a), str(b), "--out", str(out), "--verify"]) == 0
    assert "3 images (a.h5 2, b.h5 1)" in capsys.readouterr().out
    merged = CacheReader(out)
    _same_samples(merged, [CacheReader(a), CacheReader(b)])
    assert not list(data.glob(".*tmp*"))
    # a foreign file at --out is refused, one line, status 2
    foreign = tmp_path / "notes.h5"
    foreign.write_text("mine")
    assert run_main(program("merge_caches").main, [str(a), str(b), "--out", str(foreign)]) == 2
    assert foreign.read_text() == "mine"
