"""pipeline/model/io.py: model.safetensors + config.json, one-call rebuild, strict loading."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.model.fusion_config import FusionConfig, load_fusion_config
from pipeline.model.fusion_net import FusionNet
from pipeline.model.io import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_pretrained, read_extra, save_pretrained

TINY = Path(__file__).resolve().parents[1] / "configs" / "fusion_tiny.yaml"


pytestmark = pytest.mark.usefixtures("single_thread")


def trained_like_model(**overrides: object) -> FusionNet:
    cfg = dataclasses.replace(load_fusion_config(TINY).with_feat_channels((5, 7)), **overrides)
    model = FusionNet(config=cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # no zero-initialised layer stays zero
    return model.eval()


def run(model: FusionNet) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    lr = torch.rand(1, 3, 12, 10, generator=g)
    srs = torch.rand(1, 2, 3, 48, 40, generator=g)
    feats = [torch.randn(1, 5, 12, 10, generator=g), torch.randn(1, 7, 12, 10, generator=g)]
    with torch.no_grad():
        return model(lr, srs, feats).sr


@pytest.mark.parametrize("start_expert", [None, 1])
def test_round_trip_gives_identical_outputs(tmp_path: Path, start_expert: int | None) -> None:
    model = trained_like_model(start_expert=start_expert)
    out = save_pretrained(model, tmp_path / "ckpt", extra={"step": 12, "psnr": 28.5, "experts": ["a", "b"]})
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded = load_pretrained(out)
    assert loaded.config == model.config and not loaded.training
    assert torch.equal(run(loaded), run(model))
    assert read_extra(out) == {"step": 12, "psnr": 28.5, "experts": ["a", "b"]}
    assert json.loads((out / CONFIG_NAME).read_text())["config"]["start_expert"] == start_expert


def test_strict_loading_rejects_missing_extra_and_misshaped_tensors(tmp_path: Path) -> None:
    ckpt = save_pretrained(trained_like_model(), tmp_path / "ckpt")
    weights = ckpt / WEIGHTS_NAME
    original = load_file(str(weights))

    state = dict(original)
    state.pop("edge.gain_head.bias")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="missing \\['edge.gain_head.bias'\\]"):
        load_pretrained(ckpt)

    state = dict(original, **{"edge.extra_tensor": torch.zeros(2)})
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="unexpected \\['edge.extra_tensor'\\]"):
        load_pretrained(ckpt)

    state = dict(original, **{"lr_residual.gain": torch.zeros(1, 4, 1, 1)})
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="lr_residual.gain"):
        load_pretrained(ckpt)

    save_file(original, str(weights))  # a config describing a different model does not load these weights
    payload = json.loads((ckpt / CONFIG_NAME).read_text())
    payload["config"]["width"] = 24
    (ckpt / CONFIG_NAME).write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_pretrained(ckpt)


def test_missing_or_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="config.json"):
        load_pretrained(tmp_path)
    ckpt = save_pretrained(trained_like_model(), tmp_path / "ckpt")
    (ckpt / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_pretrained(ckpt)
    (ckpt / CONFIG_NAME).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a 'sr-fusion-net' checkpoint"):
        load_pretrained(ckpt)


def test_extra_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_pretrained(trained_like_model(), tmp_path / "ckpt", extra={"tensor": torch.zeros(1)})
    assert not (tmp_path / "ckpt" / CONFIG_NAME).exists()


def test_a_checkpoint_saved_before_the_input_switches_loads_as_it_was_trained(tmp_path: Path) -> None:
    """config.json without inputs.features / inputs.sr_dtype (every checkpoint saved before they existed, e.g. the
    committed ones) means features read and float SR — not today's defaults (SR only, 8-bit)."""
    cfg = load_fusion_config(TINY).with_feat_channels((5, 7))
    legacy_cfg = dataclasses.replace(cfg, inputs=dataclasses.replace(cfg.inputs, features=True, sr_dtype="float16"))
    ckpt = save_pretrained(FusionNet(config=legacy_cfg), tmp_path / "old")
    payload = json.loads((ckpt / CONFIG_NAME).read_text())
    del payload["config"]["inputs"]["features"], payload["config"]["inputs"]["sr_dtype"]
    (ckpt / CONFIG_NAME).write_text(json.dumps(payload))
    model = load_pretrained(ckpt)
    assert model.config.inputs.features is True and model.config.inputs.sr_dtype == "float16"
    assert FusionConfig().inputs.features is False and FusionConfig().inputs.sr_dtype == "uint8"
