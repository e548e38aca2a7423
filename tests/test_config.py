"""Config system: YAML + frozen dataclasses + dotted overrides, strict about keys and types."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from pipeline.core.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_value,
    save_config,
)


@dataclass(frozen=True)
class ModelCfg:
    width: int = 32
    act: Literal["gelu", "relu"] = "gelu"
    depths: tuple[int, ...] = (2, 2)
    dropout: float = 0.0
    betas: tuple[float, int] = (0.9, 2)


@dataclass(frozen=True)
class TrainCfg:
    lr: float = 1e-3
    name: str | None = None
    ema: bool = True


@dataclass(frozen=True)
class RootCfg:
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    seed: int = 0


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  width: 48\ntrain:\n  lr: 2e-4\n")
    cfg = load_config(RootCfg, path, ["train.lr=1e-4", "model.depths=[3, 4, 5]", "seed=7", "train.name=run1"])
    assert cfg.model.width == 48
    assert cfg.model.depths == (3, 4, 5)
    assert load_config(RootCfg, None, ["model.betas=[0.5, 3]"]).model.betas == (0.5, 3)
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.name == "run1" and cfg.seed == 7
    assert cfg.train.ema is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]


def test_scientific_notation_in_yaml_is_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 2e-4\nmodel:\n  dropout: 1E-1\n")
    cfg = load_config(RootCfg, path)
    assert cfg.train.lr == pytest.approx(2e-4)
    assert cfg.model.dropout == pytest.approx(0.1)
    # plain PyYAML reads these as strings: the project loader must not
    assert isinstance(yaml.safe_load("a: 2e-4")["a"], str)
    assert parse_value("2e-4") == pytest.approx(2e-4)
    assert parse_value("-3.5E+2") == pytest.approx(-350.0)
    assert parse_value("10") == 10 and isinstance(parse_value("10"), int)
    assert parse_value("null") is None
    assert parse_value("[1, 2]") == [1, 2]


def test_int_is_accepted_for_float():
    cfg = config_from_dict(RootCfg, {"train": {"lr": 1}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lrr=1e-4"], "unknown key(s) 'train.lrr' in section 'train'; valid keys: ema, lr, name"),
        (["modle.width=3"], "valid keys: model, seed, train"),
        (["model.width=1.5"], "model.width: expected int, got 1.5"),
        (["model.width=true"], "model.width: expected int, got True"),
        (["train.lr=fast"], "train.lr: expected float, got 'fast'"),
        (["train.ema=1"], "train.ema: expected bool, got 1"),
        (["model.act=silu"], "model.act: expected one of ['gelu', 'relu'], got 'silu'"),
        (["model.depths=[1, x]"], "model.depths[1]: expected int"),
        (["model=3"], "model: expected a mapping"),
        (["model.betas=[0.5]"], "model.betas: expected 2 items"),
        (["model.betas=[0.5, 0.5]"], "model.betas[1]: expected int, got 0.5"),
        (["model.width"], "not of the form dotted.key=value"),
        (["model..width=3"], "empty key"),
        (["seed.x=3"], "seed: expected int, got {'x': 3}"),
    ],
)
def test_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(RootCfg, None, overrides)
    assert message in str(info.value)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(RootCfg, path)


def test_missing_file_and_bad_top_level(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(RootCfg, tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(RootCfg, path)


def test_no_code_execution_in_values():
    # a YAML python tag must not construct objects
    with pytest.raises(ConfigError):
        parse_value("!!python/object/apply:os.system ['echo hacked']")
    assert parse_value("__import__('os').system('x')") == "__import__('os').system('x')"


def test_overrides_do_not_mutate_input():
    data = {"train": {"lr": 0.1}}
    out = apply_overrides(data, ["train.lr=0.2"])
    assert data == {"train": {"lr": 0.1}} and out == {"train": {"lr": 0.2}}


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(RootCfg, None, ["model.width=64", "train.lr=3e-4", "model.depths=[1,2,3]"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(RootCfg, tmp_path / "run" / "config.yaml")
    assert again == cfg
    assert config_to_dict(cfg)["model"]["depths"] == [1, 2, 3]
    assert not list((tmp_path / "run").glob(".*tmp*"))  # no temp file left behind


def test_read_format_json_names_the_file_and_the_problem(tmp_path):
    from pipeline.core.config import read_format_json

    p = tmp_path / "config.json"
    with pytest.raises(ConfigError, match=r"config\.json: fusion checkpoint not found"):
        read_format_json(p, fmt="sr-fusion", version=1, what="fusion checkpoint")
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_format_json(p, fmt="sr-fusion", version=1, what="fusion checkpoint")
    p.write_text('["a list"]')
    with pytest.raises(ConfigError, match=r"not a 'sr-fusion' fusion checkpoint \(format 'list'\)"):
        read_format_json(p, fmt="sr-fusion", version=1, what="fusion checkpoint")
    p.write_text('{"format": "sr-fusion", "format_version": 2}')
    with pytest.raises(ConfigError, match="format_version 2, this code reads 1"):
        read_format_json(p, fmt="sr-fusion", version=1, what="fusion checkpoint")
    p.write_text('{"format": "sr-fusion", "format_version": 1, "x": 3}')
    assert read_format_json(p, fmt="sr-fusion", version=1, what="fusion checkpoint")["x"] == 3
