"""The HTML fusion report as data → one self-contained page (scripts/report.py computes the data).

The page works from disk, offline: images are relative paths next to ``index.html``, charts are inline SVG, CSS and
the small zoom script are inline, and a Content-Security-Policy forbids loading anything from elsewhere.

* :func:`read_metrics_csv` reads a run's ``metrics.csv`` (``step,tag,value`` rows written by train.py).
* :func:`training_plots` turns it into SVG charts: training loss, validation PSNR of the fusion next to each expert
  and the experts' mean, the fusion's gain over the best expert, and the mean gate per expert.
* :func:`render_page` lays out a :class:`ReportPage`: the score table, then one section per image with zoomable
  crops, an overview showing where the crop lies, and the gate/difficulty maps with their legends.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

from pipeline.core.errors import ToolkitError
from pipeline.report.page_assets import CSP, CSS, JS
from pipeline.report.svg_plot import Series, line_plot_svg
from pipeline.report.visual import VIRIDIS, CropBox, colormap_css_gradient

__all__ = [
    "GENERATOR",
    "Method",
    "Score",
    "Tile",
    "ImageSection",
    "ReportPage",
    "MetricsError",
    "read_metrics_csv",
    "thin",
    "training_plots",
    "mean_scores",
    "render_page",
    "css_colour",
]

GENERATOR = "sr-fusion scripts/report.py"  # <meta name="generator">: marks a folder as holding a report
_MAX_PLOT_POINTS = 1500


class MetricsError(ToolkitError, ValueError):
    """metrics.csv is missing or malformed; the message names the file (and line)."""


@dataclass(frozen=True)
class Method:
    key: str  # "bicubic", "expert:<name>", "mean", "fusion"
    label: str


@dataclass(frozen=True)
class Score:
    psnr: float
    ssim: float


@dataclass(frozen=True)
class Tile:
    label: str
    src: str  # relative to index.html
    note: str = ""


@dataclass(frozen=True)
class ImageSection:
    name: str
    height: int  # SR / HR size
    width: int
    scores: Mapping[str, Score]  # Method.key → score
    box: CropBox  # the crop, in SR pixels
    box_reason: str  # e.g. "where fusion and calm differ most"
    overview: Tile  # the HR image, shrunk
    crops: tuple[Tile, ...]  # bicubic / experts / fusion / HR, all of one crop
    gate_composite: Tile | None
    gate_maps: tuple[Tile, ...]  # one per expert, colormapped in [0, 1]
    difficulty: Tile | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportPage:
    title: str
    facts: tuple[tuple[str, str], ...]  # (label, value) rows of the header
    methods: tuple[Method, ...]  # table columns, in order
    best_key: str  # the best expert's Method.key
    experts: tuple[str, ...]
    expert_colours: tuple[tuple[float, float, float], ...]
    images: tuple[ImageSection, ...]
    plots: tuple[str, ...]  # inline SVG
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------------------------------
# metrics.csv → charts
# ---------------------------------------------------------------------------------------------------------------------
def read_metrics_csv(path: str | os.PathLike) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """``metrics.csv`` → ``{tag: (steps, values)}`` in file order (a resumed run's rows are already pruned)."""
    p = Path(path)
    if not p.is_file():
        raise MetricsError(f"{p}: no such file (is the run directory right?)")
    data: dict[str, tuple[list[float], list[float]]] = {}
    with open(p, newline="") as fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        if header != ["step", "tag", "value"]:
            raise MetricsError(f"{p}: expected the header 'step,tag,value', got {header}")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            try:
                step, tag, value = int(row[0]), row[1], float(row[2])
            except (ValueError, IndexError) as exc:
                raise MetricsError(f"{p}, line {line}: malformed row {row} ({exc})") from exc
            steps, values = data.setdefault(tag, ([], []))
            steps.append(float(step))
            values.append(value)
    return {tag: (tuple(s), tuple(v)) for tag, (s, v) in data.items()}


def thin(steps: Sequence[float], values: Sequence[float], max_points: int) -> tuple[tuple[float, ...], ...]:
    """At most ``max_points`` points: consecutive buckets replaced by their mean step and mean finite value."""
    n = len(steps)
    if n <= max_points:
        return tuple(steps), tuple(values)
    out_s, out_v = [], []
    for b in range(max_points):
        lo, hi = b * n // max_points, (b + 1) * n // max_points
        vals = [v for v in values[lo:hi] if math.isfinite(v)]
        if vals:
            out_s.append(sum(steps[lo:hi]) / (hi - lo))
            out_v.append(sum(vals) / len(vals))
    return tuple(out_s), tuple(out_v)


def css_colour(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{int(round(min(max(c, 0.0), 1.0) * 255)):02x}" for c in rgb)


def _series(metrics, tag: str, label: str, colour: str, *, dashed: bool = False, width: float = 1.6) -> Series:
    steps, values = thin(*metrics.get(tag, ((), ())), _MAX_PLOT_POINTS)
    return Series(label=label, steps=steps, values=values, colour=colour, dashed=dashed, stroke_width=width)


def smooth(values: Sequence[float], *, span: float) -> tuple[float, ...]:
    """Exponential moving average with a time constant of ``span`` points, debiased at the start (as TensorBoard's
    smoothing): a noisy per-step loss becomes its trend. Non-finite values are skipped (kept as they are)."""
    weight = math.exp(-1.0 / max(span, 1e-9))
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        if math.isfinite(v):
            acc, norm = weight * acc + (1 - weight) * v, weight * norm + (1 - weight)
            out.append(acc / norm)
        else:
            out.append(v)
    return tuple(out)


def _no_chart(title: str, why: str) -> str:
    """What stands where a chart would have nothing to show: one line, not an empty frame."""
    return f'<p class="nochart"><b>{escape(title)}</b>: {escape(why)}</p>'


def _has_points(series: Sequence[Series]) -> bool:
    return any(math.isfinite(v) for s in series for v in s.values)


def training_plots(
    metrics: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]],
    *,
    experts: Sequence[str],
    colours: Sequence[tuple[float, float, float]],
) -> list[str]:
    """SVG charts of a run's metrics (tags as train.py writes them: ``train/loss``, ``train/gate_<e>``, ``val/psnr``,
    ``val/expert_<e>``, ``val/expert_mean``, ``val/gain_over_best_expert``)."""
    hexes = [css_colour(c) for c in colours]
    raw = _series(metrics, "train/loss", "loss (one step each)", "#222222", width=1.0)
    raw = dataclasses.replace(raw, opacity=0.25)  # faint, behind its trend
    trend = Series(
        label="smoothed",
        steps=raw.steps,
        # ~25 time constants over a long run; at least 3 points (a quickstart logs 12: one step's loss every 10)
        values=smooth(raw.values, span=max(3.0, len(raw.values) / 25)),
        colour="#222222",
        stroke_width=2.2,
    )
    plots = [
        line_plot_svg(
            [raw, trend],
            title="Training loss",
            xlabel="step",
            ylabel="loss",
            log_y=bool(raw.values) and min(raw.values) > 0,
        )
        if _has_points([raw])
        else _no_chart("Training loss", "no train/loss logged")
    ]

    means = {e: metrics[f"val/expert_{e}"][1] for e in experts if f"val/expert_{e}" in metrics}
    best = max(means, key=lambda e: sum(means[e]) / len(means[e])) if means else None
    val = [_series(metrics, "val/psnr", "fusion", "#000000", width=2.4)]
    val += [
        _series(metrics, f"val/expert_{e}", e + (" (best)" if e == best else ""), h, dashed=True)
        for e, h in zip(experts, hexes, strict=True)
    ]
    val.append(_series(metrics, "val/expert_mean", "experts' mean", "#888888", dashed=True))
    plots.append(
        line_plot_svg(val, title="Validation PSNR-Y (validation cache)", xlabel="step", ylabel="PSNR-Y [dB]")
        if _has_points(val)
        else _no_chart("Validation PSNR-Y", "none logged — the run had no validation set (data.val_cache)")
    )
    gain = _series(metrics, "val/gain_over_best_expert", "fusion − best expert", "#1a7f37", width=2.0)
    if gain.values:
        zero = Series(
            label="0 dB",
            steps=(gain.steps[0], gain.steps[-1]),
            values=(0.0, 0.0),
            colour="#999999",
            dashed=True,
            stroke_width=1.0,
        )
        plots.append(
            line_plot_svg(
                [gain, zero],
                title="Fusion gain over the best expert (validation)",
                xlabel="step",
                ylabel="ΔPSNR-Y [dB]",
            )
        )
    gates = [_series(metrics, f"train/gate_{e}", e, h) for e, h in zip(experts, hexes, strict=True)]
    plots.append(
        line_plot_svg(gates, title="Mean gate per expert (training batches)", xlabel="step", ylabel="mean gate")
        if _has_points(gates)
        else _no_chart("Mean gate per expert", "none logged (this fusion has no per-expert gate)")
    )
    return plots


