"""train.py: schedule, stages, a tiny cached run that learns, checkpoints, bit-exact resume after SIGKILL, refusal
to resume with another config/cache, the NaN guard, atomic checkpoints, live mode and 2-process DDP (gloo)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import program, read_metrics, run_main
from safetensors.torch import load_file

from cache.extract import extract
from cache.schema import CacheLayout
from pipeline.core.config import ConfigError, config_to_dict
from pipeline.model.io import load_pretrained, read_extra
from pipeline.training.checkpoint import load_train_state, resolve_checkpoint, save_checkpoint
from pipeline.training.config import RunConfig, StageConfig, legacy_run_overrides, load_run_config
from pipeline.training.fusion import stage_at
from pipeline.training.losses import CombinedLoss
from pipeline.training.runs import RunError, prepare_run
from pipeline.training.steps import scheduled_lr

train_mod = program("train")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lean_cache(tiny_compact_experts, tmp_path_factory) -> Path:
    """The tiny experts' cache without features and with 8-bit SR images (the leanest layout)."""
    out = tmp_path_factory.mktemp("lean_cache") / "lean.h5"
    extract(
        experts=tiny_compact_experts["yaml"],
        out=out,
        hr_dirs=[tiny_compact_experts["hr"]],
        layout=CacheLayout(features="none", sr_dtype="uint8"),
    )
    return out


def _write_config(path: Path, cache: Path, runs: Path, **train_over) -> Path:
    model = yaml.safe_load((REPO / "configs" / "fusion_tiny.yaml").read_text())["model"]
    cfg = {
        "model": model,
        "data": {"train_cache": str(cache), "val_cache": str(cache), "patch": 16, "batch_size": 4, "num_workers": 0},
        "train": {
            "runs_dir": str(runs),
            "name": "tiny",
            "steps": 60,
            "lr": 2e-3,
            "log_every": 5,
            "val_every": 30,
            "ckpt_every": 30,
            "ema_decay": 0.9,
            "threads": 1,
            **train_over,
        },
    }
    cfg["train"]["warmup_steps"] = min(5, cfg["train"]["steps"])
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------------------------------------------
def test_lr_schedule_and_stage_switching(tmp_path):
    cfg = load_run_config(None, ["train.steps=100", "train.warmup_steps=10", "train.lr=1e-3", "train.min_lr_ratio=0.1"])
    assert scheduled_lr(0, cfg.train) == pytest.approx(1e-4)
    assert scheduled_lr(9, cfg.train) == pytest.approx(1e-3)
    assert scheduled_lr(10, cfg.train) == pytest.approx(1e-3)
    assert scheduled_lr(55, cfg.train) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way down the cosine
    assert scheduled_lr(100, cfg.train) == pytest.approx(1e-4)
    stages = (
        StageConfig(name="pixel", until_step=10),
        StageConfig(name="freq", until_step=20),
        StageConfig(name="perceptual"),
    )
    assert [stage_at(s, stages).name for s in (0, 9, 10, 19, 20, 10**6)] == [
        "pixel",
        "pixel",
        "freq",
        "freq",
        "perceptual",
        "perceptual",
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.stages=[{name: a, until_step: 5}, {name: b, until_step: 5}]"], "must increase strictly"),
        (["data.mode=live"], "needs data.experts"),
        (["train.stages=[{weights: {perceptual: 1.0}}]"], "loss.vgg_weights"),
        (["train.warmup_steps=10", "train.steps=5"], "warmup_steps"),
        (["train.stages=[{weights: {l2: 1.0}}]"], r"unknown key\(s\) 'train\.stages\[0\]\.weights\.l2'"),
    ],
)
def test_run_config_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, overrides)


