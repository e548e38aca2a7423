"""Line charts as self-contained SVG text (no plotting library): training curves for the HTML report.

    svg = line_plot_svg([Series(label="fusion", steps=(1, 2), values=(30.1, 30.4), colour="#000")],
                        title="Validation PSNR-Y", xlabel="step", ylabel="dB")

Non-finite points are dropped (and non-positive ones on a log axis); a series with a single point is drawn as a
dot; short series get a marker on every point; with no point at all the chart says ``empty_text``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Series", "nice_ticks", "log_ticks", "line_plot_svg"]

_MARKERS_UP_TO = 40  # series with at most this many points get a dot on each


@dataclass(frozen=True)
class Series:
    label: str
    steps: tuple[float, ...]
    values: tuple[float, ...]
    colour: str = "#000000"  # any CSS colour
    dashed: bool = False
    stroke_width: float = 1.6
    opacity: float = 1.0  # e.g. a raw curve drawn faint behind its smoothed version


def nice_ticks(lo: float, hi: float, *, count: int = 5, integer: bool = False) -> list[float]:
    """About ``count`` round values (1, 2, 5 × 10^k steps; with ``integer`` at least 1) inside [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"need a finite range lo < hi, got [{lo}, {hi}]")
    raw = (hi - lo) / max(count, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    if integer:
        step = max(step, 1.0)
    first = math.ceil(lo / step - 1e-9) * step
    n = int(math.floor((hi - first) / step + 1e-9))
    return [round(first + k * step, 12) for k in range(n + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten inside [lo, hi] (with 2× and 5× when the range spans fewer than three decades); for a range
    too narrow to hold three of those, round linear values."""
    if not (0 < lo < hi):
        raise ValueError(f"need 0 < lo < hi, got [{lo}, {hi}]")
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1,) if math.log10(hi / lo) >= 3 else (1, 2, 5)
    ticks = [float(f"{m}e{k}") for k in range(k0, k1 + 1) for m in mults]  # exact decimals: 5e-2, not 0.05000…01
    inside = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    if len(inside) >= 3:
        return inside
    return [t for t in nice_ticks(lo, hi, count=4) if t > 0]  # a narrow range: round linear values instead


def _tick_label(v: float, step: float | None) -> str:
    if step is None:  # log axis
        return f"{v:g}"
    if abs(v) >= 10000 and step >= 1000:
        return f"{v / 1000:g}k"
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{v:.{decimals}f}"


def _padded(lo: float, hi: float, *, log: bool) -> tuple[float, float]:
    if log:
        a, b = math.log10(lo), math.log10(hi)
        pad = 0.05 * (b - a) if b > a else 0.5
        return 10.0 ** (a - pad), 10.0 ** (b + pad)
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi) * 0.01, 1.0)
    return lo - pad, hi + pad


def line_plot_svg(
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
    width: int = 640,
    height: int = 300,
    legend_width: int = 160,
    empty_text: str = "no data",
) -> str:
    """An ``<svg>`` element (inline-able in HTML) with one polyline per series, axes, grid and a legend."""
    left, right, top, bottom = 64, legend_width + 16, 30, 44
    pw, ph = width - left - right, height - top - bottom
    clean = []
    for s in series:
        pts = [
            (float(x), float(y))
            for x, y in zip(s.steps, s.values, strict=True)
            if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y)
        ]
        clean.append((s, pts))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left + pw / 2:.1f}" y="18" text-anchor="middle" font-size="14" font-weight="600">'
        f"{escape(title)}</text>",
    ]
    all_pts = [p for _, pts in clean for p in pts]
    if not all_pts:
        out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#bbb"/>')
        out.append(
            f'<text x="{left + pw / 2:.1f}" y="{top + ph / 2:.1f}" text-anchor="middle" font-size="13" '
            f'fill="#777">{escape(empty_text)}</text></svg>'
        )
        return "".join(out)

    xs, ys = [p[0] for p in all_pts], [p[1] for p in all_pts]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = _padded(min(ys), max(ys), log=log_y)

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        if log_y:
            return top + (1 - (math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0))) * ph
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    # grid, ticks and labels
    xt = nice_ticks(x0, x1, count=6, integer=all(x == int(x) for x in xs))
    xstep = xt[1] - xt[0] if len(xt) > 1 else max(abs(x1 - x0), 1.0)
    for t in xt:
        x = px(t)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#eee"/>')
        out.append(
            f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" font-size="11" fill="#444">'
            f"{_tick_label(t, xstep)}</text>"
        )
    if log_y:
        yt, ystep = log_ticks(y0, y1), None
    else:
        yt = nice_ticks(y0, y1, count=5)
        ystep = yt[1] - yt[0] if len(yt) > 1 else max(abs(y1 - y0), 1e-12)
    for t in yt:
        y = py(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#444">'
            f"{_tick_label(t, ystep)}</text>"
        )
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" font-size="12">{escape(xlabel)}</text>'
    )
    out.append(
        f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
        f'font-size="12">{escape(ylabel + (" (log)" if log_y else ""))}</text>'
    )

    # series and legend
    for k, (s, pts) in enumerate(clean):
        colour = escape(s.colour)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        faint = f' opacity="{s.opacity:g}"' if s.opacity < 1 else ""  # the line and its markers
        key_faint = f' stroke-opacity="{s.opacity:g}"' if s.opacity < 1 else ""  # its legend key
        last = f": {pts[-1][1]:.6g} at step {pts[-1][0]:g}" if pts else ": no data"
        out.append(f"<g{faint}><title>{escape(s.label + last)}</title>")
        if len(pts) > 1:
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            out.append(
                f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                f'stroke-width="{s.stroke_width}"{dash} stroke-linejoin="round"/>'
            )
        if 0 < len(pts) <= _MARKERS_UP_TO:
            out.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.6" fill="{colour}"/>' for x, y in pts)
        out.append("</g>")
        ly = top + 8 + 18 * k
        lx = left + pw + 12
        out.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{colour}" '
            f'stroke-width="2.5"{dash}{key_faint}/>'
        )
        label = s.label if len(s.label) <= 22 else s.label[:21] + "…"
        grey = "" if pts else ' fill="#999"'
        out.append(f'<text x="{lx + 28}" y="{ly + 4}" font-size="12"{grey}>{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)
