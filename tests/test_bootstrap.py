"""The paired bootstrap interval of a gain over images (pipeline/evaluation/bootstrap.py) and where tables carry it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.bootstrap import RESAMPLES, paired_interval
from pipeline.evaluation.compare import Row, summarise, table_markdown


def _case(n: int, gain: float, sd: float, seed: int = 1) -> tuple[list[float], list[float]]:
    """Per-image scores of two methods: image difficulty (shared, large) + a per-image gain of mean ``gain`` and
    standard deviation ``sd`` (exactly, after centring)."""
    rng = np.random.default_rng(seed)
    base = 28.0 + 3.0 * rng.standard_normal(n)  # the images' difficulty: the pairing must remove it
    noise = rng.standard_normal(n)
    noise = (noise - noise.mean()) / noise.std()  # mean 0, sd 1 exactly
    return list(base + gain + sd * noise), list(base)


def test_interval_centre_and_width_match_the_known_difference():
    a, b = _case(100, gain=0.02, sd=0.05)
    iv = paired_interval(a, b)
    assert iv.mean == pytest.approx(0.02, abs=1e-12)  # the centre is the mean difference
    assert iv.resamples == RESAMPLES >= 10_000 and iv.images == 100 and iv.confidence == 0.95
    # the bootstrap's interval of a mean: ±1.96·sd/√n (sd of the resampled data: the population sd here)
    half = 1.96 * 0.05 / math.sqrt(100)
    assert iv.low == pytest.approx(0.02 - half, abs=0.15 * half)
    assert iv.high == pytest.approx(0.02 + half, abs=0.15 * half)
    assert iv.low < iv.mean < iv.high
    assert iv.verdict == "better"


def test_verdicts_and_pairing():
    a, b = _case(100, gain=-0.02, sd=0.05)
    assert paired_interval(a, b).verdict == "worse"
    a, b = _case(14, gain=0.005, sd=0.05)
    iv = paired_interval(a, b)
    assert iv.low < 0 < iv.high and iv.verdict == "not separable"
    # unpaired, the shared image difficulty (sd 3 dB) would swamp a 0.02 dB gain; paired it does not
    a, b = _case(100, gain=0.02, sd=0.01)
    assert paired_interval(a, b).high - paired_interval(a, b).low < 0.01


def test_seeded_and_reproducible():
    a, b = _case(30, gain=0.01, sd=0.05)
    assert paired_interval(a, b) == paired_interval(a, b)
    assert paired_interval(a, b, seed=1) != paired_interval(a, b)
    narrow = paired_interval(a, b, confidence=0.5)
    wide = paired_interval(a, b)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_bad_inputs():
    with pytest.raises(ValueError, match="equal"):
        paired_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="equal"):
        paired_interval([], [])
    with pytest.raises(ValueError, match="confidence"):
        paired_interval([1.0], [0.0], confidence=1.0)
    one = paired_interval([1.5], [1.0])
    assert (one.mean, one.low, one.high) == (0.5, 0.5, 0.5)


def test_summary_and_markdown_carry_intervals_and_verdicts():
    fusion, blend = _case(50, gain=0.03, sd=0.05)
    expert = [x - 0.2 for x in blend]
    mean = [x - 0.02 for x in blend]
    rows = [
        Row(regime="none", method="rlfn", kind="expert", psnr=expert, ssim=[0.9] * 50),
        Row(regime="none", method="mean", kind="ensembler", psnr=mean, ssim=[0.9] * 50),
        Row(regime="none", method="blend_reg", kind="ensembler", psnr=blend, ssim=[0.9] * 50),
        Row(regime="none", method="fusion", kind="fusion", psnr=fusion, ssim=[0.9] * 50),
    ]
    summary = {s["method"]: s for s in summarise(rows)}
    f = summary["fusion"]
    assert f["vs_mean"]["mean"] == pytest.approx(0.05) and f["vs_mean"]["verdict"] == "better"
    assert f["vs_best_expert"]["mean"] == pytest.approx(0.23)
    assert [v["peer"] for v in f["vs_peers"]] == ["blend_reg", "mean"]  # strongest peer first
    assert f["vs_peers"][0]["mean"] == pytest.approx(0.03) and f["vs_peers"][0]["verdict"] == "better"
    assert "vs_peers" not in summary["blend_reg"]
    assert summary["blend_reg"]["vs_mean"]["mean"] == pytest.approx(0.02)
    md = table_markdown(list(summary.values()), title="t")
    assert "| none | fusion | blend_reg | " in md and "| better |" in md
    assert f"{f['vs_peers'][0]['low']:+.4f}" in md and "10,000 resamples of the 50 images" in md
