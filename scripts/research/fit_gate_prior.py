"""Fit the fixed blend of the experts on a training cache: where the fusion's gates can start (``gating.prior``).

    python scripts/research/fit_gate_prior.py caches/train.h5 [--floor 0.01]

Least squares on the NTIRE Y channel (border 4 cropped, every pixel of every cached image): the weights ``w`` that
minimise Σ (Σ_e w_e·Y_e − Y_hr)². Softmax gates are positive, so the prior is ``w`` clipped below at ``--floor`` and
renormalised. Prints the pooled PSNR-Y over the cache (one MSE over all its pixels) of each expert, their mean, the
least-squares blend and the prior, then the override that starts a fusion at the prior::

    model.gating.prior=[0.8094,0.1808,0.0099]      # CRAFT / DITN / SPAN on T91 + BSD200

A network whose gates start there only has to learn where to deviate from the best fixed blend; with uniform gates
it must first unlearn the plain mean, which for strongly correlated experts is below the best of them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cache.reader import CacheError, CacheReader
from pipeline.core.cli import run_cli
from pipeline.evaluation.baselines import blend_stats


def gate_prior(w: torch.Tensor, *, floor: float) -> list[float]:
    """Positive weights summing to 1: ``w`` clipped below at ``floor``, renormalised, rounded to 4 decimals."""
    p = w.double().clamp(min=floor)
    p = p / p.sum()
    return [round(float(v), 4) for v in p]


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", type=Path, help="a training cache with HR (scripts/extract_features.py --hr)")
    ap.add_argument("--floor", type=float, default=0.01, help="smallest prior weight of an expert (default 0.01)")
    ap.add_argument("--border", type=int, default=4, help="pixels cropped at each side before fitting (default 4)")
    args = ap.parse_args(argv)
    if not 0.0 < args.floor < 1.0:
        ap.error(f"--floor must be in (0, 1), got {args.floor}")
    if args.border < 0:
        ap.error(f"--border must be >= 0, got {args.border}")
    torch.set_num_threads(1)
    try:
        reader = CacheReader(args.cache)
        if not reader.has_hr:
            raise CacheError(f"{args.cache} holds no HR images (extracted without --hr): nothing to fit against")
        samples = (reader.read(i) for i in range(len(reader)))
        stats = blend_stats(((s.srs[None], s.hr[None]) for s in samples), border=args.border)
    except CacheError as exc:
        print(f"fit_gate_prior: {exc}", file=sys.stderr)
        return 2
    names = reader.meta.expert_names
    e = len(names)
    w = stats.solve()
    prior = gate_prior(w, floor=args.floor)
    print(f"fit_gate_prior: {len(reader)} images, {stats.n:,} Y pixels (border {args.border}) of {args.cache}")
    print("pooled PSNR-Y over the cache (one MSE over all its pixels):")
    for i, name in enumerate(names):
        print(f"  {name:<24} {stats.pooled_psnr(torch.eye(e)[i]):.4f} dB")
    print(f"  {'mean':<24} {stats.pooled_psnr(torch.full((e,), 1.0 / e)):.4f} dB")
    blend = ", ".join(f"{name} {float(v):.4f}" for name, v in zip(names, w, strict=True))
    print(f"  {'least-squares blend':<24} {stats.pooled_psnr(w):.4f} dB  ({blend})")
    print(f"  {f'prior (floor {args.floor})':<24} {stats.pooled_psnr(torch.tensor(prior)):.4f} dB")
    print(f"model.gating.prior=[{','.join(str(v) for v in prior)}]")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("fit_gate_prior", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
