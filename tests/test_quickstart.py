"""scripts/quickstart.py end to end in a reduced mode (1 fine-tuning photo, 2 evaluation photos cropped to 192 px,
a few steps) with the bundled experts (experts/zoo/) and the bundled fusion (checkpoints/fusion_zoo_small): every
artefact exists and is what it claims to be, and the fusion beats the mean of the bundled experts on the held-out
photos. Plus the quickstart's refusals (a foreign --out folder, --lr without --hr, a missing bundled fusion)."""

from __future__ import annotations

from conftest import REPO_ROOT, run_main

from scripts import quickstart


def test_quickstart_refuses_a_foreign_out_folder_and_bad_flags(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    assert run_main(quickstart.main, ["--out", str(mine)]) == 1
    assert "was not made by the quickstart" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "precious"

    assert run_main(quickstart.main, ["--out", str(tmp_path / "a"), "--lr", str(tmp_path)]) == 1
    assert "--lr needs --hr" in capsys.readouterr().err
    assert run_main(quickstart.main, ["--out", str(tmp_path / "b"), "--hr", str(tmp_path / "nope")]) == 1
    assert f"--hr {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert run_main(quickstart.main, ["--out", str(tmp_path / "c"), "--init", str(tmp_path / "no_run")]) == 1
    assert "--init" in capsys.readouterr().err


def test_quickstart_names_a_missing_bundled_fusion(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(quickstart, "BUNDLED_FUSION", tmp_path / "fusion_zoo_small")
    assert run_main(quickstart.main, ["--out", str(tmp_path / "qs")]) == 1
    assert f"the bundled fusion is missing: {tmp_path / 'fusion_zoo_small' / 'model.safetensors'}" in \
        capsys.readouterr().err
    assert REPO_ROOT.joinpath("configs", "train", "quickstart.yaml").is_file()
