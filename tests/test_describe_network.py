"""The submission's readme.txt describes the network that ran: its enabled parts, never the ones switched off."""

from __future__ import annotations

import json

import pytest
from conftest import REPO_ROOT

from pipeline.core.config import config_from_dict
from pipeline.model.describe import describe_network
from pipeline.model.fusion_config import PHASE_SWITCHES, FusionConfig, load_fusion_config

WORDS = {
    "freq": "frequency decomposition",
    "cross_band": "cross-band attention",
    "cross_expert": "cross-expert attention",
    "fourier_unit": "Fourier unit",
    "hierarchical": "hierarchical",
    "gating": "per-pixel gating",
    "set_gate": "set gate",
    "refine": "refinement CNN",
    "lr_residual": "LR back-projection",
    "edge": "edge enhancement",
    "hessian": "Hessian",
}


def _committed(name: str) -> FusionConfig:
    payload = json.loads((REPO_ROOT / "checkpoints" / name / "config.json").read_text())
    return config_from_dict(FusionConfig, payload["config"])


@pytest.mark.parametrize("name", ["fusion_esr_pool", "fusion_craft_ditn_span", "fusion_zoo_small"])
def test_each_committed_checkpoint_is_described_by_its_enabled_parts(name):
    cfg = _committed(name)
    text = describe_network(cfg, params=57_972)
    assert set(WORDS) == set(PHASE_SWITCHES)
    for phase, words in WORDS.items():
        assert (words in text) == getattr(cfg, phase).enabled, (phase, text)
    assert text.startswith("a 58K-parameter fusion network on the experts' SR images")
    assert ("hooked features" in text) == cfg.inputs.features


def test_the_esr_pool_checkpoint_is_a_set_gate_without_frequency_or_attention():
    text = describe_network(_committed("fusion_esr_pool"))
    assert "set gate" in text and "11 experts" in text and "away from a fixed blend" in text
    assert "LR-consistency signals" in text
    for off in ("frequency decomposition", "cross-expert attention", "per-pixel gating"):
        assert off not in text  # what the readme claimed before


def test_gating_start_and_the_plain_mean():
    cfg = load_fusion_config("configs/fusion_tiny.yaml")
    assert "per-pixel gating of the 3 experts (starting from their mean)" in describe_network(cfg)
    off = load_fusion_config(
        "configs/fusion_tiny.yaml", [f"model.{p}.enabled=false" for p in PHASE_SWITCHES if p != "set_gate"]
    )
    assert describe_network(off) == "a fusion network on the experts' SR images: the plain mean of the 3 experts"
