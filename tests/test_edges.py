"""Issue 29, "Nothing breaks at the edges": what a hostile-but-realistic user hands the tools — tampered weights
files and checkpoints, absurd numbers, huge strings, full disks, two writers on one output, a clone in another
folder — ends in one line naming the file (exit status 2), never in a traceback, a segfault or a silent mix."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, program

from pipeline.core.imageio import write_image

submit = program("submit")

ZOO_FUSION = REPO_ROOT / "checkpoints" / "fusion_zoo_small"


def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _refused(code: int, lines: list[str], *needles: str) -> str:
    """Exit 2 and exactly one error line (no traceback) holding every needle → that line."""
    assert code == 2, lines
    assert not any("Traceback" in line for line in lines), lines
    hits = [line for line in lines if all(n in line for n in needles)]
    assert len(hits) == 1, (needles, lines)
    return hits[0]


@pytest.fixture
def lr_dir(tmp_path) -> Path:
    d = tmp_path / "lr"
    write_image(d / "0901x4.png", torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(3)))
    return d


# ---------------------------------------------------------------------------------------------------------------------
# item 2: an ensembler weights file: every number finite and in range before any work; what is echoed is capped
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def blend_file(tiny_compact_experts, tmp_path) -> Path:
    from experts.ensemble import ExpertEnsemble
    from pipeline.inference.ensemblers import Ensembler, save
    from pipeline.inference.pipeline import expert_spec_from_yaml

    ensemble = ExpertEnsemble.from_spec(expert_spec_from_yaml(tiny_compact_experts["yaml"]))
    fps = [fp.to_dict() for fp in ensemble.fingerprints]
    return save(Ensembler(method="blend", experts=fps, weights=[0.5, 0.5]), tmp_path / "blend.json")


def _submit_blend(yaml_path: Path, weights: Path, lr: Path, out: Path) -> int:
    args = ["--method", "blend", "--experts", str(yaml_path), "--weights", str(weights)]
    return submit.main([*args, "--input", str(lr), "--output", str(out), "--device", "cpu"])


def test_ensembler_weight_out_of_range_is_refused_before_any_work(
    tiny_compact_experts, blend_file, lr_dir, tmp_path, capsys
):
    payload = json.loads(blend_file.read_text())
    payload["params"]["weights"] = [1e308, 0.5]  # finite, but the blend overflows to Inf
    blend_file.write_text(json.dumps(payload))
    out = tmp_path / "out"
    code = _submit_blend(tiny_compact_experts["yaml"], blend_file, lr_dir, out)
    _refused(code, _err_lines(capsys), "blend.json", "weights", "1e+308")
    assert not out.exists()  # not even a folder holding only its marker


def test_ensembler_huge_string_is_not_echoed_whole(tiny_compact_experts, blend_file, lr_dir, tmp_path, capsys):
    payload = json.loads(blend_file.read_text())
    payload["method"] = "x" * 100_000
    blend_file.write_text(json.dumps(payload))
    code = _submit_blend(tiny_compact_experts["yaml"], blend_file, lr_dir, tmp_path / "out")
    line = _refused(code, _err_lines(capsys), "blend.json", "method")
    assert len(line) < 1000 and "100002 characters" in line


def test_one_line_caps_any_message():
    from pipeline.core.cli import LINE_LIMIT, one_line
    from pipeline.core.errors import shorten

    assert shorten("abc") == "'abc'" and shorten("abc", quote=False) == "abc"
    assert shorten("y" * 500).endswith("… (502 characters)") and len(shorten("y" * 500)) < 250
    assert len(one_line(ValueError("z" * 100_000))) < LINE_LIMIT + 40


# ---------------------------------------------------------------------------------------------------------------------
# item 4: a checkpoint whose checksums its editor recomputed: config.json passes the training config's ranges before
# any allocation, and a model.safetensors that is not one is one line
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def edited_checkpoint(tmp_path) -> Path:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ZOO_FUSION, ckpt)
    return ckpt


def _edit_config(ckpt: Path, edit) -> None:
    from pipeline.model.io import write_checksums

    payload = json.loads((ckpt / "config.json").read_text())
    edit(payload)
    (ckpt / "config.json").write_text(json.dumps(payload))
    write_checksums(ckpt)


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda p: p["config"].__setitem__("token_channels", 10**12), ("config.token_channels", "<= 1024")),
        (lambda p: p["config"]["hierarchical"].__setitem__("inner_channels", 10**9), ("inner_channels",)),
        (lambda p: p["config"]["hessian"].__setitem__("dilations", [1, 2, 10**6]), ("dilations[2]",)),
        (lambda p: p["extra"]["experts"][0].__setitem__("feature_channels", 10**15), ("feature_channels",)),
        (lambda p: p["extra"].__setitem__("scale", 1e300), ("scale",)),
        (lambda p: p["extra"]["experts"][1].pop("sha256"), ("experts[1].sha256",)),
        (lambda p: p.pop("config"), ("config: expected a JSON object",)),
    ],
    ids=["token_channels", "inner_channels", "dilation", "feature_channels", "scale", "no-sha256", "no-config"],
)
def test_checkpoint_config_is_range_checked_before_any_allocation(
    edited_checkpoint, lr_dir, tmp_path, capsys, edit, needles
):
    _edit_config(edited_checkpoint, edit)
    out = tmp_path / "out"
    code = submit.main(["--run", str(edited_checkpoint), "--input", str(lr_dir), "--output", str(out)])
    _refused(code, _err_lines(capsys), *needles)
    assert not out.exists()


def test_training_config_rejects_absurd_sizes(tmp_path):
    from pipeline.core.config import ConfigError
    from pipeline.model.fusion_net import load_fusion_config

    cfg = tmp_path / "m.yaml"
    cfg.write_text("model:\n  token_channels: 1000000000000\n")
    with pytest.raises(ConfigError, match=r"token_channels: must be >= 1 and <= 1024"):
        load_fusion_config(cfg)


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/sr_fusion_edges_pickle_ran"),))


def test_a_pickle_saved_as_model_safetensors_is_one_line_and_never_runs(edited_checkpoint, lr_dir, tmp_path, capsys):
    from pipeline.model.io import write_checksums

    ran = Path("/tmp/sr_fusion_edges_pickle_ran")
    ran.unlink(missing_ok=True)
    (edited_checkpoint / "model.safetensors").write_bytes(pickle.dumps({"w": _Boom()}))
    write_checksums(edited_checkpoint)
    code = submit.main(["--run", str(edited_checkpoint), "--input", str(lr_dir), "--output", str(tmp_path / "o")])
    _refused(code, _err_lines(capsys), "model.safetensors", "not a readable safetensors file")
    assert not ran.exists()


def test_nan_weights_in_a_checkpoint_are_refused(edited_checkpoint):
    from safetensors.torch import load_file, save_file

    from pipeline.model.io import CheckpointError, load_pretrained

    state = load_file(str(edited_checkpoint / "model.safetensors"))
    first = sorted(state)[0]
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, str(edited_checkpoint / "model.safetensors"))
    with pytest.raises(CheckpointError, match="hold NaN or Inf"):
        load_pretrained(edited_checkpoint)
