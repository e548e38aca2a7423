"""Expert specs: the YAML presets parse, invalid specs are rejected, relative paths resolve against the YAML folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from experts.spec import (
    EnsembleSpec,
    ExpertSpec,
    input_source,
    load_ensemble_spec,
    resolve_code_file,
    resolve_expert_checkpoint,
    with_devices,
)
from pipeline.core.config import ConfigError, config_from_dict

CONFIGS = REPO_ROOT / "configs" / "experts"


def _spec(**changes) -> ExpertSpec:
    fields = {"name": "a", "checkpoint": "w.pth", "architecture": "SPAN", "scale": 4}
    fields.update(changes)
    return ExpertSpec(**fields)


def test_shared_real_preset_describes_the_three_shared_experts():
    spec = load_ensemble_spec(CONFIGS / "shared_real.yaml")
    assert spec.scale == 4
    assert [(e.name, e.architecture, e.scale, e.input) for e in spec.experts] == [
        ("craft", "CRAFT", 4, "lr"),
        ("ditn", "DITN", 4, "lr"),
        ("span", "SPAN", 4, "lr"),
    ]
    for e in spec.experts:
        assert resolve_expert_checkpoint(e) == REPO_ROOT.parent / "shared" / "weights" / Path(e.checkpoint).name
        assert e.checkpoint == str(REPO_ROOT.parent / "shared" / "weights" / Path(e.checkpoint).name)  # made absolute


def test_hat_dat_nafnet_preset():
    spec = load_ensemble_spec(CONFIGS / "hat_dat_nafnet.yaml")
    hat, dat, naf = spec.experts
    assert (hat.architecture, hat.checkpoint_key, hat.device) == ("HAT", "params_ema", "cuda:0")
    assert hat.expect["embed_dim"] == 180 and hat.expect["window_size"] == 16
    assert list(hat.expect["depths"]) == [6] * 12
    assert dat.architecture == "DAT" and list(dat.expect["split_size"]) == [8, 32] and dat.device == "cuda:1"
    assert (naf.architecture, naf.scale, naf.input, naf.device) == ("NAFNet", 1, "bicubic", "cuda:1")


def test_relative_paths_resolve_against_the_yamls_folder_not_cwd(tmp_path, monkeypatch):
    """A YAML in one folder naming its weights and code by relative paths means the same from any third folder."""
    yaml_dir = tmp_path / "team" / "configs"
    yaml_dir.mkdir(parents=True)
    code = {"file": "../models/net.py", "sha256": "0" * 64, "class_name": "Net"}
    (yaml_dir / "mine.yaml").write_text(
        yaml.safe_dump(
            {
                "experts": [
                    {"name": "a", "checkpoint": "mymodels/a.safetensors", "architecture": "SPAN", "scale": 4},
                    {"name": "b", "checkpoint": str(tmp_path / "abs.pth"), "architecture": "SPAN", "scale": 4},
                    {
                        "name": "c",
                        "checkpoint": "../w/c.pth",
                        "sha256": "1" * 64,
                        "scale": 4,
                        "trust_code": True,
                        "code": code,
                    },
                ]
            }
        )
    )
    third = tmp_path / "elsewhere"
    third.mkdir()
    monkeypatch.chdir(third)
    a, b, c = load_ensemble_spec("../team/configs/mine.yaml").experts
    assert resolve_expert_checkpoint(a) == yaml_dir / "mymodels" / "a.safetensors"
    assert resolve_expert_checkpoint(b) == tmp_path / "abs.pth"
    assert resolve_expert_checkpoint(c) == tmp_path / "team" / "w" / "c.pth"
    assert resolve_code_file(c) == tmp_path / "team" / "models" / "net.py"
    # a spec built in code keeps Python's meaning of a relative path: the current folder (or an explicit base)
    assert resolve_expert_checkpoint(_spec(checkpoint="x.pth")) == third / "x.pth"
    assert resolve_expert_checkpoint(_spec(checkpoint="x.pth"), tmp_path) == tmp_path / "x.pth"


def test_unknown_key_and_wrong_type_are_errors(tmp_path):
    good = {"name": "a", "checkpoint": "w.pth", "architecture": "SPAN", "scale": 4}
    with pytest.raises(ConfigError, match="hook_layer"):
        config_from_dict(ExpertSpec, {**good, "hook_layer": "x"})
    with pytest.raises(ConfigError, match="scale"):
        config_from_dict(ExpertSpec, {**good, "scale": "4"})
    with pytest.raises(ConfigError, match="precision"):
        config_from_dict(ExpertSpec, {**good, "precision": "fp8"})
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"experts": [good], "gather": "cpu"}))
    with pytest.raises(ConfigError, match="gather"):
        load_ensemble_spec(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"name": "a b"}, "name must match"),
        ({"input": "nearest"}, "input must be"),
        ({"input": "expert:a"}, "its own output"),
        ({"tile": 16, "tile_overlap": 16}, "tile_overlap"),
        ({"tile": -1}, "tile"),
        ({"sha256": "abc"}, "sha256"),
        ({"hooks": ("",)}, "non-empty"),
    ],
)
def test_invalid_expert_specs(changes, message):
    with pytest.raises(ConfigError, match=message):
        _spec(**changes)


def test_ensemble_level_checks():
    with pytest.raises(ConfigError, match="unique"):
        EnsembleSpec(experts=(_spec(), _spec()))
    with pytest.raises(ConfigError, match="names no expert"):
        EnsembleSpec(experts=(_spec(name="r", scale=1, input="expert:nope"),))
    with pytest.raises(ConfigError, match="x4 model"):
        EnsembleSpec(experts=(_spec(scale=1),))
    with pytest.raises(ConfigError, match="must be x1"):
        EnsembleSpec(experts=(_spec(input="bicubic"),))
    ok = EnsembleSpec(experts=(_spec(name="sr"), _spec(name="ref", scale=1, input="expert:sr")))
    assert input_source(ok.experts[1]) == "sr" and input_source(ok.experts[0]) is None
    assert ok.by_name("ref").input == "expert:sr"


def test_device_map():
    spec = load_ensemble_spec(CONFIGS / "hat_dat_nafnet.yaml")
    cpu = with_devices(spec, {"hat": "cpu", "nafnet": "cpu"})
    assert [e.device for e in cpu.experts] == ["cpu", "cuda:1", "cpu"]
    with pytest.raises(ConfigError, match="unknown expert"):
        with_devices(spec, {"hta": "cpu"})
