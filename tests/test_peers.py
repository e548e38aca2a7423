"""The ensembles a team would submit instead of the fusion: per-expert ×8, training-free ensemblers through
submit.py, and the comparison table (pipeline/evaluation/compare.py, scripts/compare_ensembles.py)."""

from __future__ import annotations

import json

import torch
from conftest import program, run_main

from experts.ensemble import ExpertEnsemble
from pipeline.commands import run_experts as experts_run
from pipeline.core.augment import augment, deaugment
from pipeline.core.imageio import quantize_8bit, read_image, write_image
from pipeline.core.metrics import psnr_y
from pipeline.core.self_ensemble import SelfEnsemble
from pipeline.inference.ensemblers import fit, save
from pipeline.inference.pipeline import ensemble_super_resolve, load_pipeline, super_resolve

compare_ensembles = program("compare_ensembles")
submit = program("submit")


def _lr_dir(tmp_path, n: int = 2):
    d = tmp_path / "lr"
    g = torch.Generator().manual_seed(5)
    for i in range(n):
        base = torch.rand(1, 3, 6, 7, generator=g)
        write_image(d / f"09{i:02d}x4.png", torch.nn.functional.interpolate(base, size=(18, 21), mode="bilinear"))
    return d


def test_self_ensemble_is_the_mean_of_eight_transformed_runs(tiny_compact_experts):
    ensemble = ExpertEnsemble.from_yaml(tiny_compact_experts["yaml"])
    lr = torch.rand(1, 3, 9, 13, generator=torch.Generator().manual_seed(0))
    by_hand = torch.stack([deaugment(ensemble(augment(lr, k)).srs, k) for k in range(8)]).mean(0)
    out = ensemble.self_ensemble(lr)
    torch.testing.assert_close(out.srs, by_hand, atol=1e-6, rtol=0)
    assert not torch.allclose(out.srs, ensemble(lr).srs, atol=1e-4)  # the transforms really differ
    for f, g in zip(out.feats, ensemble(lr).feats):
        assert torch.equal(f, g)  # features: the identity pass


def test_experts_run_tta_writes_the_self_ensemble(tiny_compact_experts, tmp_path):
    lr_dir = _lr_dir(tmp_path, 1)
    out = tmp_path / "out"
    assert (
        run_main(
            experts_run.main,
            [
                "--config",
                str(tiny_compact_experts["yaml"]),
                "--input",
                str(lr_dir),
                "--output",
                str(out),
                "--self-ensemble",
                "experts-x8",
            ],
        )
        == 0
    )
    ensemble = ExpertEnsemble.from_yaml(tiny_compact_experts["yaml"])
    want = ensemble.self_ensemble(read_image(lr_dir / "0900x4.png")).srs  # (1,E,3,H,W)
    for j, name in enumerate(ensemble.names):
        assert torch.equal(read_image(out / name / "0900x4.png"), quantize_8bit(want[:, j]))
    assert all(fp["self_ensemble"] == 8 for fp in json.loads((out / "fingerprints.json").read_text()))


def test_submit_method_writes_what_the_library_computes(tiny_compact_experts, tmp_path):
    lr_dir = _lr_dir(tmp_path)
    ensemble = ExpertEnsemble.from_yaml(tiny_compact_experts["yaml"])
    fps = [fp.to_dict() for fp in ensemble.fingerprints]
    hr = torch.rand(1, 3, 72, 84, generator=torch.Generator().manual_seed(3))
    blend = fit("blend", [(ensemble(torch.nn.functional.avg_pool2d(hr, 4)).srs, hr)], experts=fps)
    weights = save(blend, tmp_path / "blend.json")
    for method, extra, regime in (
        ("zzpm", [], {}),
        ("blend", ["--weights", str(weights)], {}),
        ("mean", ["--self-ensemble", "experts-x8"], {"self_ensemble": SelfEnsemble.EXPERTS}),
        (
            "blend",
            ["--weights", str(weights), "--self-ensemble", "pipeline-x8"],
            {"self_ensemble": SelfEnsemble.PIPELINE},
        ),
    ):
        out = tmp_path / f"{method}_{len(extra)}"
        assert (
            submit.main(
                [
                    "--method",
                    method,
                    "--experts",
                    str(tiny_compact_experts["yaml"]),
                    "--input",
                    str(lr_dir),
                    "--output",
                    str(out),
                    *extra,
                ]
            )
            == 0
        )
        ens = blend if method == "blend" else fit(method, [], experts=fps)
        for f in sorted(lr_dir.glob("*.png")):
            want = ensemble_super_resolve(ensemble, ens, read_image(f), **regime)
            assert torch.equal(read_image(out / f.name), quantize_8bit(want)), (method, extra)
        assert "Training-free ensemble" in (out / "readme.txt").read_text()


