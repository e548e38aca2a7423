"""pipeline/model/members.py and ``sr-fusion stack-gates``: independently trained set gates averaged in one checkpoint
— the stacked model is exactly the mean of its members, loads like any checkpoint, and refuses members that differ."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from pipeline.app import main
from pipeline.core.config import ConfigError
from pipeline.model.describe import describe_network
from pipeline.model.fusion_net import FusionNet
from pipeline.model.io import load_pretrained, save_pretrained, verify_checksums, write_checksums
from pipeline.model.members import StackError, stack_gates
from tests.test_set_gate import inputs, perturb, pool_config

pytestmark = pytest.mark.usefixtures("single_thread")

BASE = (0.5, 0.3, 0.2)
EXPERTS = [{"name": f"x{i}", "sha256": f"{i}" * 64} for i in range(3)]


def member(tmp_path, seed: int, *, name: str | None = None, experts=EXPERTS, **gate):
    cfg = pool_config(3, base=BASE, signals=True)
    cfg = dataclasses.replace(cfg, set_gate=dataclasses.replace(cfg.set_gate, **gate))
    torch.manual_seed(seed)
    model = FusionNet(config=cfg)
    perturb(model, seed=seed + 10)  # a "trained" member: its own weights
    out = tmp_path / (name or f"s{seed}")
    save_pretrained(model, out, extra={"experts": experts, "step": 100 + seed, "scale": 4})
    write_checksums(out)
    return model, out


def test_the_stack_is_the_mean_of_its_members_and_loads_as_a_checkpoint(tmp_path):
    models, paths = zip(*(member(tmp_path, s, residual=True) for s in range(3)), strict=True)
    stacked, out = stack_gates(paths, tmp_path / "stacked")
    verify_checksums(out)
    loaded = load_pretrained(out)  # strict: every member's weights in place
    assert loaded.config.set_gate.members == 3
    assert "the mean of 3 independently trained set gates" in describe_network(loaded.config)
    lr, srs = inputs(3)
    with torch.no_grad():
        outs = [m.eval()(lr, srs, []) for m in models]
        got = loaded(lr, srs, [])
    assert torch.allclose(got.sr, sum(o.sr for o in outs) / 3, atol=1e-6)
    assert torch.allclose(got.gates, sum(o.gates for o in outs) / 3, atol=1e-6)
    assert not torch.allclose(outs[0].sr, outs[1].sr, atol=1e-4)  # the members do differ: the mean is not one of them
    extra = json.loads((out / "config.json").read_text())["extra"]
    assert [m["step"] for m in extra["members"]] == [100, 101, 102] and extra["experts"] == EXPERTS
    # the same sources in the same order: the same bytes
    stack_gates(paths, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_a_single_gate_keeps_its_keys():
    model = FusionNet(config=pool_config(3, base=BASE))
    assert all(k.startswith("set_gate.") and ".members." not in k for k in model.state_dict())


def test_members_that_differ_are_refused(tmp_path):
    _, a = member(tmp_path, 0)
    _, wider = member(tmp_path, 1, channels=12)
    _, dilated = member(tmp_path, 2, dilations=(1, 2))
    _, other = member(tmp_path, 3, experts=[*EXPERTS[:2], {"name": "y", "sha256": "f" * 64}])
    for bad in (wider, dilated):
        with pytest.raises(StackError, match="config differs .*set_gate"):
            stack_gates([a, bad], tmp_path / "out")
    with pytest.raises(StackError, match="other experts"):
        stack_gates([a, other], tmp_path / "out")
    with pytest.raises(StackError, match="named twice"):
        stack_gates([a, a], tmp_path / "out")
    with pytest.raises(StackError, match="two or more"):
        stack_gates([a], tmp_path / "out")
    _, b = member(tmp_path, 4)
    (b / "SHA256SUMS").unlink()
    with pytest.raises(StackError, match="SHA256SUMS is missing"):
        stack_gates([a, b], tmp_path / "out")
    stacked, out = stack_gates([a, member(tmp_path, 5)[1]], tmp_path / "ok")
    with pytest.raises(StackError, match="not a single set gate"):
        stack_gates([out, a], tmp_path / "out2")  # a stack is not a member
    with pytest.raises(StackError, match="not an empty folder"):
        stack_gates([a, member(tmp_path, 6)[1]], out)  # never over a checkpoint
    assert not (tmp_path / "out").exists()  # nothing written by a refused stack


def test_training_a_stack_is_refused_with_the_way_to_build_it(tmp_path):
    from pipeline.training.config import load_run_config

    with pytest.raises(ConfigError, match="stack-gates"):
        load_run_config("configs/train/fusion_esr_pool.yaml", ["model.set_gate.members=2"])
    # nor is fine-tuning one: train.init_from names stack-gates and the members to fine-tune instead
    from pipeline.training.fusion import RunError, load_init_weights

    models, paths = zip(*(member(tmp_path, s) for s in range(2)), strict=True)
    _, out = stack_gates(paths, tmp_path / "st")
    with pytest.raises(
        RunError, match=r"stack of 2 set gates \(sr-fusion stack-gates\): fine-tune one of its members \(.*s0, .*s1\)"
    ):
        load_init_weights(FusionNet(config=models[0].config), str(out), EXPERTS)


def test_the_command_stacks_and_reports_refusals_in_one_line(tmp_path, capsys):
    _, a = member(tmp_path, 0)
    _, b = member(tmp_path, 1)
    assert main(["stack-gates", str(a), str(b), "--out", str(tmp_path / "st")]) == 0
    assert "2 gates" in capsys.readouterr().out
    assert main(["stack-gates", str(a), str(b), "--out", str(tmp_path / "st")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an empty folder" in err[0]


def test_the_stack_curve_scores_every_subset_as_its_stack_would(tiny_cache, tmp_path, capsys):
    from conftest import program

    from cache.reader import CacheReader
    from pipeline.evaluation.cached import CachedScoreError, score_cached, stack_curve

    reader = CacheReader(tiny_cache)
    experts = [dict(fp) for fp in reader.meta.experts]
    reader.close()
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = FusionNet(config=pool_config(2, base=(0.6, 0.4)))
        perturb(model, seed=seed + 10)
        save_pretrained(model, tmp_path / f"m{seed}", extra={"experts": experts, "step": 1, "scale": 4})
        write_checksums(tmp_path / f"m{seed}")
        paths.append(tmp_path / f"m{seed}")
    members = [(str(p), load_pretrained(p), experts) for p in paths]
    curve = stack_curve(tiny_cache, members=members)
    stacked, out = stack_gates(paths, tmp_path / "st")
    rows = {r.method: r.psnr for r in score_cached(tiny_cache, fusions=[*members, ("st", stacked, experts)])}
    assert curve.psnr[(0, 1, 2)] == rows["st"]  # the whole subset is exactly the stacked checkpoint
    assert all(curve.psnr[(j,)] == rows[str(p)] for j, p in enumerate(paths))
    sizes = curve.by_size()
    assert [(s["k"], s["subsets"]) for s in sizes] == [(1, 3), (2, 3), (3, 1)]
    pairs = [sum(curve.psnr[s]) / 6 for s in ((0, 1), (0, 2), (1, 2))]
    assert sizes[1]["mean"] == pytest.approx(sum(pairs) / 3) and sizes[1]["min"] == min(pairs)
    assert curve.limit() == pytest.approx(sizes[0]["mean"] + (sizes[2]["mean"] - sizes[0]["mean"]) * 1.5)
    assert len({sum(curve.psnr[(j,)]) for j in range(3)}) == 3  # the members do differ

    with pytest.raises(CachedScoreError, match="2 to 12 members"):
        stack_curve(tiny_cache, members=members[:1])
    with pytest.raises(CachedScoreError, match="fusion x was trained with experts"):
        stack_curve(tiny_cache, members=[*members[:2], ("x", members[2][1], EXPERTS[:2])])

    script = program("research/stack_curve")
    table = tmp_path / "curve"
    assert script.main(["--cache", str(tiny_cache), "--members", *map(str, paths), "--out", str(table)]) == 0
    payload = json.loads(table.with_suffix(".json").read_text())
    assert payload["limit"] == pytest.approx(curve.limit()) and payload["per_image_psnr"]["0+1+2"] == rows["st"]
    assert "extrapolated infinite stack" in capsys.readouterr().out
