"""Challenge outputs, shared by ``sr-fusion submit`` and the exported NTIRE code submission (``sr-fusion export``);
what runs on each image — the fusion or an ensemble — is chosen and built by :mod:`pipeline.inference.methods`.

* :func:`scan_folders` finds every output problem (an unwritable output folder, a folder or ``OUT.zip`` holding
  something this tool did not write) and decodes every input before any work is done; its
  :meth:`~pipeline.core.imageio.ImageScan.check` then reports every input problem in one go (missing/empty input
  folder, non-image files, sub-folders, unreadable or truncated images, an LR image too small for the experts —
  known once they are loaded). :func:`check_folders` does both at once.
* :func:`claim_output` makes the output folder this process's alone (a lock; a second writer is refused).
* :func:`super_resolve_files` runs the whole pipeline on each LR file and writes ``<stem>.png`` atomically into the
  output folder (``0901x4.png`` stays ``0901x4.png``); it yields the seconds each image took.
* :func:`run_model_dir` is the NTIRE entry point ``main(model_dir, input_path, output_path, device)`` of an exported
  package: ``model_dir`` holds the fusion checkpoint (or an ensemble's :data:`ENSEMBLER_FILE`; ``SHA256SUMS`` verified,
  covering every file of the folder), :data:`EXPERTS_YAML` and the expert checkpoints it names, relative to
  ``model_dir`` and pinned to the sha256 recorded when the fusion was trained (:func:`model_dir_choice`).
"""

from __future__ import annotations

import os
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from pipeline.core.atomic import default_file_mode
from pipeline.core.errors import ToolkitError, disk_full, is_disk_full
from pipeline.core.imageio import ImageScan, read_image, scan_images, write_image
from pipeline.core.outputs import (
    OutputPathError,
    check_output_dir,
    check_output_file,
    claim_output_dir,
    is_marked,
    scan_for_outputs,
)
from pipeline.inference.ensemblers import load as load_ensembler
from pipeline.inference.methods import FUSION, MethodChoice, SRMethod, build, choose
from pipeline.model.io import verify_checksums

__all__ = [
    "EXPERTS_YAML",
    "README",
    "SubmitError",
    "ZIP_COMMENT",
    "check_folders",
    "check_inputs",
    "check_output",
    "claim_output",
    "is_submission_dir",
    "is_submission_zip",
    "make_zip",
    "output_name",
    "readme_text",
    "run_model_dir",
    "scan_folders",
    "scan_inputs",
    "super_resolve_files",
    "zip_path",
]

EXPERTS_YAML = "experts.yaml"  # the experts of an exported model_dir (its paths relative to model_dir, its folder)
ENSEMBLER_FILE = "ensembler.json"  # in an exported model_dir of a training-free ensemble, instead of the fusion


class SubmitError(ToolkitError, RuntimeError):
    """A problem found before any work was done."""


MIN_LR_WHAT = "the experts' minimum LR side"


def scan_inputs(input_dir: Path) -> ImageScan:
    """Every LR file of ``input_dir`` decoded, every other entry noted (other files and sub-folders are problems:
    the submission must match the inputs one to one); :meth:`ImageScan.check` raises them all."""
    return scan_images(input_dir, other_files=False, subfolders=False)


def check_inputs(input_dir: Path, min_lr: int) -> list[Path]:
    """The LR files of ``input_dir``, sorted — after decoding every one of them: unreadable, truncated or non-image
    files, images smaller than ``min_lr``, other files and sub-folders are all reported together, one line each
    (:class:`pipeline.core.errors.BadInputsError`)."""
    return scan_inputs(input_dir).check(min_side=max(1, min_lr))


README = "readme.txt"
README_FIRST = "runtime per image [s] : "  # the NTIRE readme's first line: how a submission folder is recognised
ZIP_COMMENT = b"sr-fusion submission"  # written into every zip this tool makes: how it recognises its own


def is_submission_dir(folder: Path) -> bool:
    """A folder this tool wrote: marked by :func:`claim_output` (also when a killed run left it half-written), or —
    made before the marker existed — its ``readme.txt`` is an NTIRE readme and it holds only PNGs besides."""
    if is_marked(folder):
        return True
    readme = folder / README
    try:
        if not readme.read_text(encoding="utf-8").startswith(README_FIRST):
            return False
    except (OSError, UnicodeDecodeError):
        return False
    return all(
        c.name == README or c.name.startswith(".") or (c.is_file() and c.suffix.lower() == ".png")
        for c in folder.iterdir()
    )


def zip_path(out_dir: Path) -> Path:
    """``OUT.zip`` next to the output folder — the folder's full name plus ``.zip`` (``run.v1`` → ``run.v1.zip``)."""
    return out_dir.with_name(out_dir.name + ".zip")


def is_submission_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.comment == ZIP_COMMENT
    except (OSError, zipfile.BadZipFile):
        return False


def check_output(out_dir: Path, *, zip_too: bool = False) -> None:
    """The output folder (and ``OUT.zip`` with ``zip_too``) may be written: new, empty, or an earlier submission of
    this tool; never a folder or zip holding something else. Nothing is left behind here."""
    try:
        check_output_dir(out_dir, ours=is_submission_dir, label="output folder")
        if zip_too:
            check_output_file(zip_path(out_dir), ours=is_submission_zip, create_parents=True, label="zip")
    except OutputPathError as exc:
        raise SubmitError(str(exc)) from None


