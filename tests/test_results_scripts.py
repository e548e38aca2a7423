"""scripts/research/expert_baselines.py (plain mean, per-pixel and block oracles, least-squares blend) and
scripts/research/results_table.py."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import program

from pipeline.core.imageio import read_image, write_image
from pipeline.core.metrics import psnr_y, rgb_to_y
from pipeline.evaluation import baselines
from pipeline.evaluation.scoring import pair_images, score_fidelity
from pipeline.model.fusion_config import load_fusion_config
from pipeline.model.fusion_net import FusionNet

expert_baselines = program("research/expert_baselines")
results_table = program("research/results_table")

REPO = Path(__file__).resolve().parents[1]


def test_oracle_picks_the_expert_nearest_in_y_per_pixel():
    hr = torch.rand(1, 3, 8, 8)
    srs = (hr.unsqueeze(1) + 0.1 * torch.randn(1, 3, 3, 8, 8)).clamp(0, 1)  # (B,E,3,H,W)
    oracle = baselines.pixel_oracle(srs, hr)
    err = (rgb_to_y(srs[0]) - rgb_to_y(hr)).abs()  # (E,1,H,W)
    best = err.argmin(dim=0)[0]  # (H,W)
    for y in range(8):
        for x in range(8):
            assert torch.equal(oracle[0, :, y, x], srs[0, best[y, x], :, y, x])
    # no expert beats the oracle on PSNR-Y, the mean is the mean
    for e in range(3):
        assert psnr_y(oracle, hr, crop_border=0) >= psnr_y(srs[:, e], hr, crop_border=0)
    assert torch.allclose(baselines.expert_mean(srs), srs.mean(dim=1))


def test_block_oracle_picks_per_tile_and_sits_between_pixel_oracle_and_best_expert():
    g = torch.Generator().manual_seed(1)
    hr = torch.rand(1, 3, 10, 13, generator=g)  # sides not multiples of the block: partial last tiles
    srs = (hr.unsqueeze(1) + 0.1 * torch.randn(1, 3, 3, 10, 13, generator=g)).clamp(0, 1)
    out = baselines.block_oracle(srs, hr, 4)
    err = (rgb_to_y(srs[0]) - rgb_to_y(hr)).square()[:, 0]  # (E,H,W)
    for ty in range(0, 10, 4):
        for tx in range(0, 13, 4):
            best = err[:, ty : ty + 4, tx : tx + 4].mean(dim=(1, 2)).argmin()
            assert torch.equal(out[0, :, ty : ty + 4, tx : tx + 4], srs[0, best, :, ty : ty + 4, tx : tx + 4]), (ty, tx)
    p_block = psnr_y(out, hr, crop_border=0)
    assert psnr_y(baselines.pixel_oracle(srs, hr), hr, crop_border=0) > p_block
    assert p_block > max(psnr_y(srs[:, e], hr, crop_border=0) for e in range(3))
    assert torch.equal(baselines.block_oracle(srs, hr, 1), baselines.pixel_oracle(srs, hr))


def test_heldout_block_oracle_never_lets_a_pixel_choose_by_its_own_error():
    hr = torch.full((1, 3, 8, 10), 0.5)  # width 10, tiles of 4: the last tile is 2 wide (halves of 1 column)
    right = torch.tensor([c % 4 >= 2 if c < 8 else c == 9 for c in range(10)])  # second half of each tile
    wrong = hr + 0.2
    srs = torch.stack([torch.where(right, hr, wrong), torch.where(right, wrong, hr)], dim=1)  # (1,2,3,8,10)
    # expert 0 is exact on the right halves, expert 1 on the left ones: the in-sample oracles are exact
    torch.testing.assert_close(baselines.pixel_oracle(srs, hr), hr)
    # a choice carried from the other half is wrong everywhere: no pixel's own error entered it
    torch.testing.assert_close(baselines.heldout_block_oracle(srs, hr, 4), wrong)


def test_heldout_block_oracle_equals_the_block_oracle_when_the_best_expert_is_coherent_per_tile():
    g = torch.Generator().manual_seed(4)
    hr = torch.rand(1, 3, 12, 12, generator=g)
    srs = (hr.unsqueeze(1) + 0.1 * torch.randn(1, 3, 3, 12, 12, generator=g)).clamp(0, 1)
    best = torch.randint(0, 3, (3, 3), generator=g).repeat_interleave(4, 0).repeat_interleave(4, 1)  # (12,12)
    for e in range(3):
        srs[0, e][:, best == e] = hr[0][:, best == e]  # expert e is exact wherever it is the tile's best
    out = baselines.heldout_block_oracle(srs, hr, 4)
    torch.testing.assert_close(out, baselines.block_oracle(srs, hr, 4))
    torch.testing.assert_close(out, hr)


def test_blend_weights_recover_a_linear_combination():
    g = torch.Generator().manual_seed(2)
    data = []
    for _ in range(2):
        srs = torch.rand(1, 3, 3, 20, 20, generator=g)
        hr = 0.7 * srs[:, 0] + 0.5 * srs[:, 1] - 0.2 * srs[:, 2]  # Y is affine: the offset is absorbed (0.7+0.5-0.2=1)
        data.append((srs, hr))
    w = baselines.blend_weights(data, scale=4)
    torch.testing.assert_close(w, torch.tensor([0.7, 0.5, -0.2]), atol=1e-4, rtol=0)


def test_image_blend_is_each_images_own_least_squares_blend():
    g = torch.Generator().manual_seed(3)
    pairs = []
    for w in ([0.6, 0.3, 0.1], [0.2, 0.9, -0.1]):  # two images that want different weights
        srs = torch.rand(1, 3, 3, 20, 20, generator=g) * 0.8 + 0.1
        hr = sum(wi * srs[:, i] for i, wi in enumerate(w))
        pairs.append((srs, hr, torch.tensor(w)))
        out, got = baselines.image_blend(srs, hr, scale=4)
        torch.testing.assert_close(got, torch.tensor(w), atol=1e-4, rtol=0)
        torch.testing.assert_close(out, hr.clamp(0, 1), atol=1e-4, rtol=0)
    shared = baselines.blend_weights([(s, h) for s, h, _ in pairs], scale=4)  # one blend cannot fit both
    assert (shared - pairs[0][2]).abs().max() > 0.05 and (shared - pairs[1][2]).abs().max() > 0.05


def test_baselines_script_and_table(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    hr_dir, exp = tmp_path / "hr", tmp_path / "exp"
    names = ["a", "b", "c"]
    (exp).mkdir()
    (exp / "fingerprints.json").write_text(json.dumps([{"name": n} for n in names]))
    for i in range(2):
        hr = torch.rand(1, 3, 26, 30, generator=g)  # not a multiple of 4: cropped like the scoring does
        write_image(hr_dir / f"img{i}.png", hr)
        for k, n in enumerate(names):
            noise = (0.02 + 0.03 * k) * torch.randn(1, 3, 24, 28, generator=g)
            write_image(exp / n / f"img{i}x4.png", (hr[..., :24, :28] + noise).clamp(0, 1))
    argv = ["--experts-dir", str(exp), "--hr", str(hr_dir), "--blocks", "4", "--blend", "--image-blend"]
    argv += ["--heldout-blocks", "4"]
    assert expert_baselines.main(argv) == 0
    for folder in ("_oracle", "_oracle_b4", "_oracle_heldout_b4", "_blend", "_blend_image"):
        assert sorted(p.name for p in (exp / folder).iterdir() if not p.name.startswith(".")) == [
            "img0x4.png",
            "img1x4.png",
        ], folder
    blend = json.loads((exp / "blend_weights.json").read_text())
    assert blend["experts"] == names and blend["weights"][0] > blend["weights"][2]  # a (least noise) weighs most

    scores = {}
    for m in ["a", "b", "c", "_mean", "_oracle", "_oracle_b4", "_oracle_heldout_b4", "_blend", "_blend_image"]:
        rows = score_fidelity(pair_images(exp / m, hr_dir, scale=4), scale=4)
        scores[m.strip("_")] = sum(r["psnr"] for r in rows) / len(rows)
        (tmp_path / "res" / "S" / "scores").mkdir(parents=True, exist_ok=True)
        (tmp_path / "res" / "S" / "scores" / f"{m.strip('_')}.json").write_text(
            json.dumps({"images": rows, "mean": {"psnr": scores[m.strip("_")], "ssim": 0.5}})
        )
    assert scores["oracle"] > scores["oracle_b4"] >= max(scores["a"], scores["b"], scores["c"])  # a wins most tiles
    assert scores["oracle_b4"] >= scores["oracle_heldout_b4"] >= scores["a"]  # a wins (nearly) every half tile here
    assert scores["blend"] > max(scores["a"], scores["b"], scores["c"])  # independent noise: the blend averages it
    assert scores["blend_image"] > scores["blend"]  # fitted on each image alone: at least as good on it
    assert sorted(json.loads((exp / "blend_image_weights.json").read_text())["weights"]) == ["img0x4.png", "img1x4.png"]
    # the saved oracle PNG is exactly made of expert pixels (no rounding loss)
    o = read_image(exp / "_oracle" / "img0x4.png")
    stack = torch.stack([read_image(exp / n / "img0x4.png") for n in names])  # (E,1,3,H,W)
    assert ((stack == o).all(dim=2)).any(dim=0).all()

    # "fusion" = copy of the mean to exercise the margin line
    (tmp_path / "res" / "S" / "scores" / "fusion.json").write_text(
        (tmp_path / "res" / "S" / "scores" / "mean.json").read_text()
    )
    assert results_table.main([str(tmp_path / "res"), "--sets", "S", "--best-of", "a", "b", "c"]) == 0
    out = capsys.readouterr().out
    assert "per-pixel oracle" in out and f"{scores['oracle']:.3f}" in out
    assert f"fusion − best expert: S {scores['mean'] - scores['a']:+.3f} dB vs a" in out


def test_table_without_scores_is_an_error(tmp_path, capsys):
    assert results_table.main([str(tmp_path), "--sets", "Set5"]) == 2
    assert "no scores" in capsys.readouterr().err


def test_blend_stats_pooled_psnr_is_the_psnr_over_all_pixels_at_once():
    g = torch.Generator().manual_seed(3)
    data = [(torch.rand(1, 2, 3, 16, 12, generator=g), torch.rand(1, 3, 16, 12, generator=g)) for _ in range(2)]
    stats = baselines.blend_stats(data, border=2)
    for w in (torch.tensor([1.0, 0.0]), torch.tensor([0.3, 0.9])):  # any weights, summing to 1 or not
        err = torch.cat(
            [
                (rgb_to_y((w.view(1, 2, 1, 1, 1) * srs).sum(1)) - rgb_to_y(hr))[..., 2:-2, 2:-2].flatten()
                for srs, hr in data
            ]
        )
        assert stats.pooled_psnr(w) == pytest.approx(10 * math.log10(255**2 / err.square().mean().item()), abs=1e-6)
    assert stats.pooled_psnr(stats.solve()) >= max(stats.pooled_psnr(w) for w in torch.eye(2))
    whole = baselines.blend_stats(data, border=0)  # no crop: every pixel
    assert whole.n == 2 * 16 * 12 and stats.n == 2 * 12 * 8


def test_fit_gate_prior_prints_the_override_that_starts_a_fusion_there(tiny_cache, tmp_path, capsys):
    fit_gate_prior = program("research/fit_gate_prior")

    cache = tiny_cache
    capsys.readouterr()
    assert fit_gate_prior.main([str(cache)]) == 0
    out = capsys.readouterr().out
    scores = {
        m.group(1): float(m.group(2)) for m in re.finditer(r"^  (\S+(?: \S+)*?) +([0-9.]+) dB", out, re.MULTILINE)
    }
    assert scores["least-squares blend"] >= max(scores["noisy"], scores["calm"], scores["mean"])
    override = out.strip().splitlines()[-1]
    assert override.startswith("model.gating.prior=[")
    cfg = load_fusion_config(REPO / "configs" / "fusion_tiny.yaml", [override]).with_feat_channels((8, 8))
    prior = cfg.gating.prior
    assert prior is not None and len(prior) == 2 and min(prior) >= 0.0099 and sum(prior) == pytest.approx(1, abs=1e-3)
    assert prior[1] > prior[0]  # "calm" has the weaker residual: nearer the smooth HR
    FusionNet(config=cfg)  # a valid start
    assert fit_gate_prior.main([str(tmp_path / "missing.h5")]) == 2
    assert "cache index not found" in capsys.readouterr().err
