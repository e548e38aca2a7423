"""How sure a gain is: the paired bootstrap over images of a difference of mean scores.

A table gain such as "+0.0066 dB over the blend" is the mean over a test set's images of a per-image difference.
Over 14 or 100 images that mean moves with which images happen to be in the set; the paired bootstrap resamples the
images (with replacement, the same draw for both methods: the pairing removes what the images share, their
difficulty) and reads the 95 % interval off the percentiles of the resampled means.

    iv = paired_interval(fusion_psnr, blend_psnr)        # per-image PSNR-Y lists, the same images in the same order
    iv.mean, iv.low, iv.high, iv.verdict                 # +0.0066, +0.0021, +0.0113, "better"

Verdict: ``better`` when the whole interval lies above zero, ``worse`` when it lies below, else ``not separable``
(at the interval's confidence). Seeded: the same inputs give the same interval on every machine (numpy's PCG64).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CONFIDENCE", "RESAMPLES", "SEED", "VERDICTS", "PairedInterval", "paired_interval"]

RESAMPLES = 10_000
CONFIDENCE = 0.95
SEED = 0
VERDICTS = ("better", "worse", "not separable")


@dataclass(frozen=True)
class PairedInterval:
    """Mean of ``a − b`` over images and its bootstrap interval ``[low, high]`` at ``confidence``."""

    mean: float
    low: float
    high: float
    images: int
    resamples: int
    confidence: float

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "not separable"

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "verdict": self.verdict,
            "images": self.images,
            "resamples": self.resamples,
            "confidence": self.confidence,
        }

    def describe(self, digits: int = 4) -> str:
        """``+0.0066 [+0.0021, +0.0113]``: the gain and its interval, for tables."""
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def paired_interval(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> PairedInterval:
    """The mean of ``a[i] − b[i]`` and its percentile-bootstrap interval: ``resamples`` draws of the images with
    replacement (the same draw for ``a`` and ``b``), seeded. One image: the interval is the point itself."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired scores must be two equal, non-empty lists; got {x.shape} and {y.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    d = x - y
    n = d.size
    rng = np.random.Generator(np.random.PCG64(seed))
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)  # bounded memory for large sets: draws of (chunk, n) indices at a time
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        means[start : start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return PairedInterval(
        mean=float(d.mean()),
        low=float(low),
        high=float(high),
        images=int(n),
        resamples=int(resamples),
        confidence=float(confidence),
    )