# ---------------------------------------------------------------------------------------------------------------------
# page
# ---------------------------------------------------------------------------------------------------------------------
def mean_scores(images: Sequence[ImageSection], methods: Sequence[Method]) -> dict[str, Score]:
    n = len(images)
    return {
        m.key: Score(
            psnr=sum(i.scores[m.key].psnr for i in images) / n, ssim=sum(i.scores[m.key].ssim for i in images) / n
        )
        for m in methods
    }


def _delta(value: float, ndigits: int) -> str:
    cls = "pos" if value > 0 else "neg" if value < 0 else ""
    return f'<td class="{cls}">{value:+.{ndigits}f}</td>'


def _score_cells(scores: Mapping[str, Score], methods: Sequence[Method]) -> str:
    top = max(scores[m.key].psnr for m in methods)
    cells = []
    for m in methods:
        s = scores[m.key]
        cls = ' class="top"' if s.psnr == top else ""
        cells.append(f"<td{cls}>{s.psnr:.3f}</td><td>{s.ssim:.4f}</td>")
    return "".join(cells)


def _table(page: ReportPage) -> str:
    methods, best = page.methods, page.best_key
    best_label = next(m.label for m in methods if m.key == best)
    head1 = ['<th rowspan="2">image</th>']
    for m in methods:
        cls = ' class="best"' if m.key == best else ""
        star = " ★ best" if m.key == best else ""
        head1.append(f'<th colspan="2"{cls}>{escape(m.label)}{star}</th>')
    head1.append(f'<th colspan="2">fusion − {escape(best_label)}</th><th colspan="2">mean − {escape(best_label)}</th>')
    head2 = "<th>PSNR</th><th>SSIM</th>" * (len(methods) + 2)

    def deltas(scores: Mapping[str, Score]) -> str:
        b, f, mn = scores[best], scores["fusion"], scores["mean"]
        return (
            _delta(f.psnr - b.psnr, 3)
            + _delta(f.ssim - b.ssim, 4)
            + _delta(mn.psnr - b.psnr, 3)
            + _delta(mn.ssim - b.ssim, 4)
        )

    body = []
    for k, img in enumerate(page.images):
        body.append(
            f'<tr><td class="name"><a href="#img-{k}">{escape(img.name)}</a></td>'
            f"{_score_cells(img.scores, methods)}{deltas(img.scores)}</tr>"
        )
    mean = mean_scores(page.images, methods)
    foot = f'<tr><td class="name">mean ({len(page.images)} images)</td>{_score_cells(mean, methods)}{deltas(mean)}</tr>'
    return (  # in its own box: a wide table scrolls there, never the page
        f'<div class="scroll"><table class="scores"><thead><tr>{"".join(head1)}</tr><tr>{head2}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody><tfoot>{foot}</tfoot></table></div>"
    )


