"""Onboarding a team's model by YAML: every problem of an expert YAML in one pass, a mismatch message that says which
entry it loaded and which tensors differ, the probe at load (a wrong data range or colour order fails in one line
naming the likely cause), the smallest input side found by probing, and ``run-experts --check`` — on a toy team file,
and on real NTIRE 2024 models plugged in as a new user would (../shared)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, require_shared, run_main

from experts.check import check_experts
from experts.expert import load_expert
from experts.loading import ExpertLoadError
from experts.probe import DEFAULT_MIN_PSNR, PROBE_LR, probe_images, probe_min_side
from experts.spec import ExpertSpec, load_ensemble_spec, resolve_path
from pipeline.commands import run_experts
from pipeline.core.config import ConfigError, config_from_dict

pytestmark = pytest.mark.usefixtures("single_thread")

TEAM = """
import torch
from torch import nn

from pipeline.core.resize import bicubic_upscale


class TeamSR(nn.Module):
    # a [0, 1] model: bicubic x4 plus a small learned correction, clamped (as many team models clamp)
    def __init__(self, width=4, deploy=False, bgr_out=False, min_side=0):
        super().__init__()
        self.deploy, self.bgr_out, self.min_side = deploy, bgr_out, min_side
        if deploy:  # the re-parameterised form: one conv where training had two branches
            self.reparam = nn.Conv2d(3, width, 3, padding=1)
        else:
            self.conv3 = nn.Conv2d(3, width, 3, padding=1)
            self.conv1 = nn.Conv2d(3, width, 1)
        self.tail = nn.Conv2d(width, 48, 3, padding=1)
        self.up = nn.PixelShuffle(4)

    def forward(self, x):
        if min(x.shape[-2:]) < self.min_side:
            raise RuntimeError(f"the pooling needs {self.min_side} pixels")
        f = self.reparam(x) if self.deploy else self.conv3(x) + self.conv1(x)
        y = (bicubic_upscale(x.clamp(0, 1), 4) + self.up(self.tail(torch.relu(f)))).clamp(0, 1)
        return y.flip(1) if self.bgr_out else y
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> dict:
    """The team file and weights of its deploy form (under ``params_ema``, next to ``params``), small corrections."""
    root = tmp_path_factory.mktemp("team")
    (root / "team_arch.py").write_text(TEAM)
    ns: dict = {}
    exec(compile(TEAM, str(root / "team_arch.py"), "exec"), ns)
    torch.manual_seed(0)
    model = ns["TeamSR"](deploy=True)
    state = {k: 1e-3 * v for k, v in model.state_dict().items()}
    torch.save({"params": state, "params_ema": state}, root / "team.pth")
    return {"root": root, "code": root / "team_arch.py", "weights": root / "team.pth"}


def _entry(team: dict, name: str = "team", **code) -> dict:
    return {
        "name": name,
        "checkpoint": str(team["weights"]),
        "sha256": _sha(team["weights"]),
        "scale": 4,
        "trust_code": True,
        "code": {
            "file": str(team["code"]),
            "sha256": _sha(team["code"]),
            "class_name": "TeamSR",
            "kwargs": {"deploy": True},
            **code,
        },
    }


def _spec(entry: dict) -> ExpertSpec:
    return config_from_dict(ExpertSpec, entry)


# ---------------------------------------------------------------------------------------------------------------------
# the probe
# ---------------------------------------------------------------------------------------------------------------------
def test_the_probe_is_small_smooth_deterministic_and_coloured():
    probe = probe_images(4)
    probe_images.cache_clear()
    again = probe_images(4)
    assert probe.lr.shape == (1, 3, PROBE_LR, PROBE_LR) and probe.bicubic.shape == (1, 3, 4 * PROBE_LR, 4 * PROBE_LR)
    assert torch.equal(probe.lr, again.lr) and torch.equal(probe.bicubic, again.bicubic)
    assert 0.0 < float(probe.lr.min()) and float(probe.lr.max()) < 1.0
    assert float((probe.lr[:, 0] - probe.lr[:, 2]).abs().mean()) > 0.1  # channels differ: a swap shows
    assert float(probe.lr.diff(dim=-1).abs().max()) < 0.1  # smooth: no LR step above 0.1


