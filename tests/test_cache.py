"""HDF5 feature cache: writer/reader round trip, refusal of mismatches, lock, verify, crash-safety under SIGKILL,
resume, bad inputs, and aligned random crops from the dataset."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import program
from torch.utils.data import DataLoader

from cache.dataset import CachedSRDataset
from cache.reader import CacheError, CacheReader
from cache.repack import RepackError, repack
from cache.schema import CacheLayout, CacheMeta, describe_layout_shortfall
from cache.writer import CacheLockedError, CacheMismatchError, CacheWriter, encode_srs, lock_cache
from pipeline.core.augment import augment
from pipeline.core.imageio import write_image

REPO = Path(__file__).resolve().parents[1]


def _meta(channels=(5, 3), scale=4, sha="0" * 64) -> CacheMeta:
    return CacheMeta(
        scale=scale,
        experts=tuple(
            {
                "name": f"e{i}",
                "architecture": "X",
                "sha256": sha,
                "hook_layers": ["body"],
                "feature_channels": c,
                "scale": scale,
                "input": "lr",
            }
            for i, c in enumerate(channels)
        ),
        lr_method="matlab_bicubic",
    )


def _sample(rng, h, w, meta):
    s = meta.scale
    return {
        "lr": rng.integers(0, 256, (3, h, w), dtype=np.uint8),
        "hr": rng.integers(0, 256, (3, s * h, s * w), dtype=np.uint8),
        "srs": rng.random((len(meta.experts), 3, s * h, s * w)).astype(np.float16),
        "feats": [rng.standard_normal((c, h, w)).astype(np.float16) for c in meta.feature_channels],
    }


@pytest.fixture
def small_cache(tmp_path):
    meta = _meta()
    rng = np.random.default_rng(0)
    samples = {"a": _sample(rng, 20, 24, meta), "b": _sample(rng, 33, 17, meta)}
    with CacheWriter(tmp_path / "c.h5", meta=meta) as w:
        for name, smp in samples.items():
            w.write_sample(name, **smp)
        w.write_index(list(samples))
    return tmp_path / "c.h5", meta, samples


def test_round_trip_exact_and_layout(small_cache):
    path, meta, samples = small_cache
    r = CacheReader(path, expect=meta)
    assert r.names == ["a", "b"] and len(r) == 2 and r.has_hr and r.scale == 4
    for i, (name, smp) in enumerate(samples.items()):
        s = r.read(i)
        assert s.name == name
        assert torch.equal(s.lr, torch.from_numpy(smp["lr"]).float() / 255)
        assert torch.equal(s.hr, torch.from_numpy(smp["hr"]).float() / 255)
        assert torch.equal(s.srs, torch.from_numpy(smp["srs"].astype(np.float32)))  # fp16, not 8-bit
        for f, ref in zip(s.feats, smp["feats"]):
            assert torch.equal(f, torch.from_numpy(ref.astype(np.float32)))
    with h5py.File(path, "r") as f:  # the index is one HDF5 tree for any tool
        assert f.attrs["schema_version"] == 1 and f.attrs["num_images"] == 2
        assert f["images/b/sr"].shape == (2, 3, 132, 68)
        assert f["images/a/sr"].chunks == (2, 3, 64, 64) and f["images/a/feat/e0"].dtype == np.float16
        assert json.loads(f.attrs["experts"])[1]["feature_channels"] == 3
    assert r.verify() == []


def test_box_read_is_aligned(small_cache):
    path, _, samples = small_cache
    r = CacheReader(path)
    s = r.read(1, box=(5, 3, 8, 10))
    ref = samples["b"]
    assert torch.equal(s.lr, torch.from_numpy(ref["lr"][:, 5:13, 3:13]).float() / 255)
    assert torch.equal(s.hr, torch.from_numpy(ref["hr"][:, 20:52, 12:52]).float() / 255)
    assert torch.equal(s.srs, torch.from_numpy(ref["srs"][:, :, 20:52, 12:52].astype(np.float32)))
    assert torch.equal(s.feats[0], torch.from_numpy(ref["feats"][0][:, 5:13, 3:13].astype(np.float32)))
    with pytest.raises(ValueError, match="outside"):
        r.read(1, box=(30, 0, 8, 8))


def test_reader_refuses_other_experts_naming_the_field(small_cache):
    path, _, _ = small_cache
    with pytest.raises(CacheMismatchError, match=r"experts\[1\]\.feature_channels: cache has 3, expected 4"):
        CacheReader(path, expect=_meta(channels=(5, 4)))
    with pytest.raises(CacheMismatchError, match=r"experts\[0\]\.sha256"):
        CacheReader(path, expect=_meta(sha="1" * 64))
    with pytest.raises(CacheMismatchError, match="scale: cache has 4, expected 2"):
        CacheReader(path, expect=_meta(scale=2))
    with pytest.raises(CacheMismatchError, match="experts: cache has"):
        CacheReader(path, expect=_meta(channels=(5,)))
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(CacheMismatchError, match="schema_version is 99"):
        CacheReader(path)


def test_resume_refuses_different_meta(small_cache):
    path, _, _ = small_cache
    with pytest.raises(CacheMismatchError, match=r"cannot resume.*feature_channels.*--overwrite"):
        CacheWriter(path, meta=_meta(channels=(5, 4)))
    with CacheWriter(path, meta=_meta(channels=(5, 4)), overwrite=True) as w:  # explicit overwrite starts over
        assert not w.is_done("a") and not path.exists()


def test_resume_or_repack_with_another_compression_is_refused_naming_both(tmp_path):
    """Issue 29 item 1: a cache begun with bitshuffle-zstd and resumed with lzf would end half one, half the other."""
    meta = _meta()
    rng = np.random.default_rng(0)
    path = tmp_path / "c.h5"
    with CacheWriter(path, meta=meta, compression="bitshuffle-zstd") as w:  # "killed" after one image
        w.write_sample("a", **_sample(rng, 20, 24, meta))
    with pytest.raises(CacheMismatchError, match=r"compression: cache has bitshuffle-zstd, this run asks for lzf"):
        CacheWriter(path, meta=meta, compression="lzf")
    meta_json = path.with_name("c.h5.d") / "meta.json"  # a partial cache made before the compression was recorded
    recorded = json.loads(meta_json.read_text())
    del recorded["compression"]
    meta_json.write_text(json.dumps(recorded))
    with pytest.raises(CacheMismatchError, match=r"cache has bitshuffle-zstd, this run asks for none"):
        CacheWriter(path, meta=meta)  # read back from the finished sample's own filter
    with CacheWriter(path, meta=meta, compression="bitshuffle-zstd") as w:  # the same compression resumes
        w.write_sample("b", **_sample(rng, 20, 24, meta))
        w.write_index(["a", "b"])
    assert CacheReader(path).compression == "bitshuffle-zstd"
    # re-packing onto an existing complete cache made with another compression is refused too
    repack(path, tmp_path / "lzf.h5", layout=meta.layout, compression="lzf")
    with pytest.raises(CacheMismatchError, match=r"lzf\.h5: cannot resume.*cache has lzf, this run asks for none"):
        repack(path, tmp_path / "lzf.h5", layout=meta.layout)


def test_lock_stops_a_second_writer(small_cache):
    path, meta, _ = small_cache
    with CacheWriter(path, meta=meta):
        with pytest.raises(CacheLockedError, match="being written by another process"):
            CacheWriter(path, meta=meta)
    CacheWriter(path, meta=meta).close()  # released on close


def test_verify_reports_corruption_per_image(small_cache):
    path, _, _ = small_cache
    part = path.with_name("c.h5.d") / "b.h5"
    with h5py.File(part, "r+") as f:
        f["feat/e1"][0, 0, 0] = np.float16(123.0)  # silent bit rot
        f["sr"][0, 0, 0, 0] = np.float16(np.inf)
    problems = CacheReader(path).verify()
    assert any(p.startswith("b: feat/e1 checksum mismatch") for p in problems)
    assert any(p.startswith("b: sr contains NaN/Inf") for p in problems)
    assert not any(p.startswith("a:") for p in problems)
    part.unlink()
    assert any("b: unreadable" in p for p in CacheReader(path).verify())


def test_writer_validates_shapes_and_finiteness(tmp_path):
    meta = _meta()
    smp = _sample(np.random.default_rng(1), 8, 8, meta)
    with CacheWriter(tmp_path / "c.h5", meta=meta) as w:
        with pytest.raises(ValueError, match="srs must be float16"):
            w.write_sample("x", **{**smp, "srs": smp["srs"].astype(np.float32)})
        with pytest.raises(ValueError, match="features of e1 must be"):
            w.write_sample("x", **{**smp, "feats": [smp["feats"][0], smp["feats"][0]]})
        bad = smp["srs"].copy()
        bad[0, 0, 0, 0] = np.nan
        with pytest.raises(ValueError, match="NaN/Inf"):
            w.write_sample("x", **{**smp, "srs": bad})
        with pytest.raises(ValueError, match="invalid sample name"):
            w.write_sample("../x", **smp)
        assert not w.is_done("x")
        with pytest.raises(FileNotFoundError, match="extraction incomplete"):
            w.write_index(["x"])
    with pytest.raises(CacheError, match="extraction is unfinished"):
        CacheReader(tmp_path / "c.h5")


# ------------------------------------------------------------------------------------------------------------------
# layout options (features full|none, SR float16|uint8)
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("features", "sr_dtype", "compression"),
    [
        ("full", "float16", "none"),
        ("full", "uint8", "lzf"),
        ("none", "float16", "bitshuffle-lz4"),
        ("none", "uint8", "bitshuffle-zstd"),
        ("full", "float16", "bitshuffle-zstd"),
    ],
)
def test_every_layout_round_trips_within_its_precision(tmp_path, features, sr_dtype, compression):
    layout = CacheLayout(features=features, sr_dtype=sr_dtype)
    meta = dataclasses.replace(_meta(), layout=layout)
    rng = np.random.default_rng(3)
    smp = _sample(rng, 20, 24, meta)
    sr_float = (rng.random(smp["srs"].shape) * 1.2 - 0.1).astype(np.float32)  # experts overshoot [0,1] a little
    with CacheWriter(tmp_path / "c.h5", meta=meta, compression=compression) as w:
        feats = smp["feats"] if layout.has_features else []
        w.write_sample("a", lr=smp["lr"], hr=smp["hr"], srs=encode_srs(sr_float, sr_dtype), feats=feats)
        w.write_index(["a"])
    r = CacheReader(tmp_path / "c.h5", expect=_meta())  # the experts agree; the layout is the reader's to report
    assert r.layout == layout and r.verify() == []
    s = r.read(0, box=(3, 5, 8, 10))
    ref = torch.from_numpy(sr_float[:, :, 12:44, 20:60])
    assert torch.equal(s.lr, torch.from_numpy(smp["lr"][:, 3:11, 5:15]).float() / 255)
    if sr_dtype == "float16":  # exactly the float16 of the source (values beyond [0,1] kept)
        assert torch.equal(s.srs, ref.half().float())
    else:  # the 8-bit levels of the clamped source, like the PNG a submission writes
        assert torch.equal(s.srs * 255, (s.srs * 255).round())
        assert (s.srs - ref.clamp(0, 1)).abs().max() <= 0.5 / 255 + 2**-11  # rounded from the float16
    if layout.has_features:
        assert torch.equal(s.feats[1], torch.from_numpy(smp["feats"][1][:, 3:11, 5:15].astype(np.float32)))
    else:
        assert s.feats == ()
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert (f.attrs["features"], f.attrs["sr_dtype"]) == (features, sr_dtype)
        assert ("feat" in f["images/a"]) == layout.has_features and f["images/a/sr"].dtype == np.dtype(sr_dtype)
        assert (f["images/a/sr"].id.get_create_plist().get_nfilters() > 0) == (compression != "none")


def test_layout_is_checked_on_write_resume_and_verify(small_cache, tmp_path):
    path, meta, samples = small_cache
    lean = dataclasses.replace(meta, layout=CacheLayout(features="none", sr_dtype="uint8"))
    with pytest.raises(
        CacheMismatchError, match=r"cannot resume.*layout: cache has features full, sr float16, expected features none"
    ):
        CacheWriter(path, meta=lean)
    smp = samples["a"]
    with CacheWriter(tmp_path / "lean.h5", meta=lean) as w:
        with pytest.raises(ValueError, match="srs must be uint8"):
            w.write_sample("x", lr=smp["lr"], hr=smp["hr"], srs=smp["srs"], feats=[])
        with pytest.raises(ValueError, match="stores no features"):
            w.write_sample("x", lr=smp["lr"], hr=smp["hr"], srs=encode_srs(smp["srs"], "uint8"), feats=smp["feats"])
        w.write_sample("x", lr=smp["lr"], hr=smp["hr"], srs=encode_srs(smp["srs"], "uint8"), feats=[])
        w.write_index(["x"])
    with h5py.File(tmp_path / "lean.h5.d" / "x.h5", "r+") as f:  # features where the index says none
        f.create_dataset("feat/e0", data=np.zeros((5, 20, 24), np.float16))
    assert CacheReader(tmp_path / "lean.h5").verify() == ["x: holds features, but the index says features none"]
    with h5py.File(path, "a") as f:  # a cache written before the options existed reads as full / float16
        del f.attrs["features"], f.attrs["sr_dtype"]
    assert CacheReader(path).layout == CacheLayout()


def test_a_cache_holding_less_than_the_fusion_reads_is_refused_naming_both():
    full, lean = CacheLayout(), CacheLayout(features="none", sr_dtype="uint8")
    assert describe_layout_shortfall(full, reads_features=True, sr_dtype="float16") == []
    assert describe_layout_shortfall(full, reads_features=False, sr_dtype="uint8") == []  # more than needed is fine
    assert describe_layout_shortfall(lean, reads_features=False, sr_dtype="uint8") == []
    problems = describe_layout_shortfall(lean, reads_features=True, sr_dtype="float16")
    assert len(problems) == 2
    assert "features none" in problems[0] and "model.inputs.features=true" in problems[0]
    assert "sr uint8" in problems[1] and "float16" in problems[1] and "model.inputs.sr_dtype" in problems[1]


# ------------------------------------------------------------------------------------------------------------------
# the dataset
# ------------------------------------------------------------------------------------------------------------------
def test_augment_is_the_dihedral_group():
    x = torch.arange(12.0).view(1, 3, 4)
    outs = {tuple(augment(x, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataset_crops_are_aligned_across_members(small_cache, num_workers):
    path, _, samples = small_cache
    ds = CachedSRDataset(path, patch=8, repeat=3, augment=True)
    assert len(ds) == 6
    loader = DataLoader(
        ds, batch_size=3, shuffle=True, num_workers=num_workers, generator=torch.Generator().manual_seed(0)
    )
    seen_aug = set()
    for batch in loader:
        assert batch["lr"].shape == (3, 3, 8, 8) and batch["hr"].shape == (3, 3, 32, 32)
        assert batch["srs"].shape == (3, 2, 3, 32, 32)
        assert [f.shape for f in batch["feats"]] == [(3, 5, 8, 8), (3, 3, 8, 8)]
        for j in range(3):
            name = ["a", "b"][int(batch["index"][j])]
            t, l, p, _ = batch["box"][j].tolist()
            k = int(batch["aug"][j])
            seen_aug.add(k)
            ref = samples[name]
            lr = augment(torch.from_numpy(ref["lr"][:, t : t + p, l : l + p]).float() / 255, k)
            hr = augment(torch.from_numpy(ref["hr"][:, 4 * t : 4 * (t + p), 4 * l : 4 * (l + p)]).float() / 255, k)
            sr = augment(
                torch.from_numpy(ref["srs"][:, :, 4 * t : 4 * (t + p), 4 * l : 4 * (l + p)].astype(np.float32)), k
            )
            f1 = augment(torch.from_numpy(ref["feats"][1][:, t : t + p, l : l + p].astype(np.float32)), k)
            assert torch.equal(batch["lr"][j], lr) and torch.equal(batch["hr"][j], hr)
            assert torch.equal(batch["srs"][j], sr) and torch.equal(batch["feats"][1][j], f1)
    assert len(seen_aug) > 1


def test_dataset_refuses_patch_larger_than_images(small_cache):
    path, _, _ = small_cache
    with pytest.raises(ValueError, match="smaller than patch=20"):
        CachedSRDataset(path, patch=20)
    # opt-in: "b" (33x17) is left out, named, and never sampled; "a" (20x24) still is
    ds = CachedSRDataset(path, patch=20, skip_small=True)
    assert ds.skipped == ("b",) and len(ds) == 1
    assert {ds.image_of(k) for k in range(10)} == {ds.reader.names.index("a")}
    assert ds[5]["lr"].shape == (3, 20, 20)
    with pytest.raises(ValueError, match="every LR image"):
        CachedSRDataset(path, patch=25, skip_small=True)


# ------------------------------------------------------------------------------------------------------------------
# extract_features end to end with a tiny real architecture (SPAN, random weights saved to a checkpoint file)
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from spandrel.architectures.SPAN import SPAN

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=4)
    torch.save(model.state_dict(), root / "span_tiny.pth")
    (root / "experts.yaml").write_text(
        "scale: 4\nexperts:\n"
        f"  - {{name: spanA, checkpoint: {root / 'span_tiny.pth'}, architecture: SPAN, scale: 4, min_probe_psnr: 0}}\n"
        f"  - {{name: spanB, checkpoint: {root / 'span_tiny.pth'}, architecture: SPAN, scale: 4, hooks: [conv_1], "
        "min_probe_psnr: 0}\n"
    )
    rng = torch.Generator().manual_seed(1)
    hr_dir = root / "hr"
    for i in range(8):
        h, w = 96 + 4 * i, 120 - 4 * i
        base = torch.rand(1, 3, h // 8, w // 8, generator=rng)
        write_image(hr_dir / f"im{i:02d}.png", torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear"))
    return root


def _extract(args) -> int:
    """extract_features in this process (fast); subprocesses only where a real kill or torchrun is needed."""
    extract_features = program("extract_features")

    threads = torch.get_num_threads()
    try:  # one thread everywhere: results are then bit-identical to the subprocess runs
        return extract_features.main(["--threads", "1", *(str(a) for a in args)])
    finally:
        torch.set_num_threads(threads)


def _dump(path: Path) -> dict:
    r = CacheReader(path)
    out = {}
    for i, name in enumerate(r.names):
        s = r.read(i)
        out[name] = [s.lr, s.hr, s.srs, *s.feats]
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name]):
            assert torch.equal(x, y), name


@pytest.mark.slow  # ~28 s a layout on 2 cores
@pytest.mark.parametrize(
    "layout",
    [["--features", "full", "--sr-dtype", "float16"], [], ["--compression", "bitshuffle-zstd"]],
    ids=["full-f16", "default", "default-zstd"],
)
def test_extract_features_and_crash_safe_resume(tiny_setup, tmp_path, capsys, layout):
    root = tiny_setup
    args = ["--experts", root / "experts.yaml", "--hr", root / "hr", *layout]
    ref = tmp_path / "ref.h5"
    assert _extract([*args, "--out", ref, "--verify"]) == 0
    captured = capsys.readouterr()
    assert "0 problem(s)" in captured.out and "img/s" in captured.err  # tqdm shows the rate and ETA
    assert f"extract_features: cache {ref} holds 8 images" in captured.out  # the path, not a tensor's repr
    reference = _dump(ref)
    assert len(reference) == 8
    full = "--features" in layout
    want = CacheLayout() if full else CacheLayout(features="none", sr_dtype="uint8")  # the default: SR only, 8-bit
    assert CacheReader(ref).layout == want and len(reference["im00"]) == 3 + 2 * want.has_features
    with h5py.File(ref, "r") as f:  # the filter is really applied
        assert (f["images/im00/sr"].id.get_create_plist().get_nfilters() > 0) == ("--compression" in layout)

    # a real SIGKILL at several points: mid-write of the first image, after some images, while indexing
    out = tmp_path / "killed.h5"
    data_dir = tmp_path / "killed.h5.d"
    triggers = [
        lambda: any(data_dir.glob(".*.tmp-r0")),
        lambda: len(list(data_dir.glob("im*.h5"))) >= 4,
        lambda: (tmp_path / ".killed.h5.tmp").exists(),
    ]
    kills = 0
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "extract_features.py"),
        "--threads",
        "1",
        *map(str, args),
        "--out",
        str(out),
    ]
    for trigger in triggers:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            if data_dir.exists() and trigger():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
        proc.wait()
        kills += proc.returncode == -signal.SIGKILL
        # whatever the moment: every final-named sample file is complete and readable, the index is absent/complete
        for part in data_dir.glob("im*.h5"):
            with h5py.File(part, "r") as f:
                assert f["sr"][()].shape[0] == 2
        if out.exists():
            assert len(CacheReader(out)) == 8
    assert kills >= 2, "the kill points were never reached"

    assert _extract([*args, "--out", out, "--verify"]) == 0
    assert "already cached" in capsys.readouterr().out
    _assert_same(_dump(out), reference)

    # a second writer on the same cache is refused while the first holds the lock
    with lock_cache(out):
        capsys.readouterr()
        assert _extract([*args, "--out", out]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "being written by another process" in err[0]  # one line, no traceback
        with pytest.raises(CacheLockedError):
            _extract([*args, "--out", out, "--debug"])


def test_extract_bad_inputs_refused_before_work_or_skipped(tiny_setup, tmp_path, capsys):
    root = tiny_setup
    hr = tmp_path / "hr"
    hr.mkdir()
    for p in sorted((root / "hr").glob("*.png"))[:2]:
        (hr / p.name).write_bytes(p.read_bytes())
    (hr / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    write_image(hr / "tiny.png", torch.rand(1, 3, 3, 3))  # smaller than the scale
    args = ["--experts", root / "experts.yaml", "--hr", hr, "--out", tmp_path / "c.h5"]
    assert _extract(args) == 2  # every bad input listed, one line each, before anything is written
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "broken.png" in line] and [line for line in err if "tiny.png" in line]
    assert len(err) == 3 and "--skip-bad" in err[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr"]
    assert _extract([*args, "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.png" in err and "tiny.png" in err
    r = CacheReader(tmp_path / "c.h5")
    assert len(r) == 2 and {s["name"] for s in r.skipped} == {"broken", "tiny"}


def test_extract_lr_only_and_lr_hr_pairs(tiny_setup, tmp_path):
    make_lr = program("make_lr")

    root = tiny_setup
    hr_sub = tmp_path / "hr"
    hr_sub.mkdir()
    for p in sorted((root / "hr").glob("*.png"))[:2]:
        (hr_sub / p.name).write_bytes(p.read_bytes())
    assert make_lr.main(["--hr", str(hr_sub), "--out", str(tmp_path / "lr"), "--hr-out", str(tmp_path / "hrc")]) == 0
    assert (
        _extract(["--experts", root / "experts.yaml", "--lr", tmp_path / "lr", "--out", tmp_path / "lr_only.h5"]) == 0
    )
    r = CacheReader(tmp_path / "lr_only.h5")
    assert not r.has_hr and r.meta.lr_method == "given" and r.read(0).hr is None and len(r) == 2
    assert (
        _extract(
            [
                "--experts",
                root / "experts.yaml",
                "--lr",
                tmp_path / "lr",
                "--hr",
                tmp_path / "hrc",
                "--out",
                tmp_path / "pairs.h5",
            ]
        )
        == 0
    )
    assert _extract(["--experts", root / "experts.yaml", "--hr", hr_sub, "--out", tmp_path / "made.h5"]) == 0
    # given LR (made by make_lr and saved as PNG) and LR made on the fly are the same data
    _assert_same(_dump(tmp_path / "pairs.h5"), _dump(tmp_path / "made.h5"))


@pytest.mark.slow  # ~20 s: two gloo processes
def test_extract_distributed_two_gloo_ranks(tiny_setup, tmp_path):
    """torchrun --nproc_per_node 2 on CPU (gloo): each rank writes its share, rank 0 indexes all of them."""
    root = tiny_setup
    out = tmp_path / "dist.h5"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        str(REPO / "scripts" / "extract_features.py"),
        "--threads",
        "1",
        "--experts",
        str(root / "experts.yaml"),
        "--hr",
        str(root / "hr"),
        "--out",
        str(out),
    ]
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},  # this tree's code, not an installed one
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("dist.h5.lock.rank*")) == []  # both ranks' locks, removed at the end
    single = tmp_path / "single.h5"
    assert _extract(["--experts", root / "experts.yaml", "--hr", root / "hr", "--out", single]) == 0
    dumped = _dump(out)
    assert len(dumped) == 8
    _assert_same(dumped, _dump(single))


def test_cached_crop_equals_expert_on_full_lr(tiny_setup, tmp_path):
    """A training crop from the cache equals running the experts on the whole LR and cropping (fp16 rounding), and
    the HR crop sits at 4x the LR coordinates."""
    from experts.ensemble import ExpertEnsemble
    from pipeline.core.imageio import read_image
    from pipeline.core.resize import make_lr

    root = tiny_setup
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    src = sorted((root / "hr").glob("*.png"))[3]
    (hr_dir / src.name).write_bytes(src.read_bytes())
    full = ["--features", "full", "--sr-dtype", "float16"]
    assert _extract(["--experts", root / "experts.yaml", "--hr", hr_dir, "--out", tmp_path / "c.h5", *full]) == 0

    hr_full, lr_full = make_lr(read_image(src), 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = ExpertEnsemble.from_yaml(root / "experts.yaml")(lr_full)
    finally:
        torch.set_num_threads(threads)
    ds = CachedSRDataset(tmp_path / "c.h5", patch=6, augment=False)
    for _ in range(5):
        item = ds[0]
        t, l, p, _ = item["box"].tolist()
        assert torch.equal(item["lr"], lr_full[0, :, t : t + p, l : l + p])
        assert torch.equal(item["hr"], hr_full[0, :, 4 * t : 4 * (t + p), 4 * l : 4 * (l + p)])
        want_sr = out.srs[0, :, :, 4 * t : 4 * (t + p), 4 * l : 4 * (l + p)]
        torch.testing.assert_close(item["srs"], want_sr, atol=1e-3, rtol=1e-3)  # fp16 storage
        for f, full in zip(item["feats"], out.feats):
            ref = full[0, :, t : t + p, l : l + p]
            torch.testing.assert_close(f, ref, atol=2e-3 * (1 + ref.abs().max().item()), rtol=1e-3)


def test_dataset_stream_is_a_pure_function_of_seed_and_index(small_cache):
    path, _, _ = small_cache
    a = CachedSRDataset(path, patch=8, seed=3)
    b = CachedSRDataset(path, patch=8, seed=3)
    for k in (0, 1, 5, 1000):  # indices past len() are fine: the training stream is unbounded
        x, y = a[k], b[k]
        assert torch.equal(x["box"], y["box"]) and x["aug"] == y["aug"] and torch.equal(x["srs"], y["srs"])
    # every epoch visits every image once
    assert sorted(a.image_of(k) for k in range(2)) == [0, 1] and sorted(a.image_of(k) for k in range(2, 4)) == [0, 1]
    c = CachedSRDataset(path, patch=8, seed=4)
    assert any(not torch.equal(a[k]["box"], c[k]["box"]) for k in range(6))


def test_repack_equals_extracting_with_that_layout_and_never_invents_data(tiny_setup, tmp_path):
    root = tiny_setup
    args = ["--experts", root / "experts.yaml", "--hr", root / "hr"]
    assert _extract([*args, "--out", tmp_path / "full.h5"]) == 0
    assert _extract([*args, "--out", tmp_path / "lean.h5", "--features", "none", "--sr-dtype", "uint8"]) == 0
    lean = CacheLayout(features="none", sr_dtype="uint8")
    packed = repack(tmp_path / "full.h5", tmp_path / "packed.h5", layout=lean, compression="lzf")
    assert packed.layout == lean and packed.verify() == []
    _assert_same(_dump(tmp_path / "packed.h5"), _dump(tmp_path / "lean.h5"))  # bit-identical to a lean extraction
    with pytest.raises(RepackError, match=r"lean\.h5 stores no features"):
        repack(tmp_path / "lean.h5", tmp_path / "x.h5", layout=CacheLayout(sr_dtype="uint8"))
    with pytest.raises(RepackError, match=r"stores 8-bit SR images \(sr uint8\)"):
        repack(tmp_path / "lean.h5", tmp_path / "x.h5", layout=CacheLayout(features="none"))
    with pytest.raises(RepackError, match="not over its source"):
        repack(tmp_path / "full.h5", tmp_path / "full.h5", layout=lean)
    assert not (tmp_path / "x.h5").exists()


def test_image_subsets_are_nested_and_fixed():
    from cache.dataset import image_subset

    assert image_subset(10, None) == list(range(10))
    small, big = image_subset(291, 50), image_subset(291, 100)
    assert len(small) == 50 and len(big) == 100 and set(small) <= set(big) and small == sorted(small)
    assert image_subset(291, 50) == small  # the same subset every time
    with pytest.raises(ValueError, match="cannot take"):
        image_subset(10, 11)


def test_make_lr_hr_scale_makes_multiscale_pairs(tmp_path, capsys):
    """--hr-scale S: the HR downscaled by S with the MATLAB bicubic (8-bit) first, named _s{100S:03d}, then the
    usual crop + ×4 LR — the pairs a training cache takes next to the originals."""
    from pipeline.core.imageio import read_image
    from pipeline.core.resize import imresize, make_lr

    make_lr_cli = program("make_lr")
    hr = tmp_path / "hr"
    hr.mkdir()
    gen = torch.Generator().manual_seed(0)
    write_image(hr / "a.png", torch.rand(1, 3, 70, 90, generator=gen))
    write_image(hr / "b.png", torch.rand(1, 3, 64, 48, generator=gen))
    args = ["--hr", str(hr), "--out", str(tmp_path / "lr"), "--hr-out", str(tmp_path / "hrc"), "--hr-scale", "0.75"]
    assert make_lr_cli.main(args) == 0
    assert sorted(p.name for p in (tmp_path / "hrc").glob("*.png")) == ["a_s075.png", "b_s075.png"]
    for stem in ("a", "b"):
        small = imresize(read_image(hr / f"{stem}.png"), 0.75, uint8=True)
        want_hr, want_lr = make_lr(small, 4)
        assert torch.equal(read_image(tmp_path / "hrc" / f"{stem}_s075.png"), want_hr)
        assert torch.equal(read_image(tmp_path / "lr" / f"{stem}_s075x4.png"), want_lr)
    assert read_image(tmp_path / "hrc" / "a_s075.png").shape[-2:] == (52, 68)  # ceil(70·0.75)=53 → 52, 68
    capsys.readouterr()
    assert make_lr_cli.main([*args[:4], "--hr-scale", "1.5"]) == 2
    assert "--hr-scale must be in (0, 1]" in capsys.readouterr().err
