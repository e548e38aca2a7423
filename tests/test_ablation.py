"""scripts/research/ablation.py: every variant trains with its switches on the same data and budget, is scored once
with its final weights, a finished variant is not retrained, and the table compares against the default and the best
expert."""

from __future__ import annotations

import json

import yaml
from conftest import REPO_ROOT, program, run_main

from pipeline.training.ablation import VARIANTS

ablation = program("research/ablation")


def test_ablation_trains_each_variant_once_and_tabulates(tiny_cache, tmp_path, capsys):
    cache = tiny_cache
    model = yaml.safe_load((REPO_ROOT / "configs" / "fusion_tiny.yaml").read_text())["model"]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": model,
                "data": {"train_cache": str(cache), "patch": 16, "batch_size": 2, "num_workers": 0},
                "train": {"steps": 100, "warmup_steps": 1, "log_every": 1, "threads": 1, "lr": 1e-3},
            }
        )
    )
    argv = [
        str(cfg),
        "--val-cache",
        str(cache),
        "--steps",
        "3",
        "--runs-dir",
        str(tmp_path / "abl"),
        "--only",
        "default,no_gating,gating_only",
        "train.lr=2e-3",
        "train.ckpt_every=2",
    ]  # after the options
    assert run_main(ablation.main, argv) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    res = saved["results"]
    assert set(res) == {"default", "no_gating", "gating_only"} and saved["steps"] == 3
    assert res["gating_only"]["params"] < res["default"]["params"]
    assert res["default"]["best_expert"] == "calm"
    # each variant ran with its own switches and the common ones, validated only at its last step
    run_cfg = yaml.safe_load((tmp_path / "abl" / "no_gating" / "config.yaml").read_text())
    assert run_cfg["model"]["gating"]["enabled"] is False and run_cfg["train"]["val_every"] == 3
    assert run_cfg["train"]["lr"] == 2e-3 and saved["overrides"] == ["train.lr=2e-3", "train.ckpt_every=2"]
    assert run_cfg["train"]["ckpt_every"] == 2  # the caller's checkpoint period wins over the default 250
    assert run_cfg["data"]["val_cache"] == str(cache)
    val_steps = {
        r.split(",")[0]
        for r in (tmp_path / "abl" / "default" / "metrics.csv").read_text().splitlines()
        if ",val/psnr," in r
    }
    assert val_steps == {"3"}
    row = next(line for line in out.splitlines() if line.startswith("| no_gating |"))
    assert f"{res['no_gating']['psnr'] - res['default']['psnr']:+.4f}" in row
    assert "| default | — |" in out and "3 steps each, scored with the final EMA weights" in out

    # a second call reuses the finished runs
    mtime = (tmp_path / "abl" / "default" / "metrics.csv").stat().st_mtime_ns
    assert run_main(ablation.main, argv) == 0
    assert "default: finished earlier" in capsys.readouterr().out
    assert (tmp_path / "abl" / "default" / "metrics.csv").stat().st_mtime_ns == mtime


def test_ablation_rejects_unknown_variants_and_a_missing_cache(tmp_path):
    assert ablation.main(["cfg.yaml", "--val-cache", str(tmp_path), "--only", "no_such_thing"]) != 0
    assert ablation.main(["cfg.yaml", "--val-cache", str(tmp_path / "missing.h5")]) != 0
    # every switch names a real config field
    from pipeline.core.config import load_config
    from pipeline.model.fusion_config import FusionConfig

    for v in VARIANTS:
        load_config(FusionConfig, None, [o.removeprefix("model.") for o in v.overrides])
