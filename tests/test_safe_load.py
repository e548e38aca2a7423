"""Weights files: the sha256 pin is compared before a file is parsed (every kind of expert), and a refusal of the
restricted unpickler never passes on PyTorch's advice to re-run with ``weights_only=False``."""

from __future__ import annotations

import argparse
import hashlib
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from experts.code import load_code_model
from experts.expert import load_expert
from experts.loading import ExpertLoadError, read_state_dict
from experts.spec import CodeSpec, ExpertSpec
from pipeline.core.safe_load import load_failure
from pipeline.evaluation.perceptual import PerceptualWeightsError, _state_dict_file
from pipeline.refiner.errors import RefinerWeightsError
from pipeline.refiner.files import load_embedding
from pipeline.training.checkpoint import TrainStateError, load_train_state

UNSAFE_ADVICE = ("weights_only=False", "weights_only` set to `False", "Re-running", "add_safe_globals", "safe_globals")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def _evil(path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(OrderedDict(w=_Payload()), f, protocol=2)
    return path


def _with_object(path: Path) -> Path:
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=1)}, path)  # a training script's habit
    return path


@pytest.fixture
def no_torch_load(monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def test_a_spandrel_experts_pin_is_compared_before_its_file_is_parsed(tmp_path, no_torch_load, capsys):
    path = _evil(tmp_path / "evil.pth")
    spec = ExpertSpec(name="e", checkpoint=str(path), architecture="SPAN", scale=4, sha256="0" * 64)
    with pytest.raises(ExpertLoadError, match=r"evil\.pth: sha256 [0-9a-f]{64} differs from the pinned 0{64}"):
        load_expert(spec)
    assert no_torch_load == [] and "must never run" not in capsys.readouterr().out


def test_a_code_experts_pins_are_compared_before_anything_is_parsed_or_imported(tmp_path, no_torch_load, capsys):
    code = tmp_path / "team.py"
    code.write_text("print('imported')\nimport torch\nclass Net(torch.nn.Module):\n    pass\n")
    digest = hashlib.sha256(code.read_bytes()).hexdigest()
    path = _evil(tmp_path / "evil.pth")
    spec = ExpertSpec(
        name="e",
        checkpoint=str(path),
        scale=4,
        sha256="0" * 64,
        trust_code=True,
        code=CodeSpec(file=str(code), sha256=digest, class_name="Net"),
    )
    with pytest.raises(ExpertLoadError, match=r"evil\.pth: sha256 [0-9a-f]{64} differs from the pinned 0{64}"):
        load_code_model(spec)
    out = capsys.readouterr()
    assert no_torch_load == [] and "must never run" not in out.out and "imported" not in out.out + out.err


def test_refusals_name_the_object_and_never_advise_unsafe_loading(tmp_path):
    path = _with_object(tmp_path / "with_args.pth")
    messages = []
    for call, error in (
        (lambda: read_state_dict(path), ExpertLoadError),
        (lambda: _state_dict_file(path), PerceptualWeightsError),
        (lambda: load_embedding(path, width=4, sequence=False), RefinerWeightsError),
    ):
        with pytest.raises(error) as info:
            call()
        messages.append(str(info.value))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _with_object(ckpt / "train_state.pt")
    with pytest.raises(TrainStateError) as info:
        load_train_state(ckpt)
    messages.append(str(info.value))
    for m in messages:
        assert "argparse.Namespace" in m and "never runs code" in m, m
        assert not any(a in m for a in UNSAFE_ADVICE), m
        assert "\n" not in m
    assert "with_args.pth: refused by the restricted unpickler" in messages[0]
    with pytest.raises(ExpertLoadError) as info:
        read_state_dict(_evil(tmp_path / "evil.pth"))
    assert "a pickled Python object (print)" in str(info.value) and not any(a in str(info.value) for a in UNSAFE_ADVICE)
    # other failures keep their reason, shortened
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:64])
    try:
        torch.load(tmp_path / "cut.pth", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        text = load_failure(exc)
    assert text.startswith("RuntimeError: ") and len(text) < 400
