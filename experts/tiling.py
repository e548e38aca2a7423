"""Tiled inference on the LR grid, stitched by centre-cropping so that it equals the untiled result.

Tiles are ``tile × tile`` LR pixels (all tiles the same size: the last one along an axis is shifted back to end at
the border) and neighbours share at least ``overlap`` pixels. Each output pixel is taken from the one tile that
owns it: the seam between two tiles lies in the middle of their shared strip, so every kept pixel is at least
``overlap // 2`` LR pixels away from a tile border that is not an image border. For a model whose receptive field
radius is at most ``overlap // 2`` the stitched result therefore equals the untiled one up to float rounding; for
models with global or window attention it is an approximation whose quality grows with the tile size.

Outputs live on different grids of the same image: an SR output at ``factor = 4`` (4 output pixels per LR pixel),
a feature map at ``factor = 1``, an HR-space *input* at ``in_factor = 4``. Memory is bounded by one tile's
activations plus the full-size output buffers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["TileSpan", "tile_spans", "tiled_forward"]


@dataclass(frozen=True)
class TileSpan:
    """One tile along one axis, in LR pixels: it reads ``[start, stop)`` and owns ``[keep_start, keep_stop)``."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


def tile_spans(length: int, *, tile: int, overlap: int) -> list[TileSpan]:
    """Split ``[0, length)`` into tiles of size ``tile`` sharing at least ``overlap`` pixels."""
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [TileSpan(0, length, 0, length)]
    step = tile - overlap
    starts = list(range(0, length - tile, step)) + [length - tile]
    seams = [(a + tile + b) // 2 for a, b in itertools.pairwise(starts)]  # middle of each shared strip
    keeps = [0, *seams, length]
    return [TileSpan(s, s + tile, keeps[i], keeps[i + 1]) for i, s in enumerate(starts)]


def tiled_forward(
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    x: torch.Tensor,
    *,
    lr_size: tuple[int, int],
    tile: int,
    overlap: int,
    in_factor: int,
    out_factors: tuple[int, ...],
) -> tuple[torch.Tensor, ...]:
    """Run ``fn`` on tiles of ``x`` and stitch its outputs.

    ``x`` is ``(B, C, in_factor*H, in_factor*W)`` for ``lr_size = (H, W)``; ``fn(x_tile)`` returns one tensor per
    entry of ``out_factors``, the i-th of size ``(B, C_i, f_i*h, f_i*w)`` for an ``h × w`` LR tile. Returns the
    stitched ``(B, C_i, f_i*H, f_i*W)`` tensors, allocated like ``fn``'s first outputs.
    """
    h, w = lr_size
    if tuple(x.shape[-2:]) != (in_factor * h, in_factor * w):
        raise ValueError(f"input {tuple(x.shape)} is not {in_factor}x the LR size {lr_size}")
    rows = tile_spans(h, tile=tile, overlap=overlap)
    cols = tile_spans(w, tile=tile, overlap=overlap)
    outs: list[torch.Tensor] = []
    for r in rows:
        for c in cols:
            x_tile = x[..., in_factor * r.start : in_factor * r.stop, in_factor * c.start : in_factor * c.stop]
            results = fn(x_tile)
            if len(results) != len(out_factors):
                raise ValueError(f"fn returned {len(results)} outputs, expected {len(out_factors)}")
            if not outs:
                outs = [y.new_empty((*y.shape[:-2], f * h, f * w)) for y, f in zip(results, out_factors)]
            for out, y, f in zip(outs, results, out_factors):
                expected = (f * (r.stop - r.start), f * (c.stop - c.start))
                if tuple(y.shape[-2:]) != expected:
                    raise ValueError(f"tile output {tuple(y.shape)} does not match factor {f} (expected {expected})")
                ys, ye = f * (r.keep_start - r.start), f * (r.keep_stop - r.start)
                xs, xe = f * (c.keep_start - c.start), f * (c.keep_stop - c.start)
                out[..., f * r.keep_start : f * r.keep_stop, f * c.keep_start : f * c.keep_stop] = y[..., ys:ye, xs:xe]
    return tuple(outs)
