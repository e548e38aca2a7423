"""Strict, safe loading: wrong or incomplete checkpoints never become an expert with random weights."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file
from tiny_experts import save_tiny_checkpoint, tiny_model

from experts.expert import load_expert
from experts.hooks import HookError
from experts.loading import ExpertLoadError, read_state_dict, sha256_file
from experts.spec import ExpertSpec

REAL = {"craft_x4.pth": "CRAFT", "ditn_x4.pth": "DITN", "span_ch28_x4.pth": "SPAN"}


def _spec(path, arch, scale=4, **changes) -> ExpertSpec:
    changes.setdefault("min_probe_psnr", 0.0)  # seeded random weights: the probe is off (experts/probe.py)
    return ExpertSpec(name="e", checkpoint=str(path), architecture=arch, scale=scale, **changes)


def _damaged_variants(state: dict[str, torch.Tensor]):
    """(label, state dict) with one tensor missing, one mis-shaped, one extra."""
    weight = next(k for k, v in state.items() if k.endswith("weight") and v.ndim == 4 and k.count(".") >= 2)
    missing = {k: v for k, v in state.items() if k != weight}
    misshaped = dict(state)
    w = state[weight]
    misshaped[weight] = torch.zeros(w.shape[0], w.shape[1], w.shape[2] + 2, w.shape[3] + 2)
    extra = {**state, "extra_head.weight": torch.zeros(3, 3)}
    return [("missing " + weight, missing), ("mis-shaped " + weight, misshaped), ("extra", extra)]


@pytest.mark.parametrize("arch, scale", [("HAT", 4), ("DAT", 4), ("NAFNet", 1), ("SPAN", 4), ("Compact", 4)])
def test_tiny_checkpoint_loads_frozen_with_exact_weights(tmp_path, arch, scale):
    path = save_tiny_checkpoint(arch, tmp_path / f"{arch}.safetensors")
    spec = _spec(path, arch, scale, input="lr" if scale == 4 else "bicubic")
    expert = load_expert(spec)
    ref_model = tiny_model(arch)
    with torch.no_grad():  # SPAN re-derives its fused `eval_conv` from the unfused weights in every eval forward
        ref_model(torch.rand(1, 3, 16, 16))
    ref = ref_model.state_dict()
    got = expert.model.state_dict()
    assert set(got) == set(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)  # the file's weights, not a fresh init
    assert not expert.model.training
    assert not any(p.requires_grad for p in expert.model.parameters())
    fp = expert.fingerprint
    assert fp.sha256 == sha256_file(path) and fp.architecture == arch and fp.scale == scale
    assert fp.feature_channels > 0 and fp.hook_layers
    assert fp.num_params == sum(v.numel() for v in tiny_model(arch).parameters())


@pytest.mark.parametrize("arch", ["HAT", "DAT", "NAFNet", "SPAN"])
def test_tiny_checkpoint_with_a_missing_misshaped_or_extra_tensor_is_rejected(tmp_path, arch):
    state = tiny_model(arch).state_dict()
    for label, bad in _damaged_variants(state):
        path = tmp_path / "bad.safetensors"
        save_file({k: v.contiguous() for k, v in bad.items()}, str(path))
        scale = 1 if arch == "NAFNet" else 4
        with pytest.raises(ExpertLoadError, match="bad.safetensors") as info:
            load_expert(_spec(path, arch, scale, input="lr" if scale == 4 else "bicubic"))
        assert "not" in str(info.value) or "recognises" in str(info.value), label


def test_real_checkpoints_with_a_missing_misshaped_or_extra_tensor_are_rejected(shared_dir, tmp_path):
    for name, arch in REAL.items():
        state = read_state_dict(shared_dir / "weights" / name)
        for _label, bad in _damaged_variants(state):
            path = tmp_path / f"bad_{name}"
            torch.save(bad, path)
            with pytest.raises(ExpertLoadError, match=f"bad_{name}"):
                load_expert(_spec(path, arch))


def test_spandrel_loads_with_strict_true(tmp_path):
    """The mechanism the guarantee rests on: spandrel's ModelBase calls load_state_dict with strict=True."""
    state = tiny_model("SPAN").state_dict()
    state.pop("conv_2.sk.bias")
    from spandrel import ModelLoader

    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*conv_2\.sk\.bias"):
        ModelLoader().load_from_state_dict(state)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ExpertLoadError, match=r"nowhere\.pth: checkpoint file not found"):
        load_expert(_spec(tmp_path / "nowhere.pth", "SPAN"))


