"""Pictures for people: a colormap, expert-gate composites, the crop where two images differ most, display sizes.

Everything is numpy on top of the toolkit's tensors (no plotting library): maps come in as tensors, pictures go
out as float32 ``(H,W,3)`` arrays in [0,1] that :func:`pipeline.core.imageio.write_image` saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "VIRIDIS",
    "CropBox",
    "colormap",
    "colormap_css_gradient",
    "expert_colours",
    "gate_composite",
    "box_mean",
    "choose_crop",
    "crop",
    "display_factor",
    "shrink",
]

# matplotlib's viridis (CC0) sampled at 17 evenly spaced points; linear interpolation between them is within
# 0.004 of the full 256-entry table.
VIRIDIS = np.array(
    [
        (0.2670, 0.0049, 0.3294),
        (0.2823, 0.0950, 0.4173),
        (0.2788, 0.1755, 0.4834),
        (0.2590, 0.2515, 0.5247),
        (0.2297, 0.3224, 0.5457),
        (0.1994, 0.3876, 0.5546),
        (0.1727, 0.4488, 0.5579),
        (0.1490, 0.5081, 0.5573),
        (0.1276, 0.5669, 0.5506),
        (0.1206, 0.6258, 0.5335),
        (0.1579, 0.6838, 0.5017),
        (0.2461, 0.7389, 0.4520),
        (0.3692, 0.7889, 0.3829),
        (0.5160, 0.8312, 0.2943),
        (0.6785, 0.8637, 0.1895),
        (0.8456, 0.8873, 0.0997),
        (0.9932, 0.9062, 0.1439),
    ],
    dtype=np.float64,
)  # (17, 3) RGB in [0,1]

# Expert colours: with up to 3 experts pure-ish red/green/blue, so equal gates read as grey; then more hues.
_PALETTE = (
    (0.90, 0.12, 0.10),
    (0.10, 0.72, 0.15),
    (0.12, 0.35, 0.95),
    (0.95, 0.62, 0.05),
    (0.62, 0.22, 0.82),
    (0.05, 0.75, 0.80),
    (0.85, 0.30, 0.60),
    (0.50, 0.50, 0.10),
)


@dataclass(frozen=True)
class CropBox:
    top: int
    left: int
    height: int
    width: int


def _as_map(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H,W) or (1,1,H,W) → (H,W) float64."""
    arr = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    arr = arr.astype(np.float64)
    while arr.ndim > 2 and arr.shape[0] == 1:  # drop the batch / channel axes of (1,1,H,W)
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected one map (H,W) or (1,1,H,W), got shape {tuple(np.shape(values))}")
    return arr


def colormap(
    values: torch.Tensor | np.ndarray, *, vmin: float = 0.0, vmax: float = 1.0, table: np.ndarray = VIRIDIS
) -> np.ndarray:
    """Map ``values`` (H,W) — or (1,1,H,W) — linearly from [vmin, vmax] onto ``table`` → (H,W,3) float32 in [0,1].
    Values outside the range are clipped; NaN/Inf are an error (a map that is not finite is a bug upstream)."""
    if not vmax > vmin:
        raise ValueError(f"vmax ({vmax}) must exceed vmin ({vmin})")
    v = _as_map(values)
    if not np.isfinite(v).all():
        raise ValueError("colormap: the map contains NaN or Inf")
    t = np.clip((v - vmin) / (vmax - vmin), 0.0, 1.0) * (len(table) - 1)  # (H,W) position in the table
    i = np.minimum(np.floor(t).astype(np.int64), len(table) - 2)
    frac = (t - i)[..., None]
    return ((1.0 - frac) * table[i] + frac * table[i + 1]).astype(np.float32)


def colormap_css_gradient(table: np.ndarray = VIRIDIS) -> str:
    """A CSS ``linear-gradient`` (left = vmin, right = vmax) for a colour-bar legend."""
    stops = ", ".join(
        f"rgb({int(round(r * 255))},{int(round(g * 255))},{int(round(b * 255))}) {100 * k / (len(table) - 1):.1f}%"
        for k, (r, g, b) in enumerate(table)
    )
    return f"linear-gradient(to right, {stops})"