def test_tiny_cached_run_learns_and_saves_everything(tiny_cache, tmp_path, capsys):
    cfg_path = _write_config(tmp_path / "cfg.yaml", tiny_cache, tmp_path / "runs")
    assert run_main(train_mod.main, [str(cfg_path)]) == 0
    run = tmp_path / "runs" / "tiny"
    out = capsys.readouterr()
    assert "val PSNR fusion" in out.err + out.out and "gain over best expert" in out.err + out.out
    log = read_metrics(run)
    losses = [v for _, v in log["train/loss"]]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # the loss goes down
    fused = log["val/psnr"][-1][1]
    mean = log["val/expert_mean"][-1][1]
    best = max(log["val/expert_noisy"][-1][1], log["val/expert_calm"][-1][1])
    assert fused > mean + 0.1, (fused, mean, best)  # learning, on its own tiny training data
    assert {"val/ssim", "train/gate_noisy", "train/gate_calm", "val/gate_calm", "train/charbonnier"} <= set(log)

    # run directory: resolved config, checkpoints with EMA weights + fingerprints, train state, TensorBoard
    assert load_run_config(run / "config.yaml").train.steps == 60
    last = resolve_checkpoint(run)
    assert last.name == "step_00000060" and (run / "ckpt" / "best").is_symlink()
    extra = read_extra(last)
    assert [e["name"] for e in extra["experts"]] == ["noisy", "calm"] and len(extra["experts"][0]["sha256"]) == 64
    assert extra["cache"]["schema_version"] == 1 and extra["val_psnr"] == pytest.approx(fused, abs=1e-6)
    model = load_pretrained(last)
    state = load_train_state(last)  # weights_only=True inside
    ema_weights = load_file(str(last / "model.safetensors"))
    ema_state = {k[len("module.") :]: v for k, v in state["ema"].items() if k.startswith("module.")}
    torch.testing.assert_close(ema_weights, ema_state)  # model.safetensors holds the EMA weights
    assert model.config.inputs.feat_channels == (8, 8)  # read from the cache fingerprints, not the YAML's (48,60,28)
    assert any((run / "tb").iterdir())
    # a second start with the same name refuses to overwrite the run
    with pytest.raises(RunError, match="already holds a run"):
        run_main(train_mod.main, [str(cfg_path)], debug=True)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(resolve_checkpoint(run) / "model.safetensors"))


def test_a_lean_cache_trains_only_the_fusion_it_can_feed(lean_cache, tmp_path):
    """A cache without features / with 8-bit SR is refused for a fusion that reads features / float SR (the
    message names the cache's layout and the fusion's setting); the SR-only 8-bit fusion trains on it."""
    cfg_path = _write_config(tmp_path / "cfg.yaml", lean_cache, tmp_path / "runs", steps=6, val_every=6, ckpt_every=6)
    full = ["model.inputs.features=true", "model.inputs.sr_dtype=float16"]
    with pytest.raises(
        RunError,
        match=r"lean\.h5 \(features none, sr uint8\) cannot feed this fusion.*"
        r"model\.inputs\.features=true.*model\.inputs\.sr_dtype",
    ):
        run_main(train_mod.main, [str(cfg_path), *full], debug=True)
    over = ["model.inputs.features=false", "model.inputs.sr_dtype=uint8"]  # the defaults, spelled out
    assert run_main(train_mod.main, [str(cfg_path), *over]) == 0
    model = load_pretrained(resolve_checkpoint(tmp_path / "runs" / "tiny"))
    assert model.config.inputs.features is False and model.config.inputs.sr_dtype == "uint8"


