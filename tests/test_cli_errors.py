"""Every CLI as a hostile-but-fair user drives it: bad inputs are reported before any work — one line per bad file,
exit status 2, no traceback — and nothing a user owns is ever replaced (issue: "Nothing a user owns is ever
overwritten, and every bad input is one line before any work")."""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import program, run_main

from pipeline.commands import run_experts as experts_run
from pipeline.core.imageio import read_image, write_image
from pipeline.model.io import resolve_checkpoint

train_mod = program("train")
evaluate = program("evaluate")
extract_features = program("extract_features")
make_lr = program("make_lr")
submit = program("submit")

UNREADABLE = ("empty.png", "trunc.png", "text.png")  # zero-byte, truncated PNG, text saved as .png


def _png_bytes(tmp: Path, h: int, w: int, seed: int) -> bytes:
    p = tmp / f".src{seed}.png"
    write_image(p, torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)))
    data = p.read_bytes()
    p.unlink()
    return data


@pytest.fixture
def bad_folder(tmp_path) -> Path:
    """Two good images (one with a unicode name), the three unreadable files, a 1×1 image and a nested folder."""
    d = tmp_path / "bad"
    d.mkdir()
    write_image(d / "good.png", torch.rand(1, 3, 24, 28, generator=torch.Generator().manual_seed(1)))
    write_image(d / "façade_北京.png", torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(2)))
    (d / "empty.png").write_bytes(b"")
    full = _png_bytes(tmp_path, 24, 24, 3)
    (d / "trunc.png").write_bytes(full[: len(full) // 2])
    (d / "text.png").write_text("this is a text file, not a PNG\n")
    write_image(d / "one.png", torch.rand(1, 3, 1, 1))
    write_image(d / "sub" / "inner.png", torch.rand(1, 3, 24, 24))
    return d


def _lines_naming(err: str, name: str) -> list[str]:
    return [line for line in err.splitlines() if f"/{name}:" in line]


def _assert_refused(code: int, err: str, bad_names: tuple[str, ...]) -> None:
    """Exit 2, one stderr line per bad file, no traceback, the good files not named."""
    assert code == 2, err
    assert "Traceback" not in err
    for name in bad_names:
        assert len(_lines_naming(err, name)) == 1, (name, err)
    assert not _lines_naming(err, "good.png") and not _lines_naming(err, "façade_北京.png"), err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------------
# each CLI on the folder of bad inputs: one line per bad file, exit 2, nothing written
# ---------------------------------------------------------------------------------------------------------------------
def test_submit_bad_folder(trained_run, bad_folder, tmp_path, capsys):
    out = tmp_path / "o" / "sub.v1"
    code = submit.main(["--run", str(trained_run), "--input", str(bad_folder), "--output", str(out), "--zip"])
    _assert_refused(code, capsys.readouterr().err, (*UNREADABLE, "sub"))
    assert not (tmp_path / "o").exists()  # no PNG, no readme, no zip, not even the folder


def test_evaluate_bad_folder(bad_folder, tmp_path, capsys):
    hr = tmp_path / "hr"
    sizes = {"good": (24, 28), "façade_北京": (20, 24)}  # the good SR images' own sizes: they pair correctly
    for name in ("good", "façade_北京", "empty", "trunc", "text", "one"):
        write_image(hr / f"{name}.png", torch.rand(1, 3, *sizes.get(name, (96, 112))))
    before = _snapshot(tmp_path)
    code = evaluate.main(["--sr", str(bad_folder), "--hr", str(hr), "--json", str(tmp_path / "s.json")])
    captured = capsys.readouterr()
    _assert_refused(code, captured.err, (*UNREADABLE, "one.png"))  # 1×1 against its HR: a size mismatch
    assert "mean" not in captured.out  # nothing was scored
    assert _snapshot(tmp_path) == before


def test_make_lr_bad_folder(bad_folder, tmp_path, capsys):
    code = make_lr.main(["--hr", str(bad_folder), "--out", str(tmp_path / "lr")])
    _assert_refused(code, capsys.readouterr().err, (*UNREADABLE, "one.png", "sub"))  # 1×1 is smaller than the scale
    assert not (tmp_path / "lr").exists()


def test_extract_features_bad_folder(tiny_compact_experts, bad_folder, tmp_path, capsys):
    code = extract_features.main(
        [
            "--threads",
            "1",
            "--experts",
            str(tiny_compact_experts["yaml"]),
            "--hr",
            str(bad_folder),
            "--out",
            str(tmp_path / "c.h5"),
        ]
    )
    _assert_refused(code, capsys.readouterr().err, (*UNREADABLE, "one.png", "sub"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_extract_features_lr_bad_folder_names_the_nested_folder(tiny_compact_experts, bad_folder, tmp_path, capsys):
    """Issue 29 item 3: --lr is scanned like --hr: the nested folder is one of the bad inputs."""
    args = ["--threads", "1", "--experts", str(tiny_compact_experts["yaml"]), "--lr", str(bad_folder)]
    code = extract_features.main([*args, "--out", str(tmp_path / "c.h5")])
    _assert_refused(code, capsys.readouterr().err, (*UNREADABLE, "sub"))  # 1×1 LR is fine for these experts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_submit_lists_every_bad_input_in_one_pass_and_runs_a_1x1_image(bad_folder, tmp_path, capsys):
    """Issue 29 item 3: every bad input is reported in one run. A 1×1 LR is not one of them: every expert pads its input
    to its size requirements (reflect, then replicate) and crops back, so the bundled fusion super-resolves it."""
    out = tmp_path / "o" / "sub.v1"
    ckpt = Path(__file__).resolve().parents[1] / "checkpoints" / "fusion_zoo_small"
    code = submit.main(["--run", str(ckpt), "--input", str(bad_folder), "--output", str(out), "--zip"])
    err = capsys.readouterr().err
    _assert_refused(code, err, (*UNREADABLE, "sub"))
    assert "one.png" not in err
    assert not (tmp_path / "o").exists()  # the folder the run claimed is gone again
    one = tmp_path / "one"
    one.mkdir()
    write_image(one / "one.png", torch.rand(1, 3, 1, 1))
    assert submit.main(["--run", str(ckpt), "--input", str(one), "--output", str(tmp_path / "sr")]) == 0
    assert read_image(tmp_path / "sr" / "one.png").shape == (1, 3, 4, 4)


def test_experts_run_bad_folder(tiny_compact_experts, bad_folder, tmp_path, capsys):
    code = run_main(
        experts_run.main,
        ["--config", str(tiny_compact_experts["yaml"]), "--input", str(bad_folder), "--output", str(tmp_path / "exp")],
    )
    _assert_refused(code, capsys.readouterr().err, (*UNREADABLE, "sub"))
    assert not (tmp_path / "exp").exists()


# ---------------------------------------------------------------------------------------------------------------------
# 1. extract_features --out never replaces a file that is not a cache
# ---------------------------------------------------------------------------------------------------------------------
def test_extract_refuses_an_existing_non_cache_out(tiny_compact_experts, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    args = ["--threads", "1", "--experts", str(tiny_compact_experts["yaml"]), "--hr", str(tiny_compact_experts["hr"])]
    for extra in ([], ["--overwrite"]):
        assert extract_features.main([*args, "--out", str(notes), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "notes.txt already exists and was not written by this tool" in err[0]
        assert notes.read_text() == "my notes\n" and not (tmp_path / "notes.txt.d").exists()
    # a data folder that is not a cache's is refused too
    (tmp_path / "c.h5.d").mkdir()
    (tmp_path / "c.h5.d" / "mine.txt").write_text("x")
    assert extract_features.main([*args, "--out", str(tmp_path / "c.h5")]) == 2
    assert "not a cache's" in capsys.readouterr().err
    # a real cache (and its own interrupted work) may be written again
    assert extract_features.main([*args, "--out", str(tmp_path / "ok.h5")]) == 0
    assert extract_features.main([*args, "--out", str(tmp_path / "ok.h5"), "--overwrite"]) == 0


# ---------------------------------------------------------------------------------------------------------------------
# 2. submit --zip: OUT.zip is the folder's whole name + .zip and never replaces a foreign zip
# ---------------------------------------------------------------------------------------------------------------------
def test_submit_zip_names_and_foreign_zips(trained_run, tiny_compact_experts, tmp_path, capsys):
    lr = tmp_path / "lr"
    write_image(lr / "0901x4.png", torch.rand(1, 3, 20, 24))
    o = tmp_path / "o"
    o.mkdir()
    (o / "other.zip").write_bytes(b"a zip of my own")
    base = ["--run", str(trained_run), "--input", str(lr), "--zip"]
    for version in ("run.v1", "run.v2", "other.v1"):
        assert submit.main([*base, "--output", str(o / version)]) == 0
    assert (o / "other.zip").read_bytes() == b"a zip of my own"
    for version in ("run.v1", "run.v2", "other.v1"):
        with zipfile.ZipFile(o / f"{version}.zip") as zf:
            assert sorted(zf.namelist()) == ["0901x4.png", "readme.txt"]
    assert submit.main([*base, "--output", str(o / "run.v1")]) == 0  # its own zip and folder: rewritten
    # a zip the tool did not make is refused before any work
    (o / "mine.zip").write_bytes(b"precious")
    assert submit.main([*base, "--output", str(o / "mine")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "mine.zip already exists and was not written by this tool" in err[-1]
    assert (o / "mine.zip").read_bytes() == b"precious" and not (o / "mine").exists()
    # a folder holding the user's own files is refused as output
    (o / "photos").mkdir()
    (o / "photos" / "holiday.png").write_bytes(b"not ours")
    assert submit.main([*base[:4], "--output", str(o / "photos")]) == 2
    assert "holiday.png" in capsys.readouterr().err and (o / "photos" / "holiday.png").read_bytes() == b"not ours"


# ---------------------------------------------------------------------------------------------------------------------
# 4. config values and inputs checked before the run folder is made
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def run_config(trained_run, tmp_path) -> Path:
    cfg = yaml.safe_load((trained_run / "config.yaml").read_text())
    cfg["train"].update(runs_dir=str(tmp_path / "runs"), name="x", steps=2, ckpt_every=2, val_every=1000)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ("train.ckpt_every=0", r"cfg\.yaml: train\.ckpt_every: must be >= 1, got 0"),
        ("train.lr=-1", r"cfg\.yaml: train\.lr: must be >= 0, got -1"),
        ("model.gating.temperature=0", r"model\.gating\.temperature: must be > 0"),
        ("data.train_cache=nowhere/c.h5", r"data\.train_cache=nowhere/c\.h5: cache index not found"),
        ("data.val_cache=nowhere/v.h5", r"data\.val_cache=nowhere/v\.h5: cache index not found"),
    ],
)
def test_train_config_and_input_errors_leave_no_run_folder(run_config, tmp_path, capsys, override, expect):
    assert run_main(train_mod.main, [str(run_config), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train: ")
    import re

    assert re.search(expect, err[0]), err[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["../../escape_run", "sub/run", "/abs/run", ".hidden", "-flag", "x" * 129])
def test_train_run_name_follows_the_expert_name_rule(run_config, tmp_path, capsys, name):
    """train.name becomes runs_dir/name: a name that would leave runs/ (or hide, or not fit a folder) is refused."""
    assert run_main(train_mod.main, [str(run_config), f"train.name={name}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.name: " in err[0] and "is not a valid name" in err[0], err
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "escape_run").exists()
    from pipeline.core.config import ConfigError
    from pipeline.training.expert.config import ExpertTrainConfig

    with pytest.raises(ConfigError, match="train.name"):  # the expert trainer's runs too
        ExpertTrainConfig(name=name)


def test_train_invalid_yaml_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("train:\n  lr: [1,\n  steps: 3\n")
    assert run_main(train_mod.main, [str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.yaml: not valid YAML (line" in err[0]


# ---------------------------------------------------------------------------------------------------------------------
# 5. a tampered train_state.pt on --resume: one line naming the file; 7. stale temp links cleaned on the next run
# ---------------------------------------------------------------------------------------------------------------------
def test_resume_with_a_tampered_train_state_is_one_line(trained_run, tmp_path, capsys):
    run = tmp_path / "r"
    shutil.copytree(trained_run, run, symlinks=True)
    state = resolve_checkpoint(run) / "train_state.pt"
    state.write_bytes(state.read_bytes()[:200])  # truncated
    assert run_main(train_mod.main, ["--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train_state.pt: not a readable training state" in err[0]
    state.write_bytes(b"\x80\x04\x95" + os.urandom(64))  # garbage that looks like a pickle
    assert run_main(train_mod.main, ["--resume", str(run)]) == 2
    assert "train_state.pt" in capsys.readouterr().err


def test_killed_trainer_leftovers_are_cleaned_on_resume(trained_run, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(trained_run, run, symlinks=True)
    ckpt = run / "ckpt"
    os.symlink("step_00000003", ckpt / ".last.tmp-99999")  # a trainer killed between symlink and replace
    (ckpt / ".tmp_step_00000004-99999").mkdir()  # ... or while writing a checkpoint
    assert run_main(train_mod.main, ["--resume", str(run)]) == 0  # at its last step: cleans up, trains nothing
    assert not [p.name for p in ckpt.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------------------------------
# 6. evaluate --json: an unwritable output path is refused before any image is scored
# ---------------------------------------------------------------------------------------------------------------------
def test_evaluate_unwritable_json_refused_before_scoring(tmp_path, capsys):
    hr, sr = tmp_path / "hr", tmp_path / "sr"
    write_image(hr / "a.png", torch.rand(1, 3, 32, 32))
    write_image(sr / "ax4.png", torch.rand(1, 3, 32, 32))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code = evaluate.main(["--sr", str(sr), "--hr", str(hr), "--json", str(blocker / "x.json")])
    captured = capsys.readouterr()
    assert code == 2 and "not writable" in captured.err and "mean" not in captured.out
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "settings"}')
    assert evaluate.main(["--sr", str(sr), "--hr", str(hr), "--json", str(mine)]) == 2
    assert mine.read_text() == '{"my": "settings"}'
    assert evaluate.main(["--sr", str(sr), "--hr", str(hr), "--json", str(tmp_path / "s.json")]) == 0
    assert evaluate.main(["--sr", str(sr), "--hr", str(hr), "--json", str(tmp_path / "s.json")]) == 0  # its own


# ---------------------------------------------------------------------------------------------------------------------
# 7. a killed submit's temp files are cleaned by the next run; outputs are readable by others
# ---------------------------------------------------------------------------------------------------------------------
def test_submit_cleans_stale_temps_and_writes_0644(trained_run, tmp_path):
    lr = tmp_path / "lr"
    write_image(lr / "0901x4.png", torch.rand(1, 3, 20, 24))
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".0901x4.png.k3j9x_a1.tmp"  # what pipeline.core.atomic leaves when killed mid-write
    stale.write_bytes(b"half a png")
    old = os.umask(0o022)
    try:
        assert submit.main(["--run", str(trained_run), "--input", str(lr), "--output", str(out), "--zip"]) == 0
    finally:
        os.umask(old)
    assert not stale.exists()
    for p in (out / "0901x4.png", out / "readme.txt", tmp_path / "out.zip"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


# ---------------------------------------------------------------------------------------------------------------------
# 4 (general): every numeric field of every config schema carries a range check
# ---------------------------------------------------------------------------------------------------------------------
def _unranged_numbers(cls, prefix: str = "") -> list[str]:
    import dataclasses
    import typing

    from pipeline.core.config import Range

    found = []

    def walk(tp, key: str) -> None:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            if args[0] in (int, float) and not any(isinstance(m, Range) for m in tp.__metadata__):
                found.append(key)
            return
        if tp in (int, float):
            found.append(key)
        elif dataclasses.is_dataclass(tp):
            found.extend(_unranged_numbers(tp, key + "."))
        else:
            for a in args:
                if a is not Ellipsis:
                    walk(a, key)

    for name, tp in typing.get_type_hints(cls, include_extras=True).items():
        walk(tp, prefix + name)
    return found


def test_every_numeric_config_field_has_a_range():
    from experts.spec import EnsembleSpec
    from pipeline.refiner.config import RefinerConfig
    from pipeline.training.config import RunConfig
    from pipeline.training.expert.config import ExpertRunConfig

    for schema in (RunConfig, ExpertRunConfig, RefinerConfig, EnsembleSpec):
        assert _unranged_numbers(schema) == [], schema.__name__


def test_train_expert_missing_folder_leaves_no_run_folder(tmp_path, capsys):
    train_expert = program("train_expert")

    cfg = tmp_path / "e.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": {"architecture": "NAFNetSR", "params": {"width": 8, "num_blocks": 1, "upscale": 4}},
                "data": {"train_hr": [str(tmp_path / "missing")]},
                "train": {"runs_dir": str(tmp_path / "runs"), "name": "x", "steps": 2, "warmup_steps": 0},
            }
        )
    )
    assert run_main(train_expert.main, [str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.train_hr: image folder not found" in err[0] and "missing" in err[0]
    assert not (tmp_path / "runs").exists()


def test_a_table_pair_is_written_only_over_its_own_files(tmp_path):
    import json

    from pipeline.core.outputs import OutputPathError, check_table_outputs

    def ours(p):
        return json.loads(p.read_text()).get("tool") == "t"

    out = tmp_path / "sub" / "table"
    assert check_table_outputs(out, ours=ours) == (out.with_suffix(".json"), out.with_suffix(".md"))
    out.parent.mkdir()
    out.with_suffix(".md").write_text("someone's notes")  # a foreign Markdown, no JSON beside it
    with pytest.raises(OutputPathError, match=r"table\.md already exists and was not written by this tool"):
        check_table_outputs(out, ours=ours)
    out.with_suffix(".json").write_text(json.dumps({"tool": "t"}))  # our JSON: the Markdown beside it is ours too
    check_table_outputs(out, ours=ours)
    out.with_suffix(".json").write_text(json.dumps({"tool": "other"}))
    with pytest.raises(OutputPathError, match=r"table\.json already exists"):
        check_table_outputs(out, ours=ours)
