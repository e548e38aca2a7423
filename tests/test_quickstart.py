"""scripts/quickstart.py end to end in a reduced mode (1 fine-tuning photo, 2 evaluation photos cropped to 192 px,
a few steps) with the bundled experts (experts/zoo/) and the bundled fusion (checkpoints/fusion_zoo_small): every
artefact exists and is what it claims to be, and the fusion beats the mean of the bundled experts on the held-out
photos. Plus the quickstart's refusals (a foreign --out folder, --lr without --hr, a missing bundled fusion)."""

from __future__ import annotations

import json
import re
import zipfile

import pytest
from conftest import REPO_ROOT, program, run_main

from pipeline.core.imageio import read_image

quickstart = program("quickstart")


@pytest.mark.slow
def test_quickstart_reduced_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    argv = [
        "--out",
        str(out),
        "--device",
        "cpu",
        "--steps",
        "6",
        "--train-images",
        "1",
        "--test-images",
        "2",
        "--max-side",
        "192",
    ]
    assert run_main(quickstart.main, argv) == 0
    printed = capsys.readouterr().out
    assert "fusion (submitted)" in printed and "experts' mean" in printed and "finished in" in printed

    # photos → LR (MATLAB bicubic) → cache (verified) → fine-tuned run started from the bundled fusion
    lrs = sorted(p.name for p in (out / "data" / "test_lr").glob("*.png"))
    assert lrs == ["astronautx4.png", "chelseax4.png"]
    assert read_image(out / "data" / "test_lr" / "astronautx4.png").shape[-2:] == (48, 48)
    assert (out / "cache" / "train.h5").is_file()
    saved = (out / "runs" / "finetune" / "config.yaml").read_text()
    assert "fusion_zoo_small" in saved  # train.init_from
    assert (out / "runs" / "finetune" / "ckpt" / "last" / "model.safetensors").is_file()

    # challenge-format submission: one PNG per LR input with the same name, readme.txt, and the zip of both
    sub = out / "submission"
    assert sorted(p.name for p in sub.glob("*.png")) == lrs
    assert read_image(sub / "chelseax4.png").shape[-2:] == (192, 192)
    readme = (sub / "readme.txt").read_text()
    assert "runtime per image" in readme and "CPU[1] / GPU[0]" in readme
    with zipfile.ZipFile(out / "submission.zip") as z:
        assert sorted(z.namelist()) == sorted([*lrs, "readme.txt"])

    # scores: evaluate.py on the submitted files, the report's table (bicubic, experts, mean, fusion) agrees
    scores = json.loads((out / "scores.json").read_text())
    report = json.loads((out / "report" / "scores.json").read_text())
    heading = re.search(r"<h1>(.*?)</h1>", (out / "report" / "index.html").read_text()).group(1)
    assert heading == "Quickstart: the bundled fusion, fine-tuned for 6 steps, scored on 2 held-out photos"
    mean = report["mean"]
    assert report["methods"] == ["bicubic", "expert:hat_s", "expert:dat_s", "expert:nafnet_sr_s", "mean", "fusion"]
    assert mean["fusion"]["psnr"] == pytest.approx(scores["mean"]["psnr"], abs=1e-6)
    experts = [mean[f"expert:{n}"]["psnr"] for n in ("hat_s", "dat_s", "nafnet_sr_s")]
    assert (
        min(experts) > mean["bicubic"]["psnr"] + 0.5
    )  # trained experts (measured +0.66 dB or more), not random weights
    assert mean["fusion"]["psnr"] > mean["mean"]["psnr"], mean  # the fusion beats the experts' mean
    summary = json.loads((out / "summary.json").read_text())
    assert summary["wall_s"] > 0 and set(summary["stages_s"]) == {
        "photos",
        "lr",
        "cache",
        "finetune",
        "submit",
        "evaluate",
        "report",
    }

    # a second run recreates the folder (it carries the quickstart's marker)
    (out / "stale.txt").write_text("x")
    assert run_main(quickstart.main, [*argv, "--steps", "1"]) == 0
    assert not (out / "stale.txt").exists()


def test_quickstart_refuses_a_foreign_out_folder_and_bad_flags(tmp_path, capsys):
    """Every refusal is one line and exit status 2, as for every other tool (it was 1)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    assert run_main(quickstart.main, ["--out", str(mine)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quickstart: --out ") and "was not made by the quickstart" in err[0]
    assert (mine / "thesis.tex").read_text() == "precious"

    assert run_main(quickstart.main, ["--out", str(tmp_path / "a"), "--lr", str(tmp_path)]) == 2
    assert "--lr needs --hr" in capsys.readouterr().err
    assert run_main(quickstart.main, ["--out", str(tmp_path / "b"), "--hr", str(tmp_path / "nope")]) == 2
    assert f"--hr {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert run_main(quickstart.main, ["--out", str(tmp_path / "c"), "--init", str(tmp_path / "no_run")]) == 2
    assert "--init" in capsys.readouterr().err


def test_quickstart_names_a_missing_fusion_checkpoint(tmp_path, capsys):
    (tmp_path / "fusion_zoo_small").mkdir()  # a fusion folder without its weights (as a checkout without them)
    argv = ["--out", str(tmp_path / "qs"), "--init", str(tmp_path / "fusion_zoo_small")]
    assert run_main(quickstart.main, argv) == 2
    assert f"--init holds no fusion checkpoint: {tmp_path / 'fusion_zoo_small' / 'model.safetensors'}" in (
        capsys.readouterr().err
    )
    assert (REPO_ROOT / "checkpoints" / "fusion_zoo_small" / "model.safetensors").is_file()  # the bundled one
    assert REPO_ROOT.joinpath("configs", "train", "quickstart.yaml").is_file()


def test_the_report_heading_is_in_the_users_words():
    from argparse import Namespace

    from pipeline.commands.quickstart import BUNDLED_FUSION, report_title

    args = Namespace(steps=120, init=None, test_images=3, hr=None)
    assert report_title(args, init=BUNDLED_FUSION) == (
        "Quickstart: the bundled fusion, fine-tuned for 120 steps, scored on 3 held-out photos"
    )
    assert report_title(Namespace(steps=50, init=None, test_images=3, hr="my_hr"), init=None) == (
        "Quickstart: a fusion of your experts, trained from scratch for 50 steps, scored on your images"
    )
    mine = Namespace(steps=9, init="runs/mine", test_images=3, hr=None)
    assert report_title(mine, init=mine.init).startswith("Quickstart: the fusion of --init, fine-tuned for 9 steps")
