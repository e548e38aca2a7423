"""The fusion report's analysis: per image, the experts and the fusion re-run on the LR (expert outputs, gate and
difficulty maps), scores of bicubic / each expert / the experts' mean / the submitted fusion, the crop where the
fusion differs most from the best expert; then the page (pipeline/report/page.py). The command line:
scripts/report.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.core.atomic import atomic_write_text
from pipeline.core.errors import BadInputsError, ToolkitError
from pipeline.core.imageio import (
    image_size,
    list_images,
    quantize_8bit,
    read_image,
    subfolder_problems,
    to_uint8,
    write_image,
)
from pipeline.core.metrics import crop_to_match, psnr_y, ssim_y
from pipeline.core.outputs import check_output_dir
from pipeline.core.resize import bicubic_upscale, make_lr
from pipeline.evaluation.scoring import decode_sizes, pair_images, size_mismatch, strip_scale_suffix
from pipeline.inference.pipeline import FusionPipeline
from pipeline.model.describe import describe_network
from pipeline.report.page import (
    GENERATOR,
    ImageSection,
    Method,
    ReportPage,
    Score,
    Tile,
    mean_scores,
    render_page,
    training_plots,
)
from pipeline.report.visual import (
    CropBox,
    choose_crop,
    colormap,
    crop,
    display_factor,
    expert_colours,
    gate_composite,
    shrink,
)

MAP_SIDE = 1024  # gate/difficulty maps are area-averaged to at most this many pixels on the long side
OVERVIEW_SIDE = 640
MISMATCH_LEVELS = 0.5  # mean |submitted − re-run| in grey levels above which an image is flagged


class ReportError(ToolkitError, RuntimeError):
    """A problem found before any work was done."""


@dataclass(frozen=True)
class Job:
    name: str
    sr: Path
    hr: Path
    lr: Path | None


@dataclass
class Analysis:
    """One image, before the best expert over the whole set is known."""

    name: str
    height: int
    width: int
    scores: dict[str, Score]
    candidates: dict[str, tuple[CropBox, list[tuple[str, np.ndarray, str]]]]  # expert key → box, (label, crop, note)
    composite: Tile | None
    gate_maps: tuple[Tile, ...]
    difficulty: Tile | None
    mismatch: bool  # the submitted image is not what a plain re-run of the fusion gives
    notes: tuple[str, ...]


# ---------------------------------------------------------------------------------------------------------------------
# checks (before any work)
# ---------------------------------------------------------------------------------------------------------------------
def find_metrics_csv(run: Path, ckpt: Path) -> Path:
    """metrics.csv of the run: in ``--run`` itself, or two levels above a checkpoint (runs/NAME/ckpt/step_X)."""
    for cand in (run / "metrics.csv", ckpt.parent.parent / "metrics.csv"):
        if cand.is_file():
            return cand
    raise ReportError(
        f"no metrics.csv in {run} (nor in {ckpt.parent.parent}): --run must be the run directory written by train.py"
    )


def build_jobs(sr_dir: Path, hr_dir: Path, lr_dir: Path | None, scale: int, *, min_lr: int = 1) -> list[Job]:
    """The report's images: SR/HR pairs (and their LR images) — after every file is decoded and every problem is
    found: unpaired SR, HR or LR files, sub-folders, unreadable files, SR/HR and LR/SR size mismatches and LR images
    smaller than the experts' ``min_lr`` are reported together, one line each
    (:class:`pipeline.core.errors.BadInputsError`)."""
    problems: list[str] = []
    pairs = pair_images(sr_dir, hr_dir, scale=scale, problems=problems)
    lr: dict[str, Path] = {}
    if lr_dir is not None:
        problems += subfolder_problems(lr_dir, label="LR folder")
        for f in list_images(lr_dir):
            key = strip_scale_suffix(f.stem, scale)
            if key in lr:
                problems.append(f"{lr_dir}: {lr[key].name} and {f.name} are both the LR image of {key!r}")
                continue
            lr[key] = f
        names = {p.name for p in pairs}
        missing = sorted(names - set(lr))
        extra = sorted(set(lr) - names)
        if missing:
            problems.append(f"{len(missing)} image(s) have no LR image in {lr_dir}: {', '.join(missing[:10])}")
        if extra:
            problems.append(f"{len(extra)} LR image(s) have no SR/HR pair: {', '.join(lr[k].name for k in extra[:10])}")
    files = {p for pair in pairs for p in (pair.sr, pair.hr)} | {lr[p.name] for p in pairs if p.name in lr}
    sizes = decode_sizes(files, problems)
    for p in pairs:
        if (mismatch := size_mismatch(p, sizes, scale=scale)) is not None:
            problems.append(mismatch)
        lr_file = lr.get(p.name)
        if lr_file in sizes and p.sr in sizes:
            (lh, lw), (sh, sw) = sizes[lr_file], sizes[p.sr]
            if (lh * scale, lw * scale) != (sh, sw):
                problems.append(
                    f"{lr_file.name} is {lw}x{lh} (WxH), x{scale} = {lw * scale}x{lh * scale}, but "
                    f"{p.sr.name} is {sw}x{sh}"
                )
        if lr_file is not None:
            lr_size = sizes.get(lr_file)
        else:  # the LR made from the HR: the SR's size over the scale
            lr_size = (sizes[p.sr][0] // scale, sizes[p.sr][1] // scale) if p.sr in sizes else None
        if lr_size is not None and min(lr_size) < min_lr:
            h, w = lr_size
            problems.append(f"{p.name}: LR {w}x{h} is smaller than the experts' minimum side {min_lr}")
    if problems:
        raise BadInputsError(f"{len(problems)} bad input(s); nothing was written", problems)
    return [Job(name=p.name, sr=p.sr, hr=p.hr, lr=lr.get(p.name)) for p in pairs]


def check_lr_sizes(jobs: list[Job], pipe: FusionPipeline) -> None:
    """Every LR image (given, or the one made from HR) must be large enough for every expert (:func:`build_jobs`
    with ``min_lr`` checks this together with everything else)."""

    need = pipe.ensemble.min_lr_size
    small = []
    for job in jobs:
        h, w = image_size(job.lr) if job.lr is not None else tuple(s // pipe.scale for s in image_size(job.sr))
        if min(h, w) < need:
            small.append(f"{job.name}: LR {w}x{h}")
    if small:
        raise ReportError(f"LR image(s) smaller than the experts' minimum side {need}: " + "; ".join(small[:10]))


def check_out_dir(out: Path, inputs: list[Path]) -> None:
    """``--out`` is not an input folder and may be written: new, empty, or an earlier report (its index.html says
    so) — the shared output guard (:func:`pipeline.core.outputs.check_output_dir`); nothing is created here."""
    for d in inputs:
        if out.resolve() == d.resolve():
            raise ReportError(f"--out {out} is an input folder")

    def ours(folder: Path) -> bool:
        index = folder / "index.html"
        return index.is_file() and f'content="{GENERATOR}"' in index.read_text(errors="replace")[:2000]

    check_output_dir(out, ours=ours, label="--out")


# ---------------------------------------------------------------------------------------------------------------------
# the work
# ---------------------------------------------------------------------------------------------------------------------
def _score(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> Score:
    return Score(psnr=float(psnr_y(sr, hr, crop_border=scale)[0]), ssim=float(ssim_y(sr, hr, crop_border=scale)[0]))


def _crop_note(img: torch.Tensor, hr: torch.Tensor) -> str:
    p = float(psnr_y(img, hr, crop_border=0)[0])
    return f"crop {p:.2f} dB" if np.isfinite(p) else "crop identical to HR"


@torch.inference_mode()
def analyse(pipe: FusionPipeline, job: Job, k: int, *, out: Path, crop_size: int) -> Analysis:
    scale, names = pipe.scale, list(pipe.ensemble.names)
    fused = read_image(job.sr)  # (1,3,sH,sW): the submitted image
    hr = crop_to_match(read_image(job.hr), fused, scale=scale)
    lr = read_image(job.lr) if job.lr is not None else make_lr(hr, scale)[1]  # (1,3,H,W)
    lr = lr.to(pipe.device)
    srs, feats = pipe.ensemble(lr)  # (1,E,3,sH,sW), E × (1,C_e,H,W)
    res = pipe.fusion.forward_with_precomputed(lr, srs, feats)
    srs = quantize_8bit(srs.float()).cpu()
    images = {"bicubic": quantize_8bit(bicubic_upscale(lr.cpu().float(), scale))}
    images.update({f"expert:{n}": srs[:, j] for j, n in enumerate(names)})
    images["mean"] = quantize_8bit(srs.mean(dim=1))
    images["fusion"] = fused
    scores = {key: _score(img, hr, scale) for key, img in images.items()}

    # one crop per candidate "best expert" (the best over the set is known only at the end)
    tiles = ["bicubic"] + [f"expert:{n}" for n in names] + ["fusion"]
    labels = {"bicubic": "bicubic", "fusion": "fusion (submitted)", **{f"expert:{n}": n for n in names}}
    candidates = {}
    for n in names:
        box = choose_crop(fused, images[f"expert:{n}"], size=crop_size)
        hr_c = crop(hr, box)
        row = [(labels[t], to_uint8(crop(images[t], box)), _crop_note(crop(images[t], box), hr_c)) for t in tiles]
        row.append(("HR", to_uint8(hr_c), "ground truth"))
        candidates[f"expert:{n}"] = (box, row)

    notes = []
    rerun = quantize_8bit(res.sr.float()).cpu()
    gap = (rerun - fused).abs() * 255.0
    mismatch = float(gap.mean()) > MISMATCH_LEVELS
    if mismatch:
        notes.append(
            f"The submitted image differs from a plain re-run of this run's fusion (mean |Δ| = "
            f"{float(gap.mean()):.2f} grey levels, max {float(gap.max()):.0f}): it was made with TTA, a "
            f"refiner, another checkpoint or other LR images. Gate and difficulty maps show the plain re-run."
        )

    prefix = f"img/{k:03d}"
    write_image(out / f"{prefix}_overview.png", shrink(hr, display_factor(*hr.shape[-2:], OVERVIEW_SIDE)))
    f = display_factor(*hr.shape[-2:], MAP_SIDE)
    gates = shrink(res.gates.float().cpu(), f)  # (1,E,h,w)
    shrunk = "" if f == 1 else f" (shown at 1/{f} size)"
    composite, per, difficulty = None, [], None
    if pipe.fusion.gating is not None:
        write_image(out / f"{prefix}_gates.png", gate_composite(gates))
        composite = Tile(label=f"gates, composite{shrunk}", src=f"{prefix}_gates.png")
        for j, n in enumerate(names):
            write_image(out / f"{prefix}_gate{j}.png", colormap(gates[0, j]))
            per.append(
                Tile(
                    label=f"gate of {n}{shrunk}",
                    src=f"{prefix}_gate{j}.png",
                    note=f"mean {float(res.gates[0, j].mean()):.3f}",
                )
            )
        diff = shrink(res.difficulty.float().cpu(), f)  # (1,1,h,w)
        write_image(out / f"{prefix}_difficulty.png", colormap(diff))
        difficulty = Tile(
            label=f"difficulty{shrunk}",
            src=f"{prefix}_difficulty.png",
            note=f"residual scale = 2·difficulty; mean {float(res.difficulty.mean()):.3f}",
        )
    else:
        notes.append(
            "This fusion model has gating switched off: the experts are averaged uniformly (no gate or "
            "difficulty maps)."
        )
    return Analysis(
        name=job.name,
        height=int(hr.shape[-2]),
        width=int(hr.shape[-1]),
        scores=scores,
        candidates=candidates,
        composite=composite,
        gate_maps=tuple(per),
        difficulty=difficulty,
        mismatch=mismatch,
        notes=tuple(notes),
    )


def finish_section(a: Analysis, k: int, *, best_key: str, best_label: str, out: Path) -> ImageSection:
    """Write the crops of the best expert's candidate and describe the image."""
    box, row = a.candidates[best_key]
    crops = []
    for j, (label, arr, note) in enumerate(row):
        src = f"img/{k:03d}_crop{j}.png"
        write_image(out / src, arr.astype(np.float32) / 255.0)
        crops.append(Tile(label=label, src=src, note=note))
    return ImageSection(
        name=a.name,
        height=a.height,
        width=a.width,
        scores=a.scores,
        box=box,
        box_reason=f"where the fusion differs most from the best expert ({best_label})",
        overview=Tile(label=f"{a.name}: HR, crop outlined", src=f"img/{k:03d}_overview.png"),
        crops=tuple(crops),
        gate_composite=a.composite,
        gate_maps=a.gate_maps,
        difficulty=a.difficulty,
        notes=a.notes,
    )


