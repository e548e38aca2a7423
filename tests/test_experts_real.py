"""The real experts of ../shared (CRAFT, DITN, SPAN) through the ensemble: golden PSNR and feature shapes.

golden/metrics_reference.json was computed by BasicSR on the expert outputs clamped and rounded to uint8
(crop_border=4, Y channel). Running Set5 + Set14 through all three experts takes a few minutes on 2 CPU cores
(CRAFT dominates); Set14 is therefore marked ``slow`` (still part of the default run).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO_ROOT, require_shared

from experts.ensemble import ExpertEnsemble
from pipeline.core.imageio import quantize_8bit, read_image
from pipeline.core.metrics import crop_to_match, psnr_y

CONFIG = REPO_ROOT / "configs" / "experts" / "shared_real.yaml"
FILES = {"craft": "craft_x4.pth", "ditn": "ditn_x4.pth", "span": "span_ch28_x4.pth"}


@pytest.fixture(scope="module")
def real_ensemble() -> ExpertEnsemble:
    require_shared("weights/craft_x4.pth", "weights/ditn_x4.pth", "weights/span_ch28_x4.pth")
    return ExpertEnsemble.from_yaml(CONFIG)


def _golden_psnrs(shared_dir, ensemble: ExpertEnsemble, dataset: str) -> tuple[dict, dict]:
    """Per expert: {image: (ours, reference)} on every image of ``dataset``."""
    ref = json.loads((shared_dir / "golden" / "metrics_reference.json").read_text())
    entries = [e for e in ref["images"] if e["dataset"] == dataset]
    assert entries, f"no {dataset} entries in the golden file"
    ours: dict[str, dict[str, float]] = {n: {} for n in ensemble.names}
    theirs: dict[str, dict[str, float]] = {n: {} for n in ensemble.names}
    for e in entries:
        lr = read_image(shared_dir / "data" / "val" / e["lr"])  # (1,3,h,w)
        srs, _ = ensemble(lr)
        hr = crop_to_match(read_image(shared_dir / "data" / "val" / e["hr"]), srs[:, 0], scale=4)
        for i, name in enumerate(ensemble.names):
            sr = quantize_8bit(srs[:, i])  # the reference rounded outputs to uint8
            ours[name][e["hr"]] = psnr_y(sr, hr, crop_border=4).item()
            theirs[name][e["hr"]] = e[FILES[name]]["psnr"]
    return ours, theirs


def _check(ours: dict, theirs: dict, *, per_image: float, mean: float) -> None:
    for name, mine in ours.items():
        ref = theirs[name]
        bad = {k: (round(v, 4), round(ref[k], 4)) for k, v in mine.items() if abs(v - ref[k]) > per_image}
        assert not bad, f"{name}: per-image PSNR off by > {per_image} dB (ours, reference): {bad}"
        m_ours, m_ref = sum(mine.values()) / len(mine), sum(ref.values()) / len(ref)
        assert abs(m_ours - m_ref) <= mean, f"{name}: mean PSNR {m_ours:.4f} vs reference {m_ref:.4f}"


@pytest.mark.slow  # ~8 s: the real experts on Set5
def test_real_experts_reproduce_golden_psnr_on_set5(shared_dir, real_ensemble):
    ours, theirs = _golden_psnrs(shared_dir, real_ensemble, "Set5")
    assert all(len(v) == 5 for v in ours.values())
    _check(ours, theirs, per_image=0.02, mean=0.01)


@pytest.mark.slow
def test_real_experts_reproduce_golden_psnr_on_set14(shared_dir, real_ensemble):
    ours, theirs = _golden_psnrs(shared_dir, real_ensemble, "Set14")
    assert all(len(v) == 14 for v in ours.values())
    _check(ours, theirs, per_image=0.02, mean=0.01)


def test_real_expert_features_have_the_documented_shape(real_ensemble):
    """LR sides that are multiples of neither 8 (DITN) nor 16 (CRAFT): features still come back at LR size."""
    assert real_ensemble.names == ("craft", "ditn", "span")
    assert real_ensemble.feature_channels == (48, 60, 28)
    fps = {fp.name: fp for fp in real_ensemble.fingerprints}
    assert fps["craft"].hook_layers == ("conv_after_body",) and fps["span"].hook_layers == ("conv_cat",)
    assert fps["ditn"].hyperparameters["dim"] == 60
    lr = torch.rand(2, 3, 21, 27)
    srs, feats = real_ensemble(lr)
    assert srs.shape == (2, 3, 3, 84, 108)
    assert [tuple(f.shape) for f in feats] == [(2, 48, 21, 27), (2, 60, 21, 27), (2, 28, 21, 27)]
    assert all(torch.isfinite(f).all() for f in feats)