def test_a_well_fed_model_passes_and_records_its_probe_psnr(team):
    expert = load_expert(_spec(_entry(team)))
    assert expert.probe_psnr > DEFAULT_MIN_PSNR + 10  # a bicubic upscale plus a correction of ~1e-3
    assert math.isfinite(expert.probe_psnr)


def test_a_wrong_data_range_fails_in_one_line_naming_the_cause(team):
    with pytest.raises(ExpertLoadError) as info:
        load_expert(_spec(_entry(team, data_range=255)))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(team["weights"])) and "fails the probe" in msg
    assert "likely cause: code.data_range — the model works on [0, 1], not [0, 255]" in msg
    assert "with data_range: 1 the probe scores" in msg


def test_a_model_returning_bgr_fails_naming_the_colour_order(team):
    entry = _entry(team)
    entry["code"]["kwargs"] = {"deploy": True, "bgr_out": True}
    with pytest.raises(ExpertLoadError, match="likely cause: colour order — the model returns BGR"):
        load_expert(_spec(entry))


def test_random_weights_fail_with_the_general_cause_and_the_check_can_be_turned_off(team, tmp_path):
    torch.save({k: torch.randn_like(v) for k, v in torch.load(team["weights"])["params"].items()}, tmp_path / "r.pth")
    entry = dict(_entry(team), checkpoint=str(tmp_path / "r.pth"), sha256=_sha(tmp_path / "r.pth"))
    with pytest.raises(ExpertLoadError) as info:
        load_expert(_spec(entry))
    msg = str(info.value)
    assert "weights that do not belong to this class" in msg and "the other data range does not help" in msg
    assert f"min_probe_psnr is {DEFAULT_MIN_PSNR:g} dB" in msg
    off = load_expert(_spec(dict(entry, min_probe_psnr=0)))  # the check off: loads, and the score is still measured
    assert off.probe_psnr < DEFAULT_MIN_PSNR


# ---------------------------------------------------------------------------------------------------------------------
# the smallest input side
# ---------------------------------------------------------------------------------------------------------------------
def test_probe_min_side_finds_the_side_from_which_every_larger_one_runs():
    assert probe_min_side(lambda s: s >= 15) == (15, list(range(1, 15)))
    assert probe_min_side(lambda s: s >= 15 and s != 17)[0] == 18  # a gap: the minimum lies above it
    assert probe_min_side(lambda s: True) == (1, [])
    assert probe_min_side(lambda s: s % 8 == 0 and s >= 16, multiple=8)[0] == 16
    assert probe_min_side(lambda s: False, limit=40) == (None, list(range(1, 41)))


def test_the_minimum_side_is_probed_when_the_yaml_does_not_give_it(team):
    entry = _entry(team)
    entry["code"]["kwargs"] = {"deploy": True, "min_side": 11}
    expert = load_expert(_spec(entry))
    assert expert.fingerprint.code["min_size"] == 11 and expert.size_requirements.minimum == 11
    sr, _ = expert.run(torch.rand(1, 3, 3, 5))  # smaller inputs are padded up to it and cropped back
    assert sr.shape == (1, 3, 12, 20)
    entry["code"]["min_size"] = 6  # a given minimum that does not run is refused
    with pytest.raises(ExpertLoadError, match="does not run on a 6x6 input although code.min_size is 6"):
        load_expert(_spec(entry))
    entry["code"]["min_size"] = 12
    assert load_expert(_spec(entry)).fingerprint.code["min_size"] == 12
    assert load_expert(_spec(_entry(team))).fingerprint.code["min_size"] == 0  # every side runs


