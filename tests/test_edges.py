"""Issue 29, "Nothing breaks at the edges": what a hostile-but-realistic user hands the tools — tampered weights
files and checkpoints, absurd numbers, huge strings, full disks, two writers on one output, a clone in another
folder — ends in one line naming the file (exit status 2), never in a traceback, a segfault or a silent mix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import program

from pipeline.core.imageio import write_image

submit = program("submit")


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