def _img(tile: Tile, *, cls: str, group: str, caption: str | None = None) -> str:
    cap = caption if caption is not None else tile.label + (f" — {tile.note}" if tile.note else "")
    return (
        f'<img class="{cls} zoomable" src="{escape(tile.src)}" alt="{escape(tile.label)}" '
        f'data-group="{group}" data-caption="{escape(cap)}" loading="eager">'
    )


def _section(k: int, img: ImageSection, page: ReportPage) -> str:
    b = img.box
    pct = (
        f"left:{100 * b.left / img.width:.3f}%;top:{100 * b.top / img.height:.3f}%;"
        f"width:{100 * b.width / img.width:.3f}%;height:{100 * b.height / img.height:.3f}%"
    )
    f, best = img.scores["fusion"], img.scores[page.best_key]
    out = [
        f'<section class="image" id="img-{k}"><h3>{escape(img.name)} <small>{img.width}×{img.height}</small></h3>',
        f"<p>fusion {f.psnr:.3f} dB / {f.ssim:.4f}; best expert {best.psnr:.3f} dB / {best.ssim:.4f} "
        f"(Δ {f.psnr - best.psnr:+.3f} dB)</p>",
    ]
    if img.notes:
        out.append('<div class="notes">' + "<br>".join(escape(n) for n in img.notes) + "</div>")
    out.append('<div class="row">')
    out.append(
        f'<figure><div class="ov">{_img(img.overview, cls="overview", group=f"o{k}")}'
        f'<div class="box" style="{pct}"></div></div><figcaption>crop {b.width}×{b.height} at x={b.left}, '
        f"y={b.top}: {escape(img.box_reason)}</figcaption></figure>"
    )
    out.append(f'<div class="row crops" style="--cw:{b.width}">')
    for t in img.crops:
        out.append(
            f"<figure>{_img(t, cls='crop', group=f'c{k}')}<figcaption><b>{escape(t.label)}</b>"
            f"{'<br>' + escape(t.note) if t.note else ''}</figcaption></figure>"
        )
    out.append("</div></div>")

    maps = []
    if img.gate_composite is not None:
        legend = "".join(
            f'<span class="swatch" style="background:{css_colour(c)}"></span>{escape(e)}'
            for e, c in zip(page.experts, page.expert_colours, strict=True)
        )
        maps.append(
            f"<figure>{_img(img.gate_composite, cls='map', group=f'm{k}')}<figcaption>"
            f'{escape(img.gate_composite.label)}<div class="legend">{legend}</div></figcaption></figure>'
        )
    for t in img.gate_maps + ((img.difficulty,) if img.difficulty is not None else ()):
        maps.append(
            f"<figure>{_img(t, cls='map', group=f'm{k}')}<figcaption>{escape(t.label)}"
            f"{'<br>' + escape(t.note) if t.note else ''}</figcaption></figure>"
        )
    if maps:
        cbar = (
            f'<figure><div class="cbar" style="background:{colormap_css_gradient(VIRIDIS)}"></div>'
            '<div class="cbar-labels"><span>0</span><span>0.5</span><span>1</span></div>'
            "<figcaption>colour scale of the gate and difficulty maps</figcaption></figure>"
        )
        out.append('<div class="row maps" style="margin-top:12px">' + "".join(maps) + cbar + "</div>")
    out.append("</section>")
    return "".join(out)


_ACTIVE = ' class="active"'


def render_page(page: ReportPage) -> str:
    """The whole ``index.html``."""
    facts = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in page.facts)
    notes = ('<div class="notes">' + "<br>".join(escape(n) for n in page.notes) + "</div>") if page.notes else ""
    zoom = "".join(
        f'<button type="button" data-zoom="{z}"{_ACTIVE if z == 3 else ""}>{z}×</button>' for z in (1, 2, 3, 4, 6)
    )
    sections = "".join(_section(k, img, page) for k, img in enumerate(page.images))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="{GENERATOR}">
<link rel="icon" href="data:,">
<title>{escape(page.title)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{escape(page.title)}</h1>
<table class="facts">{facts}</table>
{notes}
<h2>Scores (PSNR-Y dB / SSIM-Y, NTIRE: Y channel, border = scale)</h2>
{_table(page)}
<h2>Training curves</h2>
<div class="plots">{"".join(page.plots)}</div>
<h2>Images</h2>
<p class="zoombar">Crop zoom (nearest neighbour): {zoom} — click any image to enlarge; in the enlarged view
\u2190 / \u2192 step through the same crop of every method.</p>
{sections}
<script>{JS}</script>
</body>
</html>
"""
