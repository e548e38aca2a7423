"""The project's committed artefacts agree with each other and with the recipe that made them.

experts/zoo/* (weights, sha256 pins, model cards, the training stages in config.json against
configs/experts/zoo_recipe.yaml, which scripts/reproduce_zoo.sh runs), checkpoints/fusion_zoo_small,
checkpoints/fusion_craft_ditn_span and checkpoints/fusion_esr_pool (the experts they were trained on = the pinned
ones) — and, with ../shared, every model card's Set5 score measured again."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experts.expert import load_expert
from experts.loading import sha256_file
from experts.spec import load_ensemble_spec
from experts.zoo import read_expert_config
from pipeline.core.config import ConfigError, config_to_dict
from pipeline.model.io import load_pretrained, read_extra
from pipeline.training.config import load_run_config
from pipeline.training.expert.config import load_expert_run_config
from pipeline.training.expert.recipe import load_zoo_recipe, stages
from pipeline.training.expert.validation import evaluate, load_val_sets

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "experts" / "zoo_recipe.yaml"
# what a run's result depends on (not where it logs, how often it validates, how many threads it uses)
RESULT_KEYS = (
    "steps",
    "lr",
    "warmup_steps",
    "min_lr_ratio",
    "betas",
    "weight_decay",
    "loss",
    "ema_decay",
    "seed",
    "grad_clip",
)


def _recipe(stage_config: dict) -> dict:
    model = {k: v for k, v in stage_config["model"]["params"].items() if k != "img_size"}  # img_size: masks only
    return {
        "architecture": stage_config["model"]["architecture"],
        "params": model,
        "data": stage_config["data"],
        "train": {k: stage_config["train"][k] for k in RESULT_KEYS},
    }


def _card_psnr(card: str, set_name: str) -> float:
    match = re.search(rf"^\| {set_name} \(`[^`]+`\) \| \d+ \| ([0-9.]+) \|", card, re.MULTILINE)
    assert match, f"no {set_name} row in the model card"
    return float(match.group(1))


def test_the_recipe_covers_the_zoo():
    assert sorted(load_zoo_recipe(RECIPE).experts) == sorted(
        p.name for p in (REPO / "experts" / "zoo").iterdir() if p.is_dir()
    )


@pytest.mark.parametrize("stage", ["model.init_from=runs/x", "train.name=x", "train.lr = 1e-4", "train.lr"])
def test_a_recipe_stage_cannot_set_what_the_stage_sets_itself_or_break_the_shell(tmp_path, stage):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"experts:\n  a:\n    config: a.yaml\n    fine_tune:\n      - ['{stage}']\n")
    with pytest.raises(ConfigError, match="fine_tune"):
        load_zoo_recipe(path)


@pytest.mark.parametrize("name", ["fusion_craft_ditn_span", "fusion_esr_pool"])
def test_committed_real_fusion_is_its_recipes_model(name):
    """checkpoints/NAME holds the model configs/train/NAME.yaml trains (the recipe and the weights cannot drift
    apart unnoticed)."""
    recipe = load_run_config(REPO / "configs" / "train" / f"{name}.yaml")
    cfg = load_pretrained(REPO / "checkpoints" / name).config
    members = cfg.set_gate.members  # a stack (sr-fusion stack-gates) of gates the recipe trains one seed at a time
    assert dataclasses.replace(cfg, set_gate=dataclasses.replace(cfg.set_gate, members=1)) == recipe.model
    if members > 1:
        recorded = read_extra(REPO / "checkpoints" / name)["members"]
        assert len(recorded) == members and len({m["sha256"] for m in recorded}) == members


@pytest.mark.parametrize("name", list(load_zoo_recipe(RECIPE).experts))
def test_zoo_expert_is_pinned_and_was_trained_by_the_shipped_recipe(name):
    entry = REPO / "experts" / "zoo" / name
    sha = sha256_file(entry / "model.safetensors")
    assert load_ensemble_spec(REPO / "configs" / "experts" / "zoo_small.yaml").by_name(name).sha256 == sha
    assert load_ensemble_spec(entry / "expert.yaml").experts[0].sha256 == sha
    card = (entry / "MODEL_CARD.md").read_text()
    assert f"sha256 `{sha}`" in card

    extra = read_expert_config(entry)["extra"]
    recorded = [*extra["history"], extra]  # every stage the export went through, the last one = the export
    shipped = stages(load_zoo_recipe(RECIPE), name)
    assert len(recorded) == len(shipped), f"{len(recorded)} recorded stages, the recipe has {len(shipped)}"
    if len(shipped) > 1:
        assert f"{len(shipped)} stages, each fine-tuning" in card
    for i, (done, stage) in enumerate(zip(recorded, shipped)):
        config = config_to_dict(load_expert_run_config(REPO / stage.config, stage.overrides[1:]))  # not init_from
        assert _recipe(done["run_config"]) == _recipe(config), f"stage {i + 1} is not the recipe's"
        assert done["step"] == config["train"]["steps"]
        assert (done["init_from"] is None) == (i == 0)


@pytest.mark.parametrize(
    ("checkpoint", "experts"),
    [
        ("fusion_zoo_small", "zoo_small.yaml"),
        ("fusion_craft_ditn_span", "shared_real.yaml"),
        ("fusion_esr_pool", "esr_pool.yaml"),
    ],
)
def test_committed_fusions_were_trained_on_the_pinned_experts(checkpoint, experts):
    trained_on = read_extra(REPO / "checkpoints" / checkpoint)["experts"]
    pinned = load_ensemble_spec(REPO / "configs" / "experts" / experts).experts
    assert [(e["name"], e["sha256"]) for e in trained_on] == [(e.name, e.sha256) for e in pinned]


@pytest.mark.parametrize("name", list(load_zoo_recipe(RECIPE).experts))
def test_zoo_model_card_scores_measure_again(name, shared_dir, single_thread):
    """Each card's Set5 PSNR-Y, measured again through the expert loader on ../shared's Set5."""
    entry = REPO / "experts" / "zoo" / name
    expert = load_expert(load_ensemble_spec(entry / "expert.yaml").experts[0], ensemble_scale=4)
    results = evaluate(
        lambda x: expert.run(x)[0],
        load_val_sets([str(shared_dir / "data/val/Set5/HR")], 4),
        scale=4,
        device=torch.device("cpu"),
    )
    card = (entry / "MODEL_CARD.md").read_text()
    assert results["Set5"]["psnr"] == pytest.approx(_card_psnr(card, "Set5"), abs=6e-4)
    assert results["Set5"]["psnr"] > results["Set5"]["bicubic_psnr"] + 1.0
    assert results["Set5"]["psnr"] >= 30.5  # the bundled experts' target (bicubic 28.43)


FAKE_PYTHON = """#!{python}
# Stands in for the interpreter of scripts/reproduce_zoo.sh: records every call; `-m` and `-` (the recipe, the pins)
# run for real; an export writes a weights file and an expert YAML with a made-up sha256 (one per entry).
import hashlib, os, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
if args[0] in ("-m", "-"):
    os.execv(sys.executable, [sys.executable, *args])
