"""scripts/submit.py: challenge-format outputs, readme.txt, zip, TTA, and every bad input refused before work."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import program

from pipeline.core.augment import augment, deaugment
from pipeline.core.errors import BadInputsError
from pipeline.core.imageio import read_image, write_image
from pipeline.core.self_ensemble import SelfEnsemble
from pipeline.inference.pipeline import load_pipeline, super_resolve
from pipeline.inference.submission import check_inputs
from pipeline.model.describe import describe_network

submit = program("submit")

# ``trained_run`` (a tiny trained fusion run on the two Compact experts) is a session fixture in tests/conftest.py.


@pytest.fixture
def lr_dir(tmp_path) -> Path:
    d = tmp_path / "lr"
    g = torch.Generator().manual_seed(0)
    write_image(d / "0901x4.png", torch.rand(1, 3, 20, 26, generator=g))
    write_image(d / "0902x4.png", torch.rand(1, 3, 17, 23, generator=g))
    return d


def test_deaugment_inverts_augment():
    x = torch.rand(1, 3, 5, 7)
    for k in range(8):
        assert torch.equal(deaugment(augment(x, k), k), x)


def test_submit_writes_challenge_format(trained_run, lr_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert submit.main(["--run", str(trained_run), "--input", str(lr_dir), "--output", str(out), "--zip"]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "0901x4.png",
        "0902x4.png",
        "readme.txt",
    ]
    assert read_image(out / "0902x4.png").shape == (1, 3, 68, 92)
    lines = (out / "readme.txt").read_text().splitlines()
    assert lines[0].startswith("runtime per image [s] : ") and float(lines[0].split(":")[1]) > 0
    assert lines[1] == "CPU[1] / GPU[0] : 1"
    assert lines[2] == "Extra Data [1] / No Extra Data [0] : 1"
    assert lines[3].startswith("Other description : Multi-expert fusion") and "noisy (Compact)" in lines[3]
    fusion = load_pipeline(trained_run).fusion
    network = describe_network(fusion.config, params=sum(p.numel() for p in fusion.parameters()))
    assert f"; {network}; trained on the experts' outputs" in lines[3]  # the parts that ran (every one, here)
    assert "self-ensemble: no." in lines[3] and lines[3].endswith("test run")
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        assert sorted(zf.namelist()) == ["0901x4.png", "0902x4.png", "readme.txt"]

    # the written image is exactly the pipeline's output, rounded to 8 bits
    pipe = load_pipeline(trained_run)
    sr = super_resolve(pipe, read_image(lr_dir / "0901x4.png"))
    assert torch.equal(read_image(out / "0901x4.png"), torch.round(sr * 255) / 255)


def test_tta_is_the_mean_of_eight_transformed_runs(trained_run):
    pipe = load_pipeline(trained_run)
    g = torch.Generator().manual_seed(1)
    lr = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 6, generator=g), size=(20, 24), mode="bilinear")
    tta = super_resolve(pipe, lr, self_ensemble=SelfEnsemble.PIPELINE)
    plain = super_resolve(pipe, lr)
    runs = []
    with torch.no_grad():
        for k in range(8):
            x = augment(lr, k)
            srs, feats = pipe.ensemble(x)
            runs.append(deaugment(pipe.fusion(x, srs, feats).sr, k))
    torch.testing.assert_close(tta, torch.stack(runs).mean(0).clamp(0, 1))
    assert tta.shape == plain.shape == (1, 3, 80, 96) and not torch.equal(tta, plain)


def test_bad_inputs_are_refused_before_any_work(trained_run, lr_dir, tmp_path, capsys):
    def run(*extra, run_dir=trained_run, inp=lr_dir, out=tmp_path / "o"):
        code = submit.main(["--run", str(run_dir), "--input", str(inp), "--output", str(out), *extra])
        return code, capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    code, err = run(inp=tmp_path / "empty")
    assert code == 2 and "no images in" in err
    code, err = run(inp=tmp_path / "missing")
    assert code == 2 and "input folder not found" in err

    bad = tmp_path / "bad"
    shutil.copytree(lr_dir, bad)
    (bad / "notes.txt").write_text("x")
    code, err = run(inp=bad)
    assert code == 2 and "notes.txt: not an image file" in err
    (bad / "notes.txt").unlink()
    (bad / "0903x4.png").write_bytes(b"not a png")
    code, err = run(inp=bad)
    assert code == 2 and "0903x4.png" in err
    (bad / "0903x4.png").unlink()
    write_image(bad / "0904x4.png", torch.rand(1, 3, 3, 9))  # the tiny Compact experts accept any size, so the
    with pytest.raises(BadInputsError, match="0904x4.png: 9x3 is smaller than the minimum side 8"):
        check_inputs(bad, 8)  # check is shown with the minimum a real expert (e.g. DITN, SwinIR) declares
    (bad / "0904x4.png").unlink()

    blocker = tmp_path / "file_not_dir"
    blocker.write_text("x")
    code, err = run(out=blocker / "out")
    assert code == 2 and "not writable" in err

    ckpt = tmp_path / "ckpt"
    shutil.copytree((trained_run / "ckpt" / "best").resolve(), ckpt)
    cfg = (ckpt / "config.json").read_text()
    (ckpt / "config.json").write_text(cfg.replace('"width": 16', '"width": 16 '))
    code, err = run(run_dir=ckpt)
    assert code == 2 and "config.json was modified" in err
    (ckpt / "model.safetensors").unlink()
    code, err = run(run_dir=ckpt)
    assert code == 2 and "no complete checkpoint" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.png"))  # nothing was written


def test_expert_checkpoint_swapped_is_an_error(trained_run, tiny_compact_experts, lr_dir, tmp_path, capsys):
    spec = yaml.safe_load(tiny_compact_experts["yaml"].read_text())
    swapped = tmp_path / "swapped.yaml"
    spec["experts"][0]["checkpoint"] = str(tiny_compact_experts["root"] / "calm.pth")  # noisy's slot, calm's file
    swapped.write_text(yaml.safe_dump(spec))
    code = submit.main(
        ["--run", str(trained_run), "--input", str(lr_dir), "--output", str(tmp_path / "o"), "--experts", str(swapped)]
    )
    assert code == 2 and "sha256" in capsys.readouterr().err


def test_refiner_option_refines_every_image(trained_run, lr_dir, tmp_path, capsys):
    """--refiner runs the TSD-SR stage (tiny random SD3 here) on the fused images; a missing refiner file is an
    error before any work."""
    from tiny_refiner import write_tiny_setup

    from pipeline.core.config import config_to_dict

    setup = write_tiny_setup(tmp_path / "tsdsr")
    cfg_path = tmp_path / "refiner.yaml"
    cfg_path.write_text(yaml.safe_dump(config_to_dict(setup.config)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (
            submit.main(["--run", str(trained_run), "--input", str(lr_dir), "--output", str(tmp_path / "plain")]) == 0
        )
        assert (
            submit.main(
                [
                    "--run",
                    str(trained_run),
                    "--input",
                    str(lr_dir),
                    "--output",
                    str(tmp_path / "ref"),
                    "--refiner",
                    str(cfg_path),
                ]
            )
            == 0
        )
        for name in ("0901x4.png", "0902x4.png"):
            a, b = read_image(tmp_path / "plain" / name), read_image(tmp_path / "ref" / name)
            assert a.shape == b.shape and (a - b).abs().mean() > 1e-3  # the refiner really changed the image
        assert "TSD-SR" in (tmp_path / "ref" / "readme.txt").read_text()
        (setup.root / "embeddings" / "pool_embeds.pt").unlink()
        capsys.readouterr()
        code = submit.main(
            [
                "--run",
                str(trained_run),
                "--input",
                str(lr_dir),
                "--output",
                str(tmp_path / "x"),
                "--refiner",
                str(cfg_path),
            ]
        )
        assert code == 2 and "pool_embeds.pt" in capsys.readouterr().err
        assert not (tmp_path / "x").exists() or not any((tmp_path / "x").glob("*.png"))
    finally:
        torch.set_num_threads(threads)


def test_a_second_submission_reuses_the_stored_expert_outputs(
    trained_run, tiny_compact_experts, lr_dir, tmp_path, capsys, monkeypatch
):
    """Issue 40: a submission with another method (or the fusion, or another self-ensemble mode) on the same LR
    folder runs no expert again — and loads none (experts/lazy.py) —, and its PNGs are those of a run without the
    store."""
    import experts.lazy as lazy

    loaded: list[str] = []
    real = lazy.load_expert
    monkeypatch.setattr(lazy, "load_expert", lambda spec, **kw: loaded.append(spec.name) or real(spec, **kw))
    store = tmp_path / "store"
    experts = str(tiny_compact_experts["yaml"])
    common = ["--input", str(lr_dir), "--device", "cpu", "--store", str(store)]
    assert submit.main(["--method", "mean", "--experts", experts, *common, "--output", str(tmp_path / "a")]) == 0
    assert "expert outputs: 0 from the store, 4 computed" in capsys.readouterr().out
    for i, extra in enumerate((["--method", "zzpm", "--experts", experts], ["--run", str(trained_run)]), start=1):
        out, bare = tmp_path / f"b{i}", tmp_path / f"bare{i}"
        loaded.clear()
        assert submit.main([*extra, *common, "--output", str(out)]) == 0
        assert "expert outputs: 4 from the store, 0 computed" in capsys.readouterr().out
        assert loaded == []  # every expert known by its card in the store: no model loaded
        assert (
            submit.main([*extra, "--input", str(lr_dir), "--device", "cpu", "--no-store", "--output", str(bare)]) == 0
        )
        for name in ("0901x4.png", "0902x4.png"):
            assert (out / name).read_bytes() == (bare / name).read_bytes()