def prune_images(out: Path, keep: set[str]) -> None:
    """Remove PNGs of an earlier report in OUT/img that this page does not reference."""
    for p in (out / "img").glob("*.png"):
        if f"img/{p.name}" not in keep:
            p.unlink()


def _under(path: Path, folder: Path) -> Path:
    """``path`` written under ``folder`` as the user gave it (``runs/x/ckpt/last``), when it lies there."""
    try:
        return folder / path.resolve().relative_to(folder.resolve())
    except ValueError:
        return path


def default_title(experts: list[str], images: int) -> str:
    """``"Fusion of hat_s, dat_s and nafnet_sr_s on 3 images"`` — no internal folder names."""
    names = experts[0] if len(experts) == 1 else ", ".join(experts[:-1]) + " and " + experts[-1]
    if len(experts) > 6:
        names = f"{len(experts)} experts ({', '.join(experts[:3])}, …)"
    return f"Fusion of {names} on {images} image{'s' if images != 1 else ''}"


def write_report(
    pipe: FusionPipeline,
    jobs: list[Job],
    *,
    run: Path,
    sr: Path,
    hr: Path,
    lr: Path | None,
    out: Path,
    crop_size: int,
    metrics: dict,
    progress: bool = True,
    title: str | None = None,
) -> tuple[str, dict[str, Score]]:
    """Analyse every job, write ``out/img/*.png``, ``out/scores.json`` and ``out/index.html`` (last), remove PNGs
    the page does not use → (best expert, mean score per method). ``title``: the page's heading, in the user's
    words (default: what was fused, on how many images — the folders are in the facts below it)."""
    names = list(pipe.ensemble.names)
    analyses = [
        analyse(pipe, job, k, out=out, crop_size=crop_size)
        for k, job in enumerate(tqdm(jobs, desc="report", unit="img", disable=not progress))
    ]

    mean_psnr = {n: sum(a.scores[f"expert:{n}"].psnr for a in analyses) / len(analyses) for n in names}
    best = max(names, key=lambda n: mean_psnr[n])
    sections = [
        finish_section(a, k, best_key=f"expert:{best}", best_label=best, out=out) for k, a in enumerate(analyses)
    ]
    methods = (
        Method(key="bicubic", label="bicubic"),
        *(Method(key=f"expert:{n}", label=n) for n in names),
        Method(key="mean", label="experts' mean"),
        Method(key="fusion", label="fusion"),
    )
    colours = tuple(expert_colours(len(names)))
    extra = pipe.extra
    params = sum(p.numel() for p in pipe.fusion.parameters())
    facts = (
        ("run", str(run)),
        ("checkpoint", f"{_under(Path(pipe.checkpoint), run)} (step {extra.get('step', '?')})"),
        ("experts", ", ".join(f"{fp.name} ({fp.architecture})" for fp in pipe.recorded)),
        ("fusion network", describe_network(pipe.fusion.config, params=params)),
        ("SR images (fusion column)", str(sr)),
        ("HR images", str(hr)),
        ("LR images", str(lr) if lr is not None else "made from HR (MATLAB-compatible bicubic)"),
        ("scale / crop", f"x{pipe.scale} / {crop_size}×{crop_size} SR pixels"),
        ("best expert", f"{best} (highest mean PSNR-Y over these {len(jobs)} images)"),
    )
    flagged = sum(a.mismatch for a in analyses)
    notes = (
        (
            f"{flagged} of {len(jobs)} submitted images differ from a plain re-run of this run's fusion (see the "
            f"images' notes).",
        )
        if flagged
        else ()
    )
    page = ReportPage(
        title=title or default_title(names, len(jobs)),
        facts=facts,
        methods=methods,
        best_key=f"expert:{best}",
        experts=tuple(names),
        expert_colours=colours,
        images=tuple(sections),
        plots=tuple(training_plots(metrics, experts=names, colours=colours)),
        notes=notes,
    )
    keep = {t.src for s in sections for t in (s.overview, *s.crops, *s.gate_maps)}
    keep |= {t.src for s in sections for t in (s.gate_composite, s.difficulty) if t is not None}
    mean = mean_scores(sections, methods)
    scores = {
        "best_expert": best,
        "methods": [m.key for m in methods],
        "scale": pipe.scale,
        "images": [
            {
                "name": s.name,
                "crop": {"left": s.box.left, "top": s.box.top, "width": s.box.width, "height": s.box.height},
                "scores": {k: {"psnr": v.psnr, "ssim": v.ssim} for k, v in s.scores.items()},
            }
            for s in sections
        ],
        "mean": {k: {"psnr": v.psnr, "ssim": v.ssim} for k, v in mean.items()},
    }
    atomic_write_text(out / "scores.json", json.dumps(scores, indent=2))
    atomic_write_text(out / "index.html", render_page(page))
    prune_images(out, keep)
    return best, mean
