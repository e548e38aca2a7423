"""The project's committed artefacts agree with each other and with the recipe that made them.

experts/zoo/* (weights, sha256 pins, model cards, the training stages in config.json against configs/experts/train/
and scripts/reproduce_zoo.sh), checkpoints/fusion_zoo_small and checkpoints/fusion_craft_ditn_span (the experts they
were trained on = the pinned ones) — and, with ../shared, every model card's Set5 score measured again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from experts.expert import load_expert
from experts.loading import sha256_file
from experts.spec import load_ensemble_spec
from experts.zoo import read_expert_config
from pipeline.config import config_to_dict
from pipeline.expert_train_config import load_expert_run_config
from pipeline.model_io import read_extra
from scripts.train_expert import evaluate, load_val_sets

REPO = Path(__file__).resolve().parents[1]
ZOO = {"hat_s": "hat_s", "dat_s": "dat_s", "nafnet_sr_s": "nafnet_sr"}  # zoo entry -> configs/experts/train/NAME.yaml
TWO_STAGES = ("hat_s", "dat_s")
# what a run's result depends on (not where it logs, how often it validates, how many threads it uses)
RESULT_KEYS = ("steps", "lr", "warmup_steps", "min_lr_ratio", "betas", "weight_decay", "loss", "ema_decay", "seed",
               "grad_clip")


def _recipe(stage_config: dict) -> dict:
    model = {k: v for k, v in stage_config["model"]["params"].items() if k != "img_size"}  # img_size: masks only
    return {"architecture": stage_config["model"]["architecture"], "params": model, "data": stage_config["data"],
            "train": {k: stage_config["train"][k] for k in RESULT_KEYS}}


def _fine_tune_overrides() -> list[str]:
    """The second-stage overrides scripts/reproduce_zoo.sh passes (train.KEY=VALUE after model.init_from)."""
    text = (REPO / "scripts" / "reproduce_zoo.sh").read_text()
    match = re.search(r'model\.init_from="runs/\$name" ((?:train\.\w+=\S+ ?)+)', text)
    assert match, "scripts/reproduce_zoo.sh: no fine-tuning stage found"
    return match.group(1).split()


def _card_psnr(card: str, set_name: str) -> float:
    match = re.search(rf"^\| {set_name} \(`[^`]+`\) \| \d+ \| ([0-9.]+) \|", card, re.MULTILINE)
    assert match, f"no {set_name} row in the model card"
    return float(match.group(1))


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_expert_is_pinned_and_was_trained_by_the_shipped_recipe(name):
    entry = REPO / "experts" / "zoo" / name
    sha = sha256_file(entry / "model.safetensors")
    assert load_ensemble_spec(REPO / "configs" / "experts" / "zoo_small.yaml").by_name(name).sha256 == sha
    assert load_ensemble_spec(entry / "expert.yaml").experts[0].sha256 == sha
    card = (entry / "MODEL_CARD.md").read_text()
    assert f"sha256 `{sha}`" in card

    extra = read_expert_config(entry)["extra"]
    stages = [*extra["history"], extra]
    path = REPO / "configs" / "experts" / "train" / f"{ZOO[name]}.yaml"
    config = config_to_dict(load_expert_run_config(path))
    assert _recipe(stages[0]["run_config"]) == _recipe(config), "stage 1 is not the shipped training config"
    assert stages[0]["init_from"] is None and stages[0]["step"] == config["train"]["steps"]
    if name in TWO_STAGES:
        assert len(stages) == 2 and "2 stages, each fine-tuning" in card
        tuned = config_to_dict(load_expert_run_config(path, _fine_tune_overrides()))
        assert _recipe(stages[1]["run_config"]) == _recipe(tuned), "stage 2 is not scripts/reproduce_zoo.sh's"
        assert stages[1]["init_from"] is not None and stages[1]["step"] == tuned["train"]["steps"]
    else:
        assert len(stages) == 1


@pytest.mark.parametrize(("checkpoint", "experts"), [
    ("fusion_zoo_small", "zoo_small.yaml"),
    ("fusion_craft_ditn_span", "shared_real.yaml"),
])
def test_committed_fusions_were_trained_on_the_pinned_experts(checkpoint, experts):
    trained_on = read_extra(REPO / "checkpoints" / checkpoint)["experts"]
    pinned = load_ensemble_spec(REPO / "configs" / "experts" / experts).experts
    assert [(e["name"], e["sha256"]) for e in trained_on] == [(e.name, e.sha256) for e in pinned]


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_card_scores_measure_again(name, shared_dir, single_thread):
    """Each card's Set5 PSNR-Y, measured again through the expert loader on ../shared's Set5."""
    entry = REPO / "experts" / "zoo" / name
    expert = load_expert(load_ensemble_spec(entry / "expert.yaml").experts[0], ensemble_scale=4)
    results = evaluate(lambda x: expert.run(x)[0], load_val_sets([str(shared_dir / "data/val/Set5/HR")], 4),
                       scale=4, device=torch.device("cpu"))
    card = (entry / "MODEL_CARD.md").read_text()
    assert results["Set5"]["psnr"] == pytest.approx(_card_psnr(card, "Set5"), abs=6e-4)
    assert results["Set5"]["psnr"] > results["Set5"]["bicubic_psnr"] + 1.0