# ---------------------------------------------------------------------------------------------------------------------
# every problem in one pass; the mismatch message
# ---------------------------------------------------------------------------------------------------------------------
def test_every_problem_of_an_expert_yaml_is_listed_in_one_pass(team, tmp_path):
    first = _entry(team, "a")
    del first["code"]["sha256"], first["code"]["class_name"]
    first["colour"] = "rgb"
    second = _entry(team, "b")
    second.update(scale="four", tile=-1)
    second["code"]["data_range"] = 2
    path = tmp_path / "experts.yaml"
    path.write_text(yaml.safe_dump({"scale": 4, "experts": [first, second]}))
    with pytest.raises(ConfigError) as info:
        load_ensemble_spec(path)
    msg = str(info.value)
    for needle in (
        "experts[0].colour",
        "missing required key 'experts[0].code.sha256'",
        "missing required key 'experts[0].code.class_name'",
        "experts[1].scale: expected int",
        "experts[1].tile: must be >= 0",
        "experts[1].code.data_range: expected one of [1, 255]",
    ):
        assert needle in msg, (needle, msg)
    assert "\n" not in msg
    # what needs the parsed spec, all at once too
    with pytest.raises(ConfigError) as info:
        _spec(dict(_entry(team), sha256=None, input="expert:team", architecture="Other"))
    msg = str(info.value)
    assert "needs sha256" in msg and "its own output" in msg and "differs from code.class_name" in msg


def test_loading_problems_before_the_import_come_together(team, tmp_path):
    entry = dict(_entry(team), trust_code=False, sha256="0" * 64)
    entry["code"]["file"] = str(tmp_path / "nowhere.py")
    with pytest.raises(ExpertLoadError) as info:
        load_expert(_spec(entry))
    msg = str(info.value)
    assert "trust_code: true" in msg and "nowhere.py: model code file not found" in msg
    assert "team.pth: sha256" in msg and "differs from the pinned 000" in msg and "\n" not in msg


def test_a_mismatch_says_which_entry_it_loaded_which_tensors_differ_and_the_constructor_arguments(team):
    entry = _entry(team)
    entry["code"]["kwargs"] = {}  # the training form (deploy=False) for weights of the deploy form
    with pytest.raises(ExpertLoadError) as info:
        load_expert(_spec(entry))
    msg = str(info.value)
    assert "loaded entry 'params_ema' (unwrapped by itself; the file also holds ['params'])" in msg
    assert "missing 4 (conv1.bias, conv1.weight, conv3.bias, conv3.weight)" in msg
    assert "unexpected 2 (reparam.bias, reparam.weight)" in msg
    assert "TeamSR's parameters: ['width=4', 'deploy=False', 'bgr_out=False', 'min_side=0']" in msg
    assert "set checkpoint_key" not in msg  # the loader had found the entry itself
    entry["code"]["kwargs"] = {"deploy": True, "width": 6}
    with pytest.raises(ExpertLoadError, match=r"reshaped 3 \(reparam.weight: file \(4, 3, 3, 3\), model"):
        load_expert(_spec(entry))
    entry = dict(_entry(team), checkpoint_key="params")
    assert load_expert(_spec(entry)).probe_psnr > DEFAULT_MIN_PSNR


# ---------------------------------------------------------------------------------------------------------------------
# run-experts --check
# ---------------------------------------------------------------------------------------------------------------------
def test_run_experts_check_reports_every_expert(team, tmp_path, capsys):
    good = _entry(team, "good")
    wrong_range = _entry(team, "wrong_range", data_range=255)
    bad_keys = _entry(team, "bad_keys")
    del bad_keys["code"]["sha256"]
    missing = dict(_entry(team, "missing"), checkpoint=str(tmp_path / "gone.pth"))
    path = tmp_path / "new.yaml"
    path.write_text(yaml.safe_dump({"scale": 4, "experts": [good, wrong_range, bad_keys, missing]}))
    assert run_main(run_experts.main, ["--config", str(path), "--check"]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line.split()[0]: line for line in lines[:-1]}
    assert set(rows) == {"good", "wrong_range", "bad_keys", "missing"}
    assert rows["good"].split()[1] == "ok" and "probe PSNR" in rows["good"]
    assert "min input side none (probed: add `min_size: 0` under code: to skip it)" in rows["good"]
    assert "FAILED" in rows["wrong_range"] and "code.data_range" in rows["wrong_range"]
    assert "FAILED" in rows["bad_keys"] and "missing required key 'experts[2].code.sha256'" in rows["bad_keys"]
    assert "FAILED" in rows["missing"] and "gone.pth: checkpoint file not found" in rows["missing"]
    assert lines[-1] == "1 of 4 experts pass"
    path.write_text(yaml.safe_dump({"scale": 4, "experts": [good]}))
    assert run_main(run_experts.main, ["--config", str(path), "--check"]) == 0
    checks, problems = check_experts(path)
    assert problems == [] and [c.name for c in checks] == ["good"] and checks[0].probe_psnr > 50
    with pytest.raises(SystemExit) as info:  # without --check: --input and --output are needed
        run_main(run_experts.main, ["--config", str(path)])
    assert info.value.code == 2 and "--input and --output are required (or --check)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# real models (../shared): three NTIRE 2024 teams' models plugged in by a new user's YAML; every real expert's probe