@pytest.mark.slow  # ~9 s: a killed subprocess, then a resume
def test_resume_after_sigkill_is_bit_identical(tiny_cache, tmp_path):
    common = {"steps": 24, "ckpt_every": 8, "val_every": 1000, "log_every": 4}
    ref_cfg = _write_config(tmp_path / "ref.yaml", tiny_cache, tmp_path / "runs", name="ref", **common)
    assert run_main(train_mod.main, [str(ref_cfg)]) == 0
    reference = _final_weights(tmp_path / "runs" / "ref")

    cfg = _write_config(tmp_path / "cut.yaml", tiny_cache, tmp_path / "runs", name="cut", **common)
    run = tmp_path / "runs" / "cut"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), str(cfg)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if (run / "ckpt" / "step_00000008" / "COMPLETE").exists():  # killed between checkpoints 8 and 16
            time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert resolve_checkpoint(run).name in ("step_00000008", "step_00000016")
    assert run_main(train_mod.main, ["--resume", str(run)]) == 0
    resumed = _final_weights(run)
    assert resumed.keys() == reference.keys()
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k
    steps = [s for s, _ in read_metrics(run)["train/loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 24  # the log has no duplicated steps after the resume


def test_resume_refuses_other_config_or_cache(tiny_cache, tiny_compact_experts, tmp_path):
    cfg = _write_config(tmp_path / "c.yaml", tiny_cache, tmp_path / "runs", steps=4, ckpt_every=4, val_every=1000)
    assert run_main(train_mod.main, [str(cfg)]) == 0
    run = tmp_path / "runs" / "tiny"
    with pytest.raises(RunError, match=r"config differs.*train\.lr: run has 0\.002, now 0\.1"):
        run_main(train_mod.main, [str(cfg), "train.lr=0.1", "--resume", str(run)], debug=True)
    # same config, but the cache at that path now holds other data
    extract_features = program("extract_features")

    hr = tmp_path / "hr_subset"
    hr.mkdir()
    for p in sorted(tiny_compact_experts["hr"].glob("*.png"))[:3]:
        (hr / p.name).write_bytes(p.read_bytes())
    moved = tmp_path / "train.h5"
    assert (
        extract_features.main(["--experts", str(tiny_compact_experts["yaml"]), "--hr", str(hr), "--out", str(moved)])
        == 0
    )
    cfg2 = _write_config(tmp_path / "c.yaml", moved, tmp_path / "runs", steps=4, ckpt_every=4, val_every=1000)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["data"]["train_cache"] = saved["data"]["val_cache"] = str(moved)  # pretend the run used that path
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(RunError, match=r"training data differ.*images"):
        run_main(train_mod.main, [str(cfg2), "--resume", str(run)], debug=True)


def test_resume_of_a_run_older_than_the_input_switches_keeps_what_it_was_trained_with(tmp_path, capsys):
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    saved = config_to_dict(RunConfig())
    for key in ("features", "sr_dtype"):  # a run saved before these keys existed
        del saved["model"]["inputs"][key]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert legacy_run_overrides(saved) == ["model.inputs.features=true", "model.inputs.sr_dtype=float16"]

    def prepare(*overrides, legacy=legacy_run_overrides):
        return prepare_run(
            prog="train",
            config=None,
            overrides=list(overrides),
            resume=run,
            load=load_run_config,
            run_dir_of=lambda c: run,
            write=False,
            legacy=legacy,
        )[0]

    inputs = prepare().model.inputs  # not today's defaults (SR only, 8-bit): those would change what it trains on
    assert (inputs.features, inputs.sr_dtype) == (True, "float16")
    assert "predates model.inputs.features=true, model.inputs.sr_dtype=float16" in capsys.readouterr().out
    with pytest.raises(RunError, match=r"model\.inputs\.sr_dtype: run has 'float16', now 'uint8'"):
        prepare("model.inputs.sr_dtype=uint8")
    with pytest.raises(RunError, match=r"model\.inputs\.features: run has None, now False"):
        prepare(legacy=None)  # without the migration the absent key would silently become today's default
    current = config_to_dict(RunConfig())
    assert legacy_run_overrides(current) == []  # a config that has the keys keeps them


def test_init_from_fine_tunes_a_trained_model_and_refuses_a_mismatch(tiny_cache, tmp_path):
    base_cfg = _write_config(
        tmp_path / "base.yaml", tiny_cache, tmp_path / "runs", name="base", steps=6, ckpt_every=6, val_every=1000
    )
    assert run_main(train_mod.main, [str(base_cfg)]) == 0
    base = resolve_checkpoint(tmp_path / "runs" / "base", which="best")
    # lr 0: the fine-tuned run must end exactly at the initial weights (EMA of constant weights included)
    ft_cfg = _write_config(
        tmp_path / "ft.yaml",
        tiny_cache,
        tmp_path / "runs",
        name="ft",
        steps=2,
        ckpt_every=2,
        val_every=1000,
        lr=0.0,
        init_from=str(tmp_path / "runs" / "base"),
    )
    assert run_main(train_mod.main, [str(ft_cfg)]) == 0
    got, want = _final_weights(tmp_path / "runs" / "ft"), load_file(str(base / "model.safetensors"))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert load_run_config(tmp_path / "runs" / "ft" / "config.yaml").train.init_from == str(tmp_path / "runs" / "base")
    # another network
    with pytest.raises(RunError, match=r"init_from describes another network: model\.refine"):
        run_main(train_mod.main, [str(ft_cfg), "train.name=ft2", "model.refine.enabled=false"], debug=True)
    # other experts: the recorded fingerprints no longer match the cache's
    extra_path = base / "config.json"
    import json

    payload = json.loads(extra_path.read_text())
    payload["extra"]["experts"][0]["sha256"] = "0" * 64
    extra_path.write_text(json.dumps(payload))
    (base / "SHA256SUMS").unlink(missing_ok=True)
    with pytest.raises(RunError, match=r"was trained on experts \['noisy \(000000000000…\)'"):
        run_main(train_mod.main, [str(ft_cfg), "train.name=ft3"], debug=True)
    # a missing checkpoint is an error naming the key and the path, before the run folder is made
    with pytest.raises(RunError, match=r"train\.init_from=.*nothing: no complete checkpoint"):
        run_main(train_mod.main, [str(ft_cfg), "train.name=ft4", f"train.init_from={tmp_path / 'nothing'}"], debug=True)
    assert not (tmp_path / "runs" / "ft4").exists()


def test_a_run_is_trained_by_one_process_at_a_time(tiny_cache, tmp_path):
    cfg = _write_config(tmp_path / "c.yaml", tiny_cache, tmp_path / "runs", steps=2, ckpt_every=2, val_every=1000)
    assert run_main(train_mod.main, [str(cfg)]) == 0
    run = tmp_path / "runs" / "tiny"
    holder = subprocess.Popen(  # another trainer of this run, as far as the lock is concerned
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'w'); f.write('pid 4242 on box');"
            "f.flush(); fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)",
            str(run / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=r"is being trained right now by pid 4242 on box"):
            run_main(train_mod.main, ["--resume", str(run)], debug=True)
    finally:
        holder.kill()
        holder.wait()
    assert run_main(train_mod.main, ["--resume", str(run)]) == 0  # the lock died with its process
    assert run_main(train_mod.main, ["--resume", str(run)]) == 0  # and this process released its own


def test_nan_guard_skips_counts_and_aborts(tiny_cache, tmp_path, monkeypatch):
    real = CombinedLoss.forward
    calls = {"n": 0}

    def flaky(self, sr, hr, weights, *, balance=None, gates=None, srs=None):
        calls["n"] += 1
        total, terms = real(self, sr, hr, weights, balance=balance, gates=gates, srs=srs)
        return (total * float("nan") if calls["n"] in (2, 3) or calls["n"] >= 6 else total), terms

    monkeypatch.setattr(CombinedLoss, "forward", flaky)
    cfg = _write_config(
        tmp_path / "c.yaml", tiny_cache, tmp_path / "runs", steps=30, val_every=1000, ckpt_every=1000, max_nonfinite=4
    )
    with pytest.raises(RunError, match="4 non-finite steps in a row at step 8"):
        run_main(train_mod.main, [str(cfg)], debug=True)
    state = load_train_state(resolve_checkpoint(tmp_path / "runs" / "tiny"))
    assert state["step"] == 8 and state["counters"]["nonfinite_total"] == 6
    for v in state["model"].values():
        assert torch.isfinite(v).all()  # skipped steps never touched the weights


def test_checkpoint_write_is_atomic_under_a_crash(tiny_cache, tmp_path, monkeypatch):
    cfg = _write_config(tmp_path / "c.yaml", tiny_cache, tmp_path / "runs", steps=4, ckpt_every=4, val_every=1000)
    assert run_main(train_mod.main, [str(cfg)]) == 0
    run = tmp_path / "runs" / "tiny"
    before = resolve_checkpoint(run)
    model = load_pretrained(before)

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated) while writing train_state.pt")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(run / "ckpt", step=8, ema_model=model, train_state={"step": 8}, extra={})
    assert resolve_checkpoint(run) == before  # `last` still points at the complete checkpoint
    assert not (run / "ckpt" / "step_00000008").exists()
    load_pretrained(resolve_checkpoint(run))


def test_live_mode_runs_the_experts(tiny_compact_experts, tmp_path):
    cfg = _write_config(
        tmp_path / "c.yaml",
        tmp_path / "unused.h5",
        tmp_path / "runs",
        steps=3,
        ckpt_every=3,
        val_every=1000,
        log_every=1,
    )
    data = yaml.safe_load(cfg.read_text())
    data["data"].update(
        {
            "mode": "live",
            "experts": str(tiny_compact_experts["yaml"]),
            "train_hr": str(tiny_compact_experts["hr"]),
            "val_cache": None,
        }
    )
    cfg.write_text(yaml.safe_dump(data))
    assert run_main(train_mod.main, [str(cfg)]) == 0
    run = tmp_path / "runs" / "tiny"
    assert len(read_metrics(run)["train/loss"]) == 3
    assert [e["name"] for e in read_extra(resolve_checkpoint(run))["experts"]] == ["noisy", "calm"]


@pytest.mark.slow  # ~8 s: two gloo processes
def test_ddp_two_gloo_processes(tiny_cache, tmp_path):
    cfg = _write_config(
        tmp_path / "c.yaml", tiny_cache, tmp_path / "runs", steps=4, ckpt_every=2, val_every=4, log_every=2
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531",
        str(REPO / "train.py"),
        str(cfg),
    ]
    res = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    assert resolve_checkpoint(run).name == "step_00000004"
    log = read_metrics(run)
    assert [s for s, _ in log["train/loss"]] == [2, 4]  # rank 0 alone logs
    assert math.isfinite(log["val/psnr"][-1][1])


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_run_config_loads_strictly(path):
    """configs/train/*.yaml pass the strict schema (unknown keys, wrong types, bad model settings are errors)."""
    cfg = load_run_config(path)
    assert cfg.train.steps >= 1 and cfg.model.num_experts >= 1
