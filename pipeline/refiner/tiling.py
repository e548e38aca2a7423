"""Overlapping tiles with Gaussian-weighted blending, for the transformer (latent -> latent) and for the VAE encoder
(image -> latent) and decoder (latent -> image), so that memory is bounded by the tile size, not the image size.

Tiles are laid out on a *grid* (the latent pixels): a tile of ``tile`` grid pixels covers ``tile * in_factor`` input
pixels and produces ``tile * out_factor`` output pixels (transformer: 1/1, encoder: 8/1, decoder: 1/8). Tiles start
every ``tile - overlap`` grid pixels, the last one flush with the end, and each output pixel is the average of the
tiles covering it weighted by a Gaussian centred on each tile (std 0.1 x tile side, as in MultiDiffusion/TSD-SR), so
seams are smooth. For a function that acts pixel by pixel the result is exactly the untiled one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["gaussian_weights", "tile_starts", "tiled_map"]

_GAUSS_VAR = 0.01  # variance of the blending weight in units of the tile side (std = 0.1 tile)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` shared pixels."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    return list(range(0, length - tile, tile - overlap)) + [length - tile]


def gaussian_weights(height: int, width: int, *, device: torch.device | None = None) -> Tensor:
    """(height, width) float32 blending weights: separable Gaussian centred on the tile, std = 0.1 x side."""

    def axis(n: int) -> Tensor:
        pos = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) / n
        return torch.exp(-(pos**2) / (2 * _GAUSS_VAR)) / math.sqrt(2 * math.pi * _GAUSS_VAR)

    return torch.outer(axis(height), axis(width)).to(device=device, dtype=torch.float32)


def tiled_map(
    x: Tensor,
    fn: Callable[[Tensor], Tensor],
    *,
    tile: int,
    overlap: int,
    in_factor: int = 1,
    out_factor: int = 1,
    align: int = 1,
) -> Tensor:
    """Apply ``fn`` to overlapping tiles of ``x`` (B, C, H, W) and blend the results (float32).

    The grid is (H / in_factor, W / in_factor); ``fn`` maps a (B, C, h * in_factor, w * in_factor) tile to
    (B, C', h * out_factor, w * out_factor). ``tile`` <= 0, or a grid that fits in one tile, calls ``fn`` once on the
    whole input. Tile sides, overlap and grid must be multiples of ``align`` (e.g. the transformer's patch size), so
    every tile starts on the patch lattice.
    """
    if x.dim() != 4:
        raise ValueError(f"tiled_map expects (B, C, H, W), got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height % in_factor or width % in_factor:
        raise ValueError(f"input size {height}x{width} is not a multiple of in_factor={in_factor}")
    grid_h, grid_w = height // in_factor, width // in_factor
    if tile <= 0 or (grid_h <= tile and grid_w <= tile):
        return fn(x).to(torch.float32)
    tile_h, tile_w = min(tile, grid_h), min(tile, grid_w)
    for name, value in (("tile", tile_h), ("tile", tile_w), ("overlap", overlap), ("grid", grid_h), ("grid", grid_w)):
        if value % align:
            raise ValueError(
                f"{name} size {value} is not a multiple of {align} (tile={tile}, overlap={overlap}, "
                f"grid={grid_h}x{grid_w})"
            )
    ys = tile_starts(grid_h, tile_h, overlap)
    xs = tile_starts(grid_w, tile_w, overlap)
    weight = gaussian_weights(tile_h * out_factor, tile_w * out_factor, device=x.device)  # (th*o, tw*o)
    out: Tensor | None = None
    norm = torch.zeros(grid_h * out_factor, grid_w * out_factor, device=x.device, dtype=torch.float32)
    for y0 in ys:
        for x0 in xs:
            piece = x[..., y0 * in_factor : (y0 + tile_h) * in_factor, x0 * in_factor : (x0 + tile_w) * in_factor]
            res = fn(piece)
            want = (tile_h * out_factor, tile_w * out_factor)
            if res.dim() != 4 or res.shape[0] != x.shape[0] or tuple(res.shape[-2:]) != want:
                raise ValueError(
                    f"tile function returned shape {tuple(res.shape)}, expected (B, C', {want[0]}, {want[1]})"
                )
            if out is None:
                out = torch.zeros(
                    (x.shape[0], res.shape[1], grid_h * out_factor, grid_w * out_factor),
                    device=x.device,
                    dtype=torch.float32,
                )
            oy, ox = y0 * out_factor, x0 * out_factor
            out[..., oy : oy + want[0], ox : ox + want[1]] += res.to(torch.float32) * weight
            norm[oy : oy + want[0], ox : ox + want[1]] += weight
    assert out is not None  # at least one tile
    return out / norm