# ---------------------------------------------------------------------------------------------------------------------
ZOO = "zoo/ntire2024_esr"
POOL = REPO_ROOT / "configs" / "experts" / "esr_pool.yaml"
NEW_USER = ("rlfn", "ifadnet", "safmnpp")  # data range 255; deploy=True under params_ema; kwargs under params_ema


def _as_new_user(name: str) -> dict:
    """The pool's entry as a user writes it: no min_size, no hooks, the weights' entry found by the loader; its paths
    absolute (the pool's are relative to the pool's folder)."""
    entry = yaml.safe_load(POOL.read_text())["experts"]
    entry = next(e for e in entry if e["name"] == name)
    entry["checkpoint"] = str(resolve_path(entry["checkpoint"], POOL.parent))
    entry["code"]["file"] = str(resolve_path(entry["code"]["file"], POOL.parent))
    entry["code"].pop("min_size", None)
    entry.pop("hooks", None)
    entry.pop("checkpoint_key", None)
    return entry


def test_three_team_models_onboard_through_check(tmp_path, capsys):
    require_shared(f"{ZOO}/weights/team00_rlfn.pth", f"{ZOO}/weights/team33_IFADNet.pth")
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"scale": 4, "experts": [_as_new_user(n) for n in NEW_USER]}))
    assert run_main(run_experts.main, ["--config", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    pool = {e.name: e for e in load_ensemble_spec(POOL).experts}
    checks, _ = check_experts(path)
    for c in checks:
        assert c.ok and c.probe_psnr > DEFAULT_MIN_PSNR + 10, c
        assert f"min input side {pool[c.name].code.min_size} (probed" in c.text  # what was found by hand before
    assert out.count(" ok ") == 3 and "3 of 3 experts pass" in out


def test_the_real_mistakes_of_onboarding_fail_naming_their_cause():
    require_shared(f"{ZOO}/weights/team00_rlfn.pth", f"{ZOO}/weights/team33_IFADNet.pth")

    def load(entry: dict):
        return load_expert(config_from_dict(ExpertSpec, entry))

    rlfn = _as_new_user("rlfn")
    rlfn["code"]["data_range"] = 1  # a [0, 255] model fed [0, 1]
    with pytest.raises(ExpertLoadError, match=r"code.data_range — the model works on \[0, 255\], not \[0, 1\]"):
        load(rlfn)
    ifad = _as_new_user("ifadnet")
    ifad["code"]["kwargs"] = {}  # the fourth try of the issue: deploy=True is a constructor argument
    with pytest.raises(ExpertLoadError) as info:
        load(ifad)
    msg = str(info.value)
    assert "loaded entry 'params_ema' (unwrapped by itself" in msg and "deploy=False" in msg
    assert "set checkpoint_key" not in msg


@pytest.mark.slow  # loads all 17 real experts (CRAFT alone takes seconds)
def test_every_real_expert_passes_the_probe_with_a_margin():
    require_shared("weights/craft_x4.pth", f"{ZOO}/weights/team00_rlfn.pth")
    scores = {}
    for config in ("shared_real.yaml", "zoo_small.yaml", "esr_pool.yaml"):
        spec = load_ensemble_spec(REPO_ROOT / "configs" / "experts" / config)
        for e in spec.experts:
            scores[e.name] = load_expert(dataclasses.replace(e, hooks=()), ensemble_scale=spec.scale).probe_psnr
    assert len(scores) == 17
    low = min(scores, key=scores.get)
    assert scores[low] >= DEFAULT_MIN_PSNR + 10, scores  # measured: 52.4 (lkfn) .. 63.4 (ditn)