def scan_folders(input_dir: Path, output_dir: Path, *, zip_too: bool = False) -> ImageScan:
    """The output paths (:func:`check_output`, first: cheap), then every input decoded (:func:`scan_inputs`; its
    ``check(min_side=...)`` raises the input problems once the experts' minimum is known); the output folder must
    differ from the input folder, as the outputs keep the input file names."""
    try:
        if zip_too:
            check_output_file(zip_path(output_dir), ours=is_submission_zip, create_parents=True, label="zip")
        return scan_for_outputs(input_dir, output_dir, ours=is_submission_dir, other_files=False)
    except OutputPathError as exc:
        raise SubmitError(str(exc)) from None


def check_folders(input_dir: Path, output_dir: Path, *, min_lr: int, zip_too: bool = False) -> list[Path]:
    """:func:`scan_folders` and its check in one go → the LR files."""
    return scan_folders(input_dir, output_dir, zip_too=zip_too).check(min_side=max(1, min_lr), what=MIN_LR_WHAT)


def claim_output(output_dir: Path):
    """Context manager: the (checked) output folder, created, locked for this process, marked as this tool's (a
    hidden ``.sr-fusion-output``; never in the zip) and cleared of a killed run's temp files
    (:func:`pipeline.core.outputs.claim_output_dir`)."""
    return claim_output_dir(output_dir, tool="submit.py")


def output_name(lr_path: Path) -> str:
    """The SR file name of an LR file: its stem as a PNG (the NTIRE inputs are PNGs, so the very same name)."""
    return f"{lr_path.stem}.png"


def super_resolve_files(
    method: SRMethod,
    files: Sequence[Path],
    output_dir: Path,
    *,
    refine: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[float]:
    """Super-resolve each LR file into ``output_dir/<stem>.png``; yields the seconds of each image (I/O excluded).
    ``refine`` (e.g. the TSD-SR refiner) maps each ``sr (1,3,sH,sW)`` to the image that is written."""
    for f in files:
        lr = read_image(f)  # (1,3,H,W)
        if method.device.type == "cuda":
            torch.cuda.synchronize(method.device)
        t0 = time.perf_counter()
        sr = method.run(lr)  # (1,3,sH,sW)
        if refine is not None:
            sr = refine(sr)
        if method.device.type == "cuda":
            torch.cuda.synchronize(method.device)
        seconds = time.perf_counter() - t0
        write_image(output_dir / output_name(f), sr.cpu())  # a full disk: DiskFullError naming it, no temp left
        yield seconds


def readme_text(method: SRMethod, *, runtime: float, refined: bool = False) -> str:
    """The NTIRE ``readme.txt`` of a submission: runtime per image, CPU/GPU, extra data, description."""
    description = method.description
    if refined:
        description += " Perceptual refinement: one-step TSD-SR (SD3-medium + TSD-SR LoRA) on the fused image."
    return (
        f"runtime per image [s] : {runtime:.2f}\n"
        f"CPU[1] / GPU[0] : {0 if method.device.type == 'cuda' else 1}\n"
        f"Extra Data [1] / No Extra Data [0] : {1 if method.extra_data else 0}\n"
        f"Other description : {description}\n"
    )


def make_zip(out_dir: Path, names: list[str]) -> Path:
    """``OUT.zip`` beside the folder (:func:`zip_path`: ``run.v1`` → ``run.v1.zip``): the PNGs and readme.txt at the
    zip root, checked after writing, replacing only a zip this tool made (its comment)."""
    target = zip_path(out_dir)
    if target.exists() and not is_submission_zip(target):  # checked up front too; never replace a foreign zip
        raise SubmitError(f"{target} already exists and was not written by this tool: refusing to replace it")
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:  # PNGs are compressed already
            for name in names:
                zf.write(out_dir / name, arcname=name)
            zf.write(out_dir / README, arcname=README)
            zf.comment = ZIP_COMMENT
        with zipfile.ZipFile(tmp) as zf:
            pngs = [n for n in zf.namelist() if n.lower().endswith(".png")]
            if len(pngs) != len(names) or any("/" in n for n in zf.namelist()):
                raise SubmitError(f"zip check failed: {len(pngs)} PNGs for {len(names)} inputs")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, target)
    except BaseException as exc:  # a full disk above all: no half-written zip is left beside the folder
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(target, "the zip", exc) from None
        raise
    return target


def model_dir_choice(model_dir: Path) -> MethodChoice:
    """What an exported ``model_dir`` holds, as :func:`pipeline.inference.methods.choose` sees it: a training-free
    ensemble (its :data:`ENSEMBLER_FILE`, checksums verified here) or the fusion checkpoint, with the experts of
    :data:`EXPERTS_YAML`."""
    experts = model_dir / EXPERTS_YAML
    if (model_dir / ENSEMBLER_FILE).is_file():
        verify_checksums(model_dir)
        method = load_ensembler(model_dir / ENSEMBLER_FILE).method
        return choose(method, experts=experts, weights=model_dir / ENSEMBLER_FILE)
    return choose(FUSION, run=model_dir, experts=experts)


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
    output_dir = Path(output_path)
    scan = scan_folders(Path(input_path), output_dir)  # every problem of the folders, before a model is loaded
    with claim_output(output_dir):
        method = build(model_dir_choice(model_dir), device=str(device))
        files = scan.check(min_side=method.min_lr, what=MIN_LR_WHAT)
        seconds = list(super_resolve_files(method, files, output_dir))
    print(f"{len(files)} images super-resolved into {output_dir} ({sum(seconds) / len(seconds):.2f} s/image)")
    return [output_dir / output_name(f) for f in files]
