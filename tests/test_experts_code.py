"""Experts defined by a team's Python file (experts/code.py): opt-in, pins, strict loading, one-line errors, data
range, padding, hooks, ×8 — and the eleven real NTIRE 2024 ESR models reproducing their golden PSNR."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, require_shared

from experts.ensemble import ExpertEnsemble
from experts.expert import load_expert
from experts.loading import ExpertLoadError, sha256_file
from experts.spec import CodeSpec, ExpertSpec, load_ensemble_spec
from pipeline.core.config import ConfigError, config_from_dict

TINY = """
import os
import torch
import torch.nn.functional as F
from torch import nn

print("tiny model file imported")  # a team file that prints: must not reach stdout
if os.environ.get("TINY_MARK"):
    open(os.environ["TINY_MARK"], "w").write("imported")


class TinySR(nn.Module):
    def __init__(self, width=8, upscale=4, multiple=1, clamp=False):
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Conv2d(width, width, 3, padding=1)
        self.tail = nn.Conv2d(width, 3 * upscale * upscale, 3, padding=1)
        self.up = nn.PixelShuffle(upscale)
        self.upscale, self.multiple, self.clamp = upscale, multiple, clamp

    def forward(self, x):
        assert x.shape[-1] % self.multiple == 0 and x.shape[-2] % self.multiple == 0, "needs a multiple"
        f = self.head(x)
        f = self.body(torch.relu(f)) + f
        y = self.up(self.tail(f)) + F.interpolate(x, scale_factor=self.upscale, mode="nearest")
        return y.clamp(max=1.0) if self.clamp else y


class NotAModel:
    pass
"""


def _write_model(tmp: Path, *, kwargs: dict | None = None, nested: str | None = None, tag: str = "") -> dict:
    """TinySR's file + weights under ``tmp``; returns the fields of a code expert spec."""
    code = tmp / "tiny_arch.py"
    code.write_text(TINY + f"# {tag}\n")  # the tag makes each test's file (and module) distinct
    ns: dict = {}
    exec(compile(TINY, str(code), "exec"), ns)  # the test builds the reference weights from the same source
    torch.manual_seed(0)
    model = ns["TinySR"](**(kwargs or {}))
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()}
    weights = tmp / "tiny.pth"
    torch.save({nested: state} if nested else state, weights)
    return {
        "name": "tiny",
        "checkpoint": str(weights),
        "sha256": sha256_file(weights),
        "scale": 4,
        "trust_code": True,
        "min_probe_psnr": 0,  # seeded random weights (the probe is tested in tests/test_onboarding.py)
        "checkpoint_key": nested,
        "code": {
            "file": str(code),
            "sha256": sha256_file(code),
            "class_name": "TinySR",
            "kwargs": dict(kwargs or {}),
        },
    }


def _spec(fields: dict, **code_changes) -> ExpertSpec:
    data = dict(fields)
    data["code"] = {**fields["code"], **code_changes}
    return config_from_dict(ExpertSpec, data)


def test_loads_runs_and_fingerprints(tmp_path, capsys):
    fields = _write_model(tmp_path, kwargs={"width": 6}, nested="params_ema", tag="ok")
    capsys.readouterr()  # the test's own exec of the source printed
    expert = load_expert(_spec(fields))
    assert "tiny model file imported" not in capsys.readouterr().out  # the file's print goes to stderr
    lr = torch.rand(2, 3, 9, 11)
    sr, feat = expert.run(lr)
    assert sr.shape == (2, 3, 36, 44) and feat.shape == (2, 0, 9, 11)  # no hooks: no features
    assert float(sr.min()) >= 0 and float(sr.max()) <= 1
    fp = expert.fingerprint.to_dict()
    assert fp["architecture"] == "TinySR" and fp["tags"] == ["code"] and fp["feature_channels"] == 0
    assert fp["code"]["sha256"] == fields["code"]["sha256"] and fp["code"]["kwargs"] == {"width": 6}
    assert fp["hyperparameters"] == {"width": 6}
    json.dumps(fp)  # the cache stores it as JSON


