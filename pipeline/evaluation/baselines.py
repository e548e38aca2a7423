"""The reference points every fusion is measured against, made from the experts' SR images (``srs (B,E,3,H,W)``):
the plain mean, the per-pixel and per-block oracles (chosen with the HR in hand: ceilings, not methods), the held-out
block oracle (each half of a block takes the expert that is best on the *other* half: how far a block-level choice
carries beyond the pixels it was made on) and the least-squares blend fitted on a set
(:class:`pipeline.inference.ensemblers.BlendStats`)."""

from __future__ import annotations

import torch

from pipeline.core.metrics import rgb_to_y
from pipeline.inference.ensemblers import BlendStats, blend_stats

__all__ = [
    "BlendStats",
    "blend_stats",
    "blend_weights",
    "block_oracle",
    "expert_mean",
    "heldout_block_oracle",
    "image_blend",
    "pixel_oracle",
]


def expert_mean(srs: torch.Tensor) -> torch.Tensor:
    """``srs (B,E,3,H,W)`` → ``(B,3,H,W)``."""
    return srs.mean(dim=1)


def pixel_oracle(srs: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """``srs (B,E,3,H,W)``, ``hr (B,3,H,W)`` → ``(B,3,H,W)``: per pixel, the expert whose Y is nearest the HR's."""
    err = (rgb_to_y(srs.flatten(0, 1)).unflatten(0, srs.shape[:2]) - rgb_to_y(hr).unsqueeze(1)).abs()  # (B,E,1,H,W)
    best = err.argmin(dim=1, keepdim=True)  # (B,1,1,H,W)
    return torch.gather(srs, 1, best.expand(-1, 1, 3, -1, -1)).squeeze(1)


def _squared_y_error(srs: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """``srs (B,E,3,H,W)``, ``hr (B,3,H,W)`` → ``(B·E,1,H,W)``: each expert's squared Y error per pixel."""
    return (rgb_to_y(srs.flatten(0, 1)) - rgb_to_y(hr).repeat_interleave(srs.shape[1], dim=0)).square()


def _tile_choice(err: torch.Tensor, srs: torch.Tensor, block: int) -> torch.Tensor:
    """``err (B·E,1,H,W)`` → ``(B,H,W)``: per ``block``×``block`` tile (the last row/column of tiles may be smaller),
    the expert with the lowest mean of ``err`` over the tile, spread back over the tile's pixels."""
    b, e, _, h, w = srs.shape
    tile_err = torch.nn.functional.avg_pool2d(err, block, stride=block, ceil_mode=True)  # (B·E,1,⌈H/b⌉,⌈W/b⌉)
    best = tile_err.view(b, e, *tile_err.shape[-2:]).argmin(dim=1)  # (B,⌈H/b⌉,⌈W/b⌉)
    return best.repeat_interleave(block, dim=1).repeat_interleave(block, dim=2)[:, :h, :w]


def _take(srs: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """``srs (B,E,3,H,W)``, ``best (B,H,W)`` expert indices → ``(B,3,H,W)``."""
    return torch.gather(srs, 1, best[:, None, None].expand(-1, 1, 3, -1, -1)).squeeze(1)


def block_oracle(srs: torch.Tensor, hr: torch.Tensor, block: int) -> torch.Tensor:
    """``srs (B,E,3,H,W)``, ``hr (B,3,H,W)`` → ``(B,3,H,W)``: per ``block``×``block`` tile (the last row/column of
    tiles may be smaller), the expert with the lowest mean squared Y error over the tile."""
    return _take(srs, _tile_choice(_squared_y_error(srs, hr), srs, block))


def _half_of_tile(n: int, block: int, device: torch.device) -> torch.Tensor:
    """``(n,)`` bool: position ``i`` lies in the second half of its ``block``-wide tile (a last, narrower tile is split
    in halves of its own width; a one-pixel tile has no second half)."""
    i = torch.arange(n, device=device)
    start = i - i % block
    width = (n - start).clamp(max=block)
    return (i - start) >= (width + 1) // 2


def heldout_block_oracle(srs: torch.Tensor, hr: torch.Tensor, block: int) -> torch.Tensor:
    """``srs (B,E,3,H,W)``, ``hr (B,3,H,W)`` → ``(B,3,H,W)``: each ``block``×``block`` tile is split into its left and
    right halves, and each half takes the expert with the lowest squared Y error over the *other* half.

    The block oracle (:func:`block_oracle`) picks an expert by the very pixels it is scored on, so part of its gain
    is the noise of that choice. Here no pixel's own error enters its choice: the gain that remains is what a gate
    that knew the best expert of each block region could carry to the pixels next to it — the part of the block
    oracle's headroom that is spatially coherent at that scale. (A one-pixel-wide last tile, only ever inside the
    scored border, has no other half and takes expert 0.)"""
    err = _squared_y_error(srs, hr)  # (B·E,1,H,W)
    right = _half_of_tile(srs.shape[-1], block, err.device)  # (W,)
    # the choice made on each half, for the pixels of the other one
    from_left, from_right = (_tile_choice(err * half, srs, block) for half in (~right, right))  # (B,H,W) each
    return _take(srs, torch.where(right, from_left, from_right))


def blend_weights(pairs_per_image, *, scale: int) -> torch.Tensor:
    """Least-squares ``w (E,)`` minimising Σ (Σ_e w_e·Y_e − Y_hr)² over every image's border-cropped pixels (border =
    ``scale``, as NTIRE's); ``pairs_per_image`` as for :func:`blend_stats`."""
    return blend_stats(pairs_per_image, border=scale).solve().float()


def image_blend(srs: torch.Tensor, hr: torch.Tensor, *, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``srs (1,E,3,H,W)``, ``hr (1,3,H,W)`` → (``(1,3,H,W)`` blend, its weights ``(E,)``): the least-squares fixed
    blend fitted on this one image (border ``scale`` cropped) — with the HR in hand, the ceiling of any method that
    adapts its expert weights per image but not within it."""
    if srs.shape[0] != 1:
        raise ValueError(f"one image at a time, got a batch of {srs.shape[0]}")
    w = blend_weights([(srs, hr)], scale=scale)
    return torch.einsum("e,bechw->bchw", w.to(srs.dtype), srs).clamp(0, 1), w