def test_submit_refuses_weights_fitted_for_other_experts(tiny_compact_experts, tmp_path, capsys):
    other = [{"name": "noisy", "sha256": "0" * 64}, {"name": "calm", "sha256": "1" * 64}]
    path = save(
        fit("blend", [(torch.rand(1, 2, 3, 12, 12), torch.rand(1, 3, 12, 12))], experts=other, border=0),
        tmp_path / "other.json",
    )
    out = tmp_path / "o"
    code = submit.main(
        [
            "--method",
            "blend",
            "--weights",
            str(path),
            "--experts",
            str(tiny_compact_experts["yaml"]),
            "--input",
            str(_lr_dir(tmp_path)),
            "--output",
            str(out),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "other.json" in err[0] and not out.exists()


def test_fusion_expert_tta_is_the_fusion_on_self_ensembled_experts(trained_run, tmp_path):
    pipe = load_pipeline(trained_run)
    lr = read_image(sorted(_lr_dir(tmp_path, 1).glob("*.png"))[0])
    with torch.inference_mode():
        srs, feats = pipe.ensemble.self_ensemble(lr)
        want = pipe.fusion.forward_with_precomputed(lr, srs, feats).sr.clamp(0, 1)
    torch.testing.assert_close(super_resolve(pipe, lr, self_ensemble=SelfEnsemble.EXPERTS), want, atol=1e-6, rtol=0)
    out = tmp_path / "sub"
    argv = ["--run", str(trained_run), "--input", str(tmp_path / "lr"), "--output", str(out)]
    assert submit.main([*argv, "--self-ensemble", "experts-x8"]) == 0
    assert "x8 of each expert" in (out / "readme.txt").read_text()


def test_compare_ensembles_table_and_resume(trained_run, tiny_compact_experts, tmp_path, capsys):
    hr_dir = tiny_compact_experts["hr"]
    args = [
        "--experts",
        str(tiny_compact_experts["yaml"]),
        "--hr",
        str(hr_dir),
        "--fusion",
        str(trained_run),
        "--store",
        str(tmp_path / "store"),
        "--out",
        str(tmp_path / "t" / "table"),
        "--threads",
        "1",
    ]
    assert run_main(compare_ensembles.main, args) == 0
    table = json.loads((tmp_path / "t" / "table.json").read_text())
    rows = {(r["regime"], r["method"]): r for r in table["rows"]}
    assert {"noisy", "calm", "mean", "zzpm", "fusion", "oracle 16x16 blocks"} <= {m for g, m in rows if g == "none"}
    assert {"fusion on x8 experts", "fusion, x8 of the pipeline"} <= {m for g, m in rows if g == "x8"}
    assert "| none | mean |" in (tmp_path / "t" / "table.md").read_text()
    # the mean row equals an independent computation on the stored outputs
    from pipeline.core.resize import make_lr

    ensemble = ExpertEnsemble.from_yaml(tiny_compact_experts["yaml"])
    scores = []
    for p in sorted(hr_dir.glob("*.png")):
        hr, lr = make_lr(read_image(p), 4)
        scores.append(float(psnr_y(quantize_8bit(ensemble(lr).srs.mean(1)), hr, crop_border=4)[0]))
    assert abs(rows[("none", "mean")]["psnr"] - sum(scores) / len(scores)) < 1e-9  # the store is exact
    best = max(rows[("none", n)]["psnr"] for n in ("noisy", "calm"))
    assert rows[("none", "oracle 16x16 blocks")]["psnr"] >= best
    assert rows[("none", "oracle 16x16 blocks")]["psnr"] >= rows[("none", "held-out oracle 16x16")]["psnr"]
    # a rerun runs no expert again (every output is stored) and gives the same table; so does a run without the store
    capsys.readouterr()
    assert run_main(compare_ensembles.main, args) == 0
    n = len(table["images"]) * 8 * 2  # images × transforms × experts
    rerun = capsys.readouterr().out
    assert f"expert outputs: {n} from the store, 0 computed" in rerun
    # where the time went: the fusion ran once per transform and once on the x8 experts, per image
    assert f"({len(table['images']) * 9} forwards)" in rerun and "peers and scores" in rerun
    # the expert, peer and oracle rows were scored once: the rerun scores only the fusion's
    assert f"scores of {len(table['images'])} images from the store, 0 scored" in rerun
    assert json.loads((tmp_path / "t" / "table.json").read_text())["rows"] == table["rows"]
    live = [a if a != str(tmp_path / "store") else "x" for a in args]
    live[live.index("--store") : live.index("--store") + 2] = ["--no-store"]
    live[live.index(str(tmp_path / "t" / "table"))] = str(tmp_path / "t" / "live")
    assert run_main(compare_ensembles.main, live) == 0
    assert json.loads((tmp_path / "t" / "live.json").read_text())["rows"] == table["rows"]


def test_extract_tta_caches_each_experts_self_ensemble(tiny_compact_experts, tmp_path, capsys):
    from cache.reader import CacheReader
    from pipeline.core.resize import make_lr

    extract_features = program("extract_features")

    hr = tmp_path / "hr"
    src = sorted(tiny_compact_experts["hr"].glob("*.png"))[0]
    write_image(hr / src.name, read_image(src))
    args = ["--threads", "1", "--experts", str(tiny_compact_experts["yaml"]), "--hr", str(hr)]
    args += ["--features", "full", "--sr-dtype", "float16"]  # everything, to compare with the experts' own output
    assert extract_features.main([*args, "--out", str(tmp_path / "x8.h5"), "--self-ensemble", "experts-x8"]) == 0
    reader = CacheReader(tmp_path / "x8.h5")
    assert [fp["self_ensemble"] for fp in reader.meta.experts] == [8, 8]
    _, lr = make_lr(read_image(src), 4)
    ensemble = ExpertEnsemble.from_yaml(tiny_compact_experts["yaml"])
    want = ensemble.self_ensemble(lr)
    sample = reader.read(0)
    torch.testing.assert_close(sample.srs, want.srs[0], atol=1e-3, rtol=0)  # float16 storage
    torch.testing.assert_close(sample.feats[0], want.feats[0][0], atol=2e-3, rtol=1e-3)
    # the same cache path without the self-ensemble is another cache: resuming into it is refused, naming the field
    capsys.readouterr()
    (tmp_path / "x8.h5").unlink()  # an interrupted x8 extraction (its data folder stays)
    assert extract_features.main([*args, "--out", str(tmp_path / "x8.h5")]) == 2
    assert "self_ensemble" in capsys.readouterr().err


def test_stored_scores_follow_every_input_they_depend_on():
    """pipeline/evaluation/compare.py: the key of an image's non-fusion scores changes with the experts' outputs, the
    HR, each peer (label, method, parameters), the scale and the oracle block — never a stale score."""
    from pipeline.evaluation.compare import scores_key
    from pipeline.inference.ensemblers import fit

    fps = [{"name": "a", "sha256": "0" * 64}, {"name": "b", "sha256": "1" * 64}]
    mean, zzpm = fit("mean", [], experts=fps), fit("zzpm", [], experts=fps)
    hr = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    base = dict(expert_keys=["k1", "k2"], hr=hr, peers=[("mean", mean)], scale=4)
    key = scores_key(**base)
    assert key == scores_key(**{**base, "hr": hr.clone()})
    others = [
        scores_key(**{**base, "expert_keys": ["k1", "k3"]}),
        scores_key(**{**base, "hr": hr.flip(-1)}),
        scores_key(**{**base, "peers": [("mean", mean), ("zzpm", zzpm)]}),
        scores_key(**{**base, "peers": [("other label", mean)]}),
        scores_key(**{**base, "scale": 2}),
        scores_key(**base, oracle_block=8),
    ]
    assert len({key, *others}) == 1 + len(others)