def test_hooks_data_range_padding_and_x8(tmp_path):
    fields = _write_model(tmp_path, kwargs={"multiple": 8, "clamp": True}, tag="range")
    spec = _spec(fields, pad_multiple=8, data_range=255, kwargs={"multiple": 8, "clamp": True})
    spec = dataclasses.replace(spec, hooks=("body",))
    ens = ExpertEnsemble.from_spec(
        dataclasses.replace(load_ensemble_spec_for(spec), experts=(spec,)), gather_device="cpu"
    )
    lr = torch.full((1, 3, 13, 10), 0.5)  # 13x10 is padded to 16x16 for the model, outputs cropped back
    srs, feats = ens(lr)
    assert srs.shape == (1, 1, 3, 52, 40) and feats[0].shape == (1, 8, 13, 10)
    # fed 0.5 * 255 and clamped at 1.0 by the model, then divided by 255: the data range is applied both ways
    assert torch.allclose(srs, torch.full_like(srs, 1 / 255), atol=1e-6)
    x8 = ens.self_ensemble(lr).srs
    assert x8.shape == srs.shape


def load_ensemble_spec_for(spec: ExpertSpec):
    from experts.spec import EnsembleSpec

    return EnsembleSpec(experts=(spec,), scale=4)


def test_without_opt_in_the_file_is_never_imported(tmp_path, monkeypatch):
    mark = tmp_path / "imported.txt"
    monkeypatch.setenv("TINY_MARK", str(mark))
    fields = _write_model(tmp_path, tag="optin")
    mark.unlink()  # the test's own exec wrote it
    spec = dataclasses.replace(_spec(fields), trust_code=False)
    with pytest.raises(ExpertLoadError) as err:
        load_expert(spec)
    msg = str(err.value)
    assert "trust_code: true" in msg and "tiny_arch.py" in msg and "\n" not in msg
    assert not mark.exists()


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 600, msg
    for n in needles:
        assert n in msg, msg


def test_every_mistake_is_one_line_naming_the_file(tmp_path):
    fields = _write_model(tmp_path, tag="mistakes")
    code = fields["code"]["file"]
    with pytest.raises(ExpertLoadError) as e:  # missing code file
        load_expert(_spec(fields, file=str(tmp_path / "nope.py")))
    _one_line(e, "nope.py", "not found")
    with pytest.raises(ExpertLoadError) as e:  # missing class
        load_expert(_spec(fields, class_name="Missing"))
    _one_line(e, code, "'Missing'", "TinySR")
    with pytest.raises(ExpertLoadError) as e:  # not a module class
        load_expert(_spec(fields, class_name="NotAModel"))
    _one_line(e, code, "NotAModel")
    with pytest.raises(ExpertLoadError) as e:  # bad kwargs
        load_expert(_spec(fields, kwargs={"depth": 3}))
    _one_line(e, code, "depth", "width")
    with pytest.raises(ExpertLoadError) as e:  # reshaped tensors (another width)
        load_expert(_spec(fields, kwargs={"width": 4}))
    _one_line(e, fields["checkpoint"], "reshaped")
    with pytest.raises(ExpertLoadError) as e:  # code pin
        load_expert(_spec(fields, sha256="0" * 64))
    _one_line(e, code, "sha256")
    with pytest.raises(ExpertLoadError) as e:  # wrong scale
        load_expert(dataclasses.replace(_spec(fields), scale=2))
    _one_line(e, fields["checkpoint"], "x2")
    # missing and unexpected keys: weights nested under a key the spec does not name / a missing checkpoint_key
    (tmp_path / "n").mkdir()
    nested = _write_model(tmp_path / "n", nested="params", tag="n")
    with pytest.raises(ExpertLoadError) as e:
        load_expert(dataclasses.replace(_spec(nested), checkpoint_key="params_ema"))
    _one_line(e, nested["checkpoint"], "params_ema")
    state = torch.load(nested["checkpoint"], weights_only=True)["params"]
    state["extra.weight"] = torch.zeros(1)
    del state["tail.bias"]
    bad = tmp_path / "n" / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ExpertLoadError) as e:
        load_expert(
            dataclasses.replace(_spec(nested), checkpoint=str(bad), sha256=sha256_file(bad), checkpoint_key=None)
        )
    _one_line(e, str(bad), "missing 1 (tail.bias)", "unexpected 1 (extra.weight)")
    with pytest.raises(ExpertLoadError) as e:  # weights pin
        load_expert(dataclasses.replace(_spec(fields), sha256="1" * 64))
    _one_line(e, fields["checkpoint"], "sha256")