def expert_colours(num_experts: int) -> list[tuple[float, float, float]]:
    """One distinct RGB colour in [0,1] per expert (the gate composite's legend)."""
    if not 1 <= num_experts <= len(_PALETTE):
        raise ValueError(f"colours exist for 1..{len(_PALETTE)} experts, got {num_experts}")
    return list(_PALETTE[:num_experts])


def gate_composite(gates: torch.Tensor) -> np.ndarray:
    """Per-pixel expert weights ``gates`` (1,E,H,W) (summing to 1 over E) → (H,W,3) float32: Σ_e gate_e · colour_e.
    A pure colour = one expert only; a mixed colour = shared weight (grey = equal weights for 3 experts)."""
    if gates.dim() != 4 or gates.shape[0] != 1:
        raise ValueError(f"expected gates (1,E,H,W), got {tuple(gates.shape)}")
    g = gates[0].detach().float().cpu().numpy().astype(np.float64)  # (E,H,W)
    colours = np.asarray(expert_colours(g.shape[0]), dtype=np.float64)  # (E,3)
    return np.clip(np.einsum("ehw,ec->hwc", g, colours), 0.0, 1.0).astype(np.float32)


def box_mean(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Mean of ``values`` (H,W) over every ``size`` = (h,w) window inside the image → (H−h+1, W−w+1), via an
    integral image (exact sums in float64, any window size at the same cost)."""
    h, w = size
    if not (1 <= h <= values.shape[0] and 1 <= w <= values.shape[1]):
        raise ValueError(f"window {size} does not fit in a {values.shape} map")
    s = np.zeros((values.shape[0] + 1, values.shape[1] + 1), dtype=np.float64)
    s[1:, 1:] = np.cumsum(np.cumsum(values, axis=0, dtype=np.float64), axis=1)
    return (s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]) / (h * w)


def choose_crop(a: torch.Tensor, b: torch.Tensor, *, size: int) -> CropBox:
    """The ``size``×``size`` window (clipped to the image) where images ``a`` and ``b`` (1,3,H,W) differ most:
    the maximum of the box-filtered per-pixel |a − b| (mean over RGB). Ties go to the top-left-most window."""
    if a.shape != b.shape or a.dim() != 4 or a.shape[:2] != (1, 3):
        raise ValueError(f"expected two (1,3,H,W) images of one size, got {tuple(a.shape)} and {tuple(b.shape)}")
    if size < 1:
        raise ValueError(f"crop size must be >= 1, got {size}")
    diff = (a[0].double() - b[0].double()).abs().mean(dim=0).cpu().numpy()  # (H,W)
    ch, cw = min(size, diff.shape[0]), min(size, diff.shape[1])
    score = box_mean(diff, (ch, cw))  # (H−ch+1, W−cw+1)
    top, left = np.unravel_index(int(np.argmax(score)), score.shape)
    return CropBox(top=int(top), left=int(left), height=ch, width=cw)


def crop(img: torch.Tensor, box: CropBox) -> torch.Tensor:
    """(1,C,H,W) → (1,C,box.height,box.width)."""
    return img[..., box.top : box.top + box.height, box.left : box.left + box.width]


def display_factor(height: int, width: int, max_side: int) -> int:
    """Smallest integer factor that brings the longer side to at most ``max_side``."""
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    return max(1, -(-max(height, width) // max_side))


def shrink(img: torch.Tensor, factor: int) -> torch.Tensor:
    """Area-average (B,C,H,W) by an integer ``factor`` (ragged edge pixels dropped); factor 1 returns ``img``."""
    if factor == 1:
        return img
    h, w = img.shape[-2] // factor * factor, img.shape[-1] // factor * factor
    if h == 0 or w == 0:
        raise ValueError(f"cannot shrink a {tuple(img.shape[-2:])} image by {factor}")
    return F.avg_pool2d(img[..., :h, :w].float(), factor)
