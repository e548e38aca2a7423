"""scripts/make_lr.py and scripts/evaluate.py as a user runs them (pairing rules, errors, JSON)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import program

from pipeline.core.imageio import read_image, write_image
from pipeline.core.resize import bicubic_upscale

evaluate = program("evaluate")
make_lr = program("make_lr")


def _img(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g)


@pytest.fixture
def folders(tmp_path):
    hr_dir, sr_dir = tmp_path / "hr", tmp_path / "sr"
    for i, (h, w) in enumerate([(64, 48), (67, 50)]):  # the second is not a multiple of 4
        hr = _img(h, w, i)
        write_image(hr_dir / f"{i:04d}.png", hr)
        sr = (hr[..., : h - h % 4, : w - w % 4] + 0.02 * _img(h - h % 4, w - w % 4, 10 + i)).clamp(0, 1)
        write_image(sr_dir / f"{i:04d}x4.png", sr)  # challenge naming
    return hr_dir, sr_dir


def test_evaluate_pairs_challenge_names_and_writes_json(folders, tmp_path, capsys):
    hr_dir, sr_dir = folders
    out = tmp_path / "res" / "scores.json"
    assert evaluate.main(["--sr", str(sr_dir), "--hr", str(hr_dir), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "0000" in text and "0001" in text and "mean" in text
    data = json.loads(out.read_text())
    assert [r["name"] for r in data["images"]] == ["0000", "0001"]
    assert set(data["mean"]) == {"psnr", "ssim"}
    assert data["mean"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in data["images"]]))
    assert 25 < data["mean"]["psnr"] < 60 and 0 < data["mean"]["ssim"] < 1


def test_evaluate_missing_extra_and_size_mismatch(folders, capsys):
    hr_dir, sr_dir = folders
    (sr_dir / "0001x4.png").rename(sr_dir / "zzzz.png")
    assert evaluate.main(["--sr", str(sr_dir), "--hr", str(hr_dir)]) == 2
    err = capsys.readouterr().err
    assert "1 HR image(s) have no SR result" in err and "0001.png" in err
    assert "1 SR image(s) have no HR counterpart" in err and "zzzz.png" in err

    (sr_dir / "zzzz.png").unlink()
    write_image(sr_dir / "0001x4.png", _img(60, 48, 3))  # wrong size
    assert evaluate.main(["--sr", str(sr_dir), "--hr", str(hr_dir)]) == 2
    err = capsys.readouterr().err
    assert (
        "size mismatch" in err
        and "0001x4.png: size mismatch: 48x60" in err
        and "cropped to a multiple of 4 is 48x64" in err
    )


def test_evaluate_empty_folder(tmp_path, folders, capsys):
    hr_dir, _ = folders
    (tmp_path / "empty").mkdir()
    assert evaluate.main(["--sr", str(tmp_path / "empty"), "--hr", str(hr_dir)]) == 2
    assert "no images in the SR folder" in capsys.readouterr().err


def test_make_lr_names_and_sizes(tmp_path):
    hr_dir = tmp_path / "hr"
    write_image(hr_dir / "a.png", _img(67, 50, 0))
    write_image(hr_dir / "b.png", _img(32, 32, 1))
    (hr_dir / "readme.txt").write_text("not an image, ignored")
    assert make_lr.main(["--hr", str(hr_dir), "--out", str(tmp_path / "lr"), "--hr-out", str(tmp_path / "hrc")]) == 0
    assert sorted(p.name for p in (tmp_path / "lr").glob("*.png")) == ["ax4.png", "bx4.png"]
    assert read_image(tmp_path / "lr" / "ax4.png").shape == (1, 3, 16, 12)
    assert read_image(tmp_path / "hrc" / "a.png").shape == (1, 3, 64, 48)


def test_make_lr_then_evaluate_bicubic_on_real_set5(shared_dir, tmp_path, capsys):
    """The user path: make LR from Set5 HR, upscale with bicubic, score — Set5 bicubic is 28.42 dB (published)."""
    hr_dir = shared_dir / "data" / "val" / "Set5" / "HR"
    assert make_lr.main(["--hr", str(hr_dir), "--out", str(tmp_path / "lr")]) == 0
    for p in sorted((tmp_path / "lr").glob("*.png")):
        write_image(tmp_path / "sr" / p.name, bicubic_upscale(read_image(p)))
    assert evaluate.main(["--sr", str(tmp_path / "sr"), "--hr", str(hr_dir), "--json", str(tmp_path / "s.json")]) == 0
    mean = json.loads((tmp_path / "s.json").read_text())["mean"]
    assert mean["psnr"] == pytest.approx(28.43, abs=0.02)
