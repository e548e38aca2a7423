"""configs/fusion*.yaml and FusionConfig: strict loading, overrides, parameter budget, real experts' widths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pipeline.core.config import ConfigError, config_from_dict, config_to_dict
from pipeline.model.fusion_config import FusionConfig, load_fusion_config
from pipeline.model.fusion_net import FusionNet

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "configs" / "fusion.yaml"
TINY = REPO / "configs" / "fusion_tiny.yaml"


pytestmark = pytest.mark.usefixtures("single_thread")


def n_params(cfg: FusionConfig) -> int:
    return sum(p.numel() for p in FusionNet(config=cfg).parameters() if p.requires_grad)


def test_yaml_default_equals_dataclass_default_and_is_about_900k() -> None:
    cfg = load_fusion_config(DEFAULT)
    assert cfg == FusionConfig()
    assert cfg.num_experts == 3
    assert 850_000 <= n_params(cfg) <= 950_000


def test_tiny_config_is_small_and_complete() -> None:
    cfg = load_fusion_config(TINY)
    assert n_params(cfg) < 60_000
    assert all(getattr(cfg, name).enabled for name in ("freq", "cross_band", "cross_expert", "gating", "edge"))


def test_overrides_and_strictness(tmp_path: Path) -> None:
    cfg = load_fusion_config(DEFAULT, ["model.freq.enabled=false", "model.gating.temperature=0.5"])
    assert not cfg.freq.enabled and cfg.gating.temperature == 0.5
    with pytest.raises(ConfigError, match="unknown key"):
        load_fusion_config(DEFAULT, ["model.freq.enabeld=false"])
    with pytest.raises(ConfigError, match="expected bool"):
        load_fusion_config(DEFAULT, ["model.edge.enabled=3"])
    (tmp_path / "bad.yaml").write_text("train:\n  lr: 1.0\n")
    with pytest.raises(ConfigError, match="no 'model' section"):
        load_fusion_config(tmp_path / "bad.yaml")
    assert config_from_dict(FusionConfig, config_to_dict(cfg)) == cfg  # round trip through plain data


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.start_expert=3"], "start_expert"),
        (["model.cross_band.heads=3"], "must divide token_channels"),
        (["model.inputs.feat_channels=[]"], "feat_channels"),
        (["model.freq.dct_split=[6.0, 2.0]"], "dct_split"),
        (["model.edge.enabled=false", "model.refine.enabled=false"], "hessian"),
    ],
)
def test_invalid_configs_are_rejected(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FusionNet(config=load_fusion_config(TINY, overrides))


def test_with_feat_channels() -> None:
    cfg = FusionConfig().with_feat_channels([32, 64])
    assert cfg.inputs.feat_channels == (32, 64) and cfg.num_experts == 2
    assert dataclasses.replace(cfg) == cfg


def test_default_feat_channels_match_the_real_experts(shared_dir: Path) -> None:
    """The widths in configs/fusion.yaml are the LR feature each real expert feeds to its (pixel-shuffle)
    upsampler: the input channels of the upsampler's conv. Read from the state dicts (importing spandrel costs
    ~15 s; spandrel builds these same modules from these tensors)."""
    upsampler_conv = {
        "craft_x4.pth": "upsample.0.weight",
        "ditn_x4.pth": "upsample.0.weight",
        "span_ch28_x4.pth": "upsampler.0.weight",
    }
    widths = []
    for name, key in upsampler_conv.items():
        state = torch.load(shared_dir / "weights" / name, map_location="cpu", weights_only=True)
        state = state.get("params", state)  # CRAFT nests its tensors under "params"
        widths.append(state[key].shape[1])  # conv weight (out, in, k, k)
    assert tuple(widths) == load_fusion_config(DEFAULT).inputs.feat_channels == (48, 60, 28)