if "--export" in args:
    out = Path(args[args.index("--export") + 1])
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"")
    sha = hashlib.sha256(out.name.encode()).hexdigest()
    (out / "expert.yaml").write_text(f"experts:\\n- name: {{out.name}}\\n  sha256: {{sha}}\\n")
"""


def test_reproduce_zoo_runs_every_stage_of_the_recipe_then_pins_the_exports(tmp_path):
    """STAGE=experts of scripts/reproduce_zoo.sh, with an interpreter that records what it is asked to train."""
    root = tmp_path / "repo"
    for rel in ("scripts/reproduce_zoo.sh", "configs/experts/zoo_recipe.yaml", "configs/experts/zoo_small.yaml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text((REPO / rel).read_text())
    (tmp_path / "shared" / "data" / "train" / "T91").mkdir(parents=True)
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        **os.environ,
        "PY": str(fake),
        "STAGE": "experts",
        "SHARED": str(tmp_path / "shared"),
        "FAKE_LOG": str(log),
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        ["bash", str(root / "scripts" / "reproduce_zoo.sh")],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr

    calls = log.read_text().splitlines()
    recipe = load_zoo_recipe(RECIPE)
    for name in recipe.experts:
        shipped = stages(recipe, name)
        runs = {f"train.name={stage.run}" for stage in shipped}
        trained = [c for c in calls if c.startswith("scripts/train_expert.py ") and set(c.split()) & runs]
        assert trained == [
            f"scripts/train_expert.py {stage.config} train.name={stage.run} train.ckpt_every=250 "
            f"train.val_every=500 train.threads=1 {' '.join(stage.overrides)}".rstrip()
            for stage in shipped
        ]
        assert f"scripts/train_expert.py --resume runs/{shipped[-1].run} --export experts/zoo/{name}" in calls
        sha = hashlib.sha256(name.encode()).hexdigest()
        assert load_ensemble_spec(root / "configs" / "experts" / "zoo_small.yaml").by_name(name).sha256 == sha
