"""The comparable-experts fusion's tools on tiny experts: scoring fusions and ensemblers on a cached test set
(score_cached.py, a held-out split of a training cache), and the learning curve (nested subsets: peers fitted and the
set gate trained on each, scored against the peers of the same subset)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import program

from cache.dataset import image_subset

score_cached = program("research/score_cached")
learning_curve = program("research/learning_curve")
fit_ensembler = program("fit_ensembler")

OFF = ("freq", "cross_band", "cross_expert", "fourier_unit", "hierarchical", "gating", "refine", "lr_residual", "edge")


def set_gate_config(root, cache) -> str:
    cfg = {
        "model": {
            **{k: {"enabled": False} for k in (*OFF, "hessian")},
            "set_gate": {"enabled": True, "channels": 4, "depth": 1, "signals": True},
        },
        "data": {"train_cache": str(cache), "patch": 16, "batch_size": 2, "num_workers": 0},
        "train": {"runs_dir": str(root / "runs"), "steps": 2, "warmup_steps": 1, "ckpt_every": 2, "threads": 1},
    }
    path = root / "pool.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_learning_curve_and_cached_scores(tiny_cache, tmp_path, capsys):
    cache = tiny_cache
    config = set_gate_config(tmp_path, cache)
    out = tmp_path / "lc"
    argv = [config, "--sizes", "3", "6", "--score", str(cache), "--runs-prefix", "lc", "--fits-dir", str(tmp_path)]
    argv += ["--caches", str(cache)]  # a whole training cache as a point (e.g. caches merged as data is added)
    assert learning_curve.main([*argv, "--out", str(out)]) == 0
    points = json.loads(out.with_suffix(".json").read_text())["points"]
    assert [(p["point"], p["images"]) for p in points] == [("3", 3), ("6", 6), (cache.stem, 6)]
    assert points[1]["hr_mpx"] == points[2]["hr_mpx"] == 6 * 96 * 96 / 1e6
    for p in points:
        assert p["best_peer"] in ("mean", "zzpm", "blend", "blend_reg", "topk")
        assert abs(p["gain"] - (p["fusion"] - p["best_peer_psnr"])) < 1e-9
        for key in ("gain", "gain_over_mean", "gain_over_blend_reg"):
            iv = p[f"{key}_interval"]
            assert iv["low"] <= iv["mean"] <= iv["high"] and abs(iv["mean"] - p[key]) < 1e-9
            assert iv["resamples"] == 10_000 and iv["verdict"] in ("better", "worse", "not separable")
    assert (tmp_path / "runs" / f"lc_{cache.stem}" / "config.yaml").is_file()
    assert (tmp_path / f"{cache.stem}_blend_reg.json").is_file()
    run3 = tmp_path / "runs" / "lc_3"
    saved = yaml.safe_load((run3 / "config.yaml").read_text())
    assert saved["data"]["images"] == 3 and len(saved["model"]["set_gate"]["base"]) == 2
    capsys.readouterr()

    # a rerun reuses the scores of unchanged weights (nothing rescored), and rescores weights that changed
    (tmp_path / "runs" / "lc_6" / "ckpt" / "last" / "model.safetensors").resolve().touch()  # same bytes: reused
    again = tmp_path / "lc2"
    assert learning_curve.main([*argv, "--reuse", str(out.with_suffix(".json")), "--out", str(again)]) == 0
    assert capsys.readouterr().out.count("earlier score of these weights reused") == 3
    assert json.loads(again.with_suffix(".json").read_text())["points"] == points
    stale = json.loads(out.with_suffix(".json").read_text())
    stale["points"][0]["checkpoint_sha256"] = "0" * 64  # other weights under the same label: scored again
    out.with_suffix(".json").write_text(json.dumps(stale))
    assert learning_curve.main([*argv, "--reuse", str(out.with_suffix(".json")), "--out", str(again)]) == 0
    assert capsys.readouterr().out.count("earlier score of these weights reused") == 2
    assert json.loads(again.with_suffix(".json").read_text())["points"] == points

    # the run trained on 3 images, scored on the 3 it never saw, next to the ensemblers
    weights = tmp_path / "blend.json"
    assert fit_ensembler.main([str(cache), "--method", "blend_reg", "--images", "3", "--out", str(weights)]) == 0
    table = tmp_path / "held"
    args = ["--cache", str(cache), "--fusion", str(run3), "--ensemblers", str(weights), "--held-out-of", "3"]
    assert score_cached.main([*args, "--out", str(table)]) == 0
    payload = json.loads(table.with_suffix(".json").read_text())
    methods = {r["method"]: r for r in payload["rows"]}
    assert {"noisy", "calm", "mean", "zzpm", "blend_reg", str(run3)} <= set(methods)
    assert all(r["images"] == 3 for r in methods.values())
    assert sorted(set(range(6)) - set(image_subset(6, 3))) and "| none | blend_reg |" in capsys.readouterr().out


def test_score_cached_refuses_a_fusion_of_other_experts(tiny_cache, trained_run, tmp_path, capsys):
    from pipeline.evaluation.cached import CachedScoreError
    from pipeline.evaluation.cached import score_cached as score
    from pipeline.model.io import load_pretrained, resolve_checkpoint

    ckpt = resolve_checkpoint(trained_run, which="last")
    fusion = load_pretrained(ckpt)
    with pytest.raises(CachedScoreError, match="was trained with experts"):
        score(tiny_cache, fusions=[("x", fusion, [{"name": "other", "sha256": "0" * 64}])])
    with pytest.raises(CachedScoreError, match="no image is held out"):
        score(tiny_cache, held_out_of=6)
    assert torch.get_num_threads() >= 1


def test_two_peers_of_one_method_get_their_own_rows(tiny_cache, tmp_path, capsys):
    """A blend fitted on two training sets: two rows labelled by file, each scored on every image once — never one
    row pooling both (the mean of their scores)."""
    paths = []
    for n in (3, 6):
        paths.append(tmp_path / f"{n}_blend_reg.json")
        assert (
            fit_ensembler.main([str(tiny_cache), "--method", "blend_reg", "--images", str(n), "--out", str(paths[-1])])
            == 0
        )
    alone = []
    for p in paths:
        assert (
            score_cached.main(
                ["--cache", str(tiny_cache), "--ensemblers", str(p), "--out", str(tmp_path / f"t{p.stem}")]
            )
            == 0
        )
        rows = json.loads((tmp_path / f"t{p.stem}.json").read_text())["rows"]
        alone.append(next(r for r in rows if r["method"] == "blend_reg"))
    assert (
        score_cached.main(
            ["--cache", str(tiny_cache), "--ensemblers", *map(str, paths), "--out", str(tmp_path / "both")]
        )
        == 0
    )
    rows = {r["method"]: r for r in json.loads((tmp_path / "both.json").read_text())["rows"]}
    for p, one in zip(paths, alone, strict=True):
        row = rows[f"blend_reg [{p.stem}]"]
        assert row["images"] == one["images"] == 6 and row["psnr"] == one["psnr"]
    assert "blend_reg" not in rows and alone[0]["psnr"] != alone[1]["psnr"]

    from pipeline.evaluation.compare import CompareError, peer_labels
    from pipeline.inference.ensemblers import load

    same = load(paths[0])
    with pytest.raises(CompareError, match="share the table row"):
        peer_labels([same, same], [paths[0], paths[0]])


def test_score_cached_heldout_oracle_rows(tiny_cache, tmp_path):
    """--heldout-oracle B adds the held-out block oracle of each B, scored per image exactly as
    baselines.heldout_block_oracle of the cached SR, kind 'oracle' (never a peer); B < 2 is refused."""
    from cache.reader import CacheReader
    from pipeline.core.imageio import quantize_8bit
    from pipeline.core.metrics import psnr_y
    from pipeline.evaluation.baselines import heldout_block_oracle
    from pipeline.evaluation.cached import CachedScoreError
    from pipeline.evaluation.cached import score_cached as score

    table = tmp_path / "oracle"
    assert score_cached.main(["--cache", str(tiny_cache), "--heldout-oracle", "4", "8", "--out", str(table)]) == 0
    payload = json.loads(table.with_suffix(".json").read_text())
    rows = {r["method"]: r for r in payload["rows"]}
    assert rows["held-out oracle 4x4"]["kind"] == "oracle" and payload["heldout_oracle_blocks"] == [4, 8]
    reader = CacheReader(tiny_cache)
    want = []
    for i in range(len(reader)):
        s = reader.read(i)
        sr = heldout_block_oracle(s.srs[None], s.hr[None], 4)
        want.append(float(psnr_y(quantize_8bit(sr.clamp(0, 1)), s.hr[None], crop_border=reader.scale)[0]))
    reader.close()
    assert payload["per_image_psnr"]["held-out oracle 4x4"] == pytest.approx(want, abs=1e-9)
    # one row per block size, each its own choice (not one row repeated)
    assert payload["per_image_psnr"]["held-out oracle 4x4"] != payload["per_image_psnr"]["held-out oracle 8x8"]
    with pytest.raises(CachedScoreError, match=">= 2 px"):
        score(tiny_cache, oracle_blocks=[1])