def test_a_file_that_fails_on_import_is_one_line(tmp_path):
    fields = _write_model(tmp_path, tag="importfail")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere_xyz\n")
    with pytest.raises(ExpertLoadError) as e:
        load_expert(_spec(fields, file=str(broken), sha256=sha256_file(broken)))
    _one_line(e, str(broken), "ModuleNotFoundError", "not_a_module_anywhere_xyz")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"trust_code": True, "code": None, "architecture": "SPAN"}, "trust_code is only meaningful"),
        ({"sha256": None}, "needs sha256"),
        ({"architecture": "Other"}, "differs from code.class_name"),
        ({"expect": {"a": 1}}, "kwargs instead"),
    ],
)
def test_spec_checks(tmp_path, changes, message):
    fields = _write_model(tmp_path, tag="spec")
    data = {**fields, **changes}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(ExpertSpec, data)


def test_code_spec_requires_a_pin_and_an_identifier():
    with pytest.raises(ConfigError, match="sha256"):
        CodeSpec(file="a.py", sha256="abc", class_name="A")
    with pytest.raises(ConfigError, match="identifier"):
        CodeSpec(file="a.py", sha256="0" * 64, class_name="os.system")
    with pytest.raises(ConfigError, match="data_range"):
        config_from_dict(CodeSpec, {"file": "a.py", "sha256": "0" * 64, "class_name": "A", "data_range": 2})


# ---------------------------------------------------------------------------------------------------------------------
# the eleven real NTIRE 2024 ESR experts
# ---------------------------------------------------------------------------------------------------------------------
POOL = REPO_ROOT / "configs" / "experts" / "esr_pool.yaml"


def test_pool_yaml_pins_every_file_of_the_zoo():
    shared = require_shared("zoo/ntire2024_esr", "golden/esr_pool_reference.json")
    spec = load_ensemble_spec(POOL)
    golden = json.loads((shared / "golden" / "esr_pool_reference.json").read_text())["models"]
    assert len(spec.experts) == len(golden) == 11
    for e, (key, ref) in zip(spec.experts, golden.items()):
        assert e.trust_code and e.code is not None
        assert (e.code.class_name, dict(e.code.kwargs), e.checkpoint_key) == (
            ref["class"],
            ref["kwargs"],
            ref["state_key"],
        )
        assert e.code.data_range == ref["data_range"]
        assert e.code.file.endswith(ref["file"]) and e.checkpoint.endswith(ref["weights"])
        assert e.name == key.split("_", 1)[1].lower()


@pytest.mark.slow
@pytest.mark.parametrize("set_name", ["Set5", "Set14"])
def test_pool_reproduces_golden_psnr(set_name):
    """Every model's per-image PSNR-Y on the official LR within 0.01 dB of ../shared/golden (8-bit SR, border 4)."""
    from pipeline.core.imageio import list_images, quantize_8bit, read_image, strip_scale_suffix
    from pipeline.core.metrics import crop_to_match, psnr_y

    shared = require_shared("zoo/ntire2024_esr", f"data/val/{set_name}", "golden/esr_pool_reference.json")
    golden = json.loads((shared / "golden" / "esr_pool_reference.json").read_text())["models"]
    ens = ExpertEnsemble.from_yaml(POOL)
    refs = {key.split("_", 1)[1].lower(): ref["sets"][set_name]["images"] for key, ref in golden.items()}
    worst = 0.0
    files = list_images(shared / "data" / "val" / set_name / "LR_bicubic" / "X4")
    for lr_path in files:
        stem = strip_scale_suffix(lr_path.stem, 4)
        hr = read_image(shared / "data" / "val" / set_name / "HR" / f"{stem}.png")
        srs = ens(read_image(lr_path)).srs
        for i, name in enumerate(ens.names):
            sr = quantize_8bit(srs[:, i])
            got = float(psnr_y(sr, crop_to_match(hr, sr, scale=4), crop_border=4))
            worst = max(worst, abs(got - refs[name][stem]))
    assert len(files) == (5 if set_name == "Set5" else 14)
    assert worst < 0.01


def test_pool_yaml_round_trips_through_the_loader(tmp_path):
    spec = load_ensemble_spec(POOL)
    dumped = tmp_path / "pool.yaml"
    from pipeline.core.config import save_config

    save_config(spec, dumped)
    assert load_ensemble_spec(dumped) == spec
    assert yaml.safe_load(dumped.read_text())["experts"][0]["trust_code"] is True