def test_relative_missing_file_names_the_resolved_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExpertLoadError, match=str(tmp_path / "w" / "x.pth")):
        load_expert(_spec("w/x.pth", "SPAN"))


def test_wrong_architecture_scale_or_hyperparameter_is_an_error(tmp_path):
    path = save_tiny_checkpoint("SPAN", tmp_path / "span.safetensors")
    with pytest.raises(ExpertLoadError, match=r"span\.safetensors: spandrel detects architecture 'SPAN'.*'HAT'"):
        load_expert(_spec(path, "HAT"))
    with pytest.raises(ExpertLoadError, match=r"span\.safetensors: the model is x4, the spec expects x2"):
        load_expert(_spec(path, "SPAN", 2))
    with pytest.raises(ExpertLoadError, match="feature_channels = 8, the spec expects 48"):
        load_expert(_spec(path, "SPAN", expect={"feature_channels": 48}))
    with pytest.raises(ExpertLoadError, match="'nope' is not among"):
        load_expert(_spec(path, "SPAN", expect={"nope": 1}))
    assert load_expert(_spec(path, "SPAN", expect={"feature_channels": 8, "rgb_mean": [0.4488, 0.4371, 0.4040]}))


def test_sha256_pin(tmp_path):
    path = save_tiny_checkpoint("SPAN", tmp_path / "span.safetensors")
    digest = sha256_file(path)
    assert load_expert(_spec(path, "SPAN", sha256=digest)).fingerprint.sha256 == digest
    with pytest.raises(ExpertLoadError, match="differs from the pinned"):
        load_expert(_spec(path, "SPAN", sha256="0" * 64))


def test_not_a_state_dict_is_rejected(tmp_path):
    cases = {
        "list.pth": [torch.zeros(1)],
        "mixed.pth": {"conv.weight": torch.zeros(1), "epoch": 3},
        "empty.pth": {},
        "nested.pth": {"params": [1, 2]},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ExpertLoadError, match=name):
            read_state_dict(tmp_path / name)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ExpertLoadError, match="junk.safetensors: not a readable safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ExpertLoadError, match="unsupported checkpoint type"):
        read_state_dict(tmp_path / "model.onnx")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump(OrderedDict(w=_Payload()), f, protocol=2)
    with pytest.raises(ExpertLoadError, match="evil.pth: refused by the restricted unpickler"):
        read_state_dict(path)
    assert "must never run" not in capsys.readouterr().out


def test_unknown_architecture_names_the_file(tmp_path):
    path = tmp_path / "mystery.safetensors"
    save_file({"foo.weight": torch.zeros(4, 3, 3, 3), "bar.bias": torch.zeros(4)}, str(path))
    with pytest.raises(ExpertLoadError, match="mystery.safetensors: spandrel recognises no architecture"):
        load_expert(_spec(path, "SPAN"))


def test_checkpoint_key_selects_the_state_dict(tmp_path):
    state = tiny_model("SPAN", seed=1).state_dict()
    other = tiny_model("SPAN", seed=2).state_dict()
    path = tmp_path / "both.pth"
    torch.save({"params": other, "params_ema": state}, path)
    got = load_expert(_spec(path, "SPAN", checkpoint_key="params")).model.state_dict()
    assert torch.equal(got["conv_1.sk.weight"], other["conv_1.sk.weight"])
    got = load_expert(_spec(path, "SPAN")).model.state_dict()  # spandrel's canonical choice: params_ema
    assert torch.equal(got["conv_1.sk.weight"], state["conv_1.sk.weight"])
    with pytest.raises(ExpertLoadError, match="checkpoint_key 'ema' not in"):
        load_expert(_spec(path, "SPAN", checkpoint_key="ema"))


def test_bad_hook_layer_is_an_error(tmp_path):
    path = save_tiny_checkpoint("SPAN", tmp_path / "span.safetensors")
    with pytest.raises(HookError, match="conv_cat"):
        load_expert(_spec(path, "SPAN", hooks=("conv_catt",)))  # the message suggests the close name
    with pytest.raises(HookError, match="not on the LR grid"):
        load_expert(_spec(path, "SPAN", hooks=("upsampler",)))  # the x4 pixel-shuffle output
