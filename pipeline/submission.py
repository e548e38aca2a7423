"""Challenge outputs, shared by scripts/submit.py and the exported NTIRE code submission (scripts/export_ntire.py).

* :func:`check_folders` finds every input problem (missing/empty input folder, non-image files, an LR image too
  small for the experts, an unwritable output folder) before any work is done.
* :func:`super_resolve_files` runs the whole pipeline on each LR file and writes ``<stem>.png`` atomically into the
  output folder (``0901x4.png`` stays ``0901x4.png``); it yields the seconds each image took.
* :func:`run_model_dir` is the NTIRE entry point ``main(model_dir, input_path, output_path, device)`` of an exported
  package: ``model_dir`` holds the fusion checkpoint (``SHA256SUMS`` verified, covering every file of the folder),
  :data:`EXPERTS_YAML` and the expert checkpoints it names, relative to ``model_dir`` and pinned to the sha256
  recorded when the fusion was trained.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from pipeline.errors import ToolkitError
from pipeline.imageio import IMAGE_EXTENSIONS, ImageReadError, image_size, list_images, read_image, write_image
from pipeline.inference import FusionPipeline, load_pipeline, super_resolve

__all__ = ["EXPERTS_YAML", "SubmitError", "check_folders", "check_inputs", "check_output",
           "output_name", "run_model_dir", "super_resolve_files"]

EXPERTS_YAML = "experts.yaml"  # the experts of an exported model_dir, checkpoints relative to model_dir


class SubmitError(ToolkitError, RuntimeError):
    """A problem found before any work was done."""


def check_inputs(input_dir: Path, min_lr: int) -> list[Path]:
    if not input_dir.is_dir():
        raise SubmitError(f"input folder not found: {input_dir}")
    files = list_images(input_dir)
    others = sorted(p.name for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS
                    and not p.name.startswith("."))
    if not files:
        raise SubmitError(f"no images in {input_dir}" + (f" (found only {others[:5]})" if others else ""))
    if others:
        raise SubmitError(f"{input_dir} holds non-image files: {others[:10]} — the submission must match the inputs")
    problems = []
    for f in files:
        try:
            h, w = image_size(f)
        except ImageReadError as exc:
            problems.append(str(exc))
            continue
        if min(h, w) < min_lr:
            problems.append(f"{f.name}: {w}x{h} is smaller than the experts' minimum LR side {min_lr}")
    if problems:
        raise SubmitError("bad input image(s): " + "; ".join(problems))
    return files


def check_output(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise SubmitError(f"output folder {out_dir} is not writable: {exc}") from exc


def check_folders(input_dir: Path, output_dir: Path, *, min_lr: int) -> list[Path]:
    """:func:`check_inputs`, then the output folder (created; must differ from the input folder, as the outputs keep
    the input file names). Returns the LR files, sorted."""
    files = check_inputs(input_dir, min_lr)
    if output_dir.resolve() == input_dir.resolve():
        raise SubmitError("the output folder must differ from the input folder (outputs keep the input file names)")
    check_output(output_dir)
    return files


def output_name(lr_path: Path) -> str:
    """The SR file name of an LR file: its stem as a PNG (the NTIRE inputs are PNGs, so the very same name)."""
    return f"{lr_path.stem}.png"


def super_resolve_files(
    pipe: FusionPipeline,
    files: Sequence[Path],
    output_dir: Path,
    *,
    tta: bool = False,
    refine: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[float]:
    """Super-resolve each LR file into ``output_dir/<stem>.png``; yields the seconds of each image (I/O excluded).
    ``refine`` (e.g. the TSD-SR refiner) maps each fused ``sr (1,3,sH,sW)`` to the image that is written."""
    for f in files:
        lr = read_image(f)  # (1,3,H,W)
        if pipe.device.type == "cuda":
            torch.cuda.synchronize(pipe.device)
        t0 = time.perf_counter()
        sr = super_resolve(pipe, lr, tta=tta)  # (1,3,sH,sW)
        if refine is not None:
            sr = refine(sr)
        if pipe.device.type == "cuda":
            torch.cuda.synchronize(pipe.device)
        seconds = time.perf_counter() - t0
        write_image(output_dir / output_name(f), sr.cpu())
        yield seconds


def run_model_dir(
    model_dir: str | os.PathLike,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    device: str | torch.device | None = None,
) -> list[Path]:
    """The NTIRE entry point (see the module docstring). ``model_dir`` may also name a file inside that folder;
    ``device`` None means CUDA when available. Returns the written files."""
    model_dir = Path(model_dir)
    if model_dir.is_file():
        model_dir = model_dir.parent
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(model_dir, experts_yaml=model_dir / EXPERTS_YAML, experts_root=model_dir, device=str(device))
    output_dir = Path(output_path)
    files = check_folders(Path(input_path), output_dir, min_lr=pipe.ensemble.min_lr_size)
    seconds = list(super_resolve_files(pipe, files, output_dir))
    print(f"{len(files)} images super-resolved into {output_dir} ({sum(seconds) / len(seconds):.2f} s/image)")
    return [output_dir / output_name(f) for f in files]
