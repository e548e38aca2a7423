"""The experts → cache stage: run the frozen experts once over a set of images and write the HDF5 cache
(layout: :mod:`cache.schema`; crash-safe writes: :mod:`cache.writer`). ``scripts/extract_features.py`` is its CLI.

* :func:`build_jobs` pairs the inputs (several HR folders form one cache; LR ``NAMEx4`` pairs with HR ``NAME``).
* :func:`check_job` decodes every input fully and checks its sizes before any work, so all bad inputs are listed
  together (:class:`pipeline.core.errors.BadInputsError`) or, with ``skip_bad``, recorded in the index and skipped.
* :func:`extract` runs the experts (each expert's ×8 self-ensemble with ``self_ensemble=EXPERTS``) and writes every
  image; under ``torchrun`` each rank takes ``i % world == rank`` and rank 0 writes the index. Killed at any moment
  and rerun, it redoes only the images without a finished file.
* :func:`verify` re-reads every sample against its checksums.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from cache.reader import CacheReader
from cache.schema import EXTRACT_LAYOUT, SELF_ENSEMBLE_KEY, CacheLayout, CacheMeta
from cache.writer import CacheWriter, check_cache_out, data_dir_of, encode_srs, lock_cache, part_path, wipe_cache
from experts.ensemble import ExpertEnsemble
from experts.spec import EnsembleSpec, load_ensemble_spec
from pipeline.core.distributed import setup_distributed
from pipeline.core.errors import BadInputsError, ToolkitError
from pipeline.core.imageio import (
    ImageReadError,
    list_images,
    read_image,
    read_image_array,
    strip_scale_suffix,
    subfolder_problems,
    to_uint8,
)
from pipeline.core.resize import make_lr
from pipeline.core.self_ensemble import SelfEnsemble

__all__ = [
    "ExtractError",
    "Job",
    "SkipImage",
    "build_jobs",
    "build_jobs_checked",
    "check_job",
    "extract",
    "load_pair",
    "verify",
]


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    hr: Path | None
    lr: Path | None


class SkipImage(Exception):
    """This input is bad: reported before any work (or skipped with --skip-bad)."""


class ExtractError(ToolkitError, ValueError):
    """The inputs of an extraction do not form a cache (no images, unpaired folders, duplicate names)."""


def check_job(job: Job, scale: int, min_lr: int) -> str | None:
    """Why ``job`` cannot be cached (its files fully decoded, sizes checked as :func:`load_pair` will), or None."""
    try:
        hr = read_image_array(job.hr) if job.hr is not None else None
        lr = read_image_array(job.lr) if job.lr is not None else None
    except ImageReadError as exc:
        return str(exc)
    if lr is None:
        hh, hw = hr.shape[:2]
        if min(hh, hw) < scale:
            return f"{job.hr}: HR {hw}x{hh} is smaller than the scale"
        h, w = hh // scale, hw // scale
    else:
        h, w = lr.shape[:2]
        if hr is not None:
            hh, hw = hr.shape[:2]
            if (hh - hh % scale, hw - hw % scale) != (scale * h, scale * w):
                return f"{job.lr}: LR {w}x{h} does not match HR {job.hr} ({hw}x{hh}) at x{scale}"
    if min(h, w) < min_lr:
        return f"{job.lr or job.hr}: LR {w}x{h} is smaller than the experts' minimum side {min_lr}"
    return None


def build_jobs(hr_dirs: Sequence[Path], lr_dir: Path | None, scale: int) -> list[Job]:
    """Inputs in a stable order (sorted by name); LR ``NAMEx{s}`` pairs with HR ``NAME``.

    Several HR folders (e.g. T91 and BSD200) form one cache; a name found in two of them is an error (the cache is
    keyed by name)."""
    if not hr_dirs and lr_dir is None:
        raise ExtractError("give --hr and/or --lr (or --verify with an existing --out)")
    if len(hr_dirs) > 1 and lr_dir is not None:
        raise ExtractError("--lr pairs with a single --hr folder")
    for folder in [*hr_dirs, *([lr_dir] if lr_dir is not None else [])]:
        if not folder.is_dir():
            raise ExtractError(f"image folder not found: {folder}")
    hr: dict[str, Path] = {}
    for hr_dir in hr_dirs:
        for p in list_images(hr_dir):
            if p.stem in hr:
                raise ExtractError(f"image name {p.stem!r} is in two HR folders: {hr[p.stem]} and {p}")
            hr[p.stem] = p
    hr_dir = hr_dirs[0] if hr_dirs else None
    lr = {strip_scale_suffix(p.stem, scale): p for p in list_images(lr_dir)} if lr_dir is not None else {}
    if hr_dir is not None and lr_dir is not None:
        missing = sorted(set(hr) ^ set(lr))
        if missing:
            raise ExtractError(f"HR and LR folders do not pair up; unmatched: {missing[:10]}")
    names = sorted(hr or lr)
    if not names:
        raise ExtractError(f"no images found in {', '.join(map(str, hr_dirs)) or lr_dir}")
    return [Job(name=n, hr=hr.get(n), lr=lr.get(n)) for n in names]


def build_jobs_checked(hr_dirs: Sequence[Path], lr_dir: Path | None, scale: int) -> tuple[list[Job], list[str]]:
    """:func:`build_jobs`, plus one line for each sub-folder of an HR or LR folder: images are never searched in
    sub-folders, so a nested folder is reported with the bad inputs (and left out with ``skip_bad``)."""
    jobs = build_jobs(hr_dirs, lr_dir, scale)
    folders = [("HR folder", d) for d in hr_dirs] + ([("LR folder", lr_dir)] if lr_dir is not None else [])
    return jobs, [line for label, folder in folders for line in subfolder_problems(folder, label=label)]


def load_pair(job: Job, scale: int, min_lr: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """→ ``lr (1,3,h,w)`` on 8-bit levels and ``hr (1,3,s*h,s*w)`` or None. Raises SkipImage with the reason."""
    try:
        hr = read_image(job.hr) if job.hr is not None else None
        lr = read_image(job.lr) if job.lr is not None else None
    except ImageReadError as exc:
        raise SkipImage(str(exc)) from exc
    if lr is None:
        if min(hr.shape[-2:]) < scale:
            raise SkipImage(f"{job.hr}: HR {hr.shape[-1]}x{hr.shape[-2]} is smaller than the scale")
        hr, lr = make_lr(hr, scale)
    elif hr is not None:
        h, w = lr.shape[-2:]
        hh, hw = hr.shape[-2:]
        if (hh - hh % scale, hw - hw % scale) != (scale * h, scale * w):
            raise SkipImage(f"{job.lr}: LR {w}x{h} does not match HR {job.hr} ({hw}x{hh}) at x{scale}")
        hr = hr[..., : scale * h, : scale * w]
    h, w = lr.shape[-2:]
    if min(h, w) < min_lr:
        raise SkipImage(f"{job.lr or job.hr}: LR {w}x{h} is smaller than the experts' minimum side {min_lr}")
    return lr, hr


def extract(
    *,
    experts: Path,
    out: Path,
    hr_dirs: Sequence[Path] = (),
    lr_dir: Path | None = None,
    device: str | None = None,
    compression: str = "none",
    layout: CacheLayout = EXTRACT_LAYOUT,
    overwrite: bool = False,
    skip_bad: bool = False,
    self_ensemble: SelfEnsemble = SelfEnsemble.NONE,
) -> tuple[list[str], list[dict]]:
    """Cache every image of ``hr_dirs`` / ``lr_dir`` at ``out`` (see the module docstring) → (names in the index,
    skipped inputs with their reasons); the names are rank 0's (other ranks get an empty list). ``layout`` says
    whether the hooked features are stored and at what precision the SR images are (:class:`CacheLayout`)."""
    check_cache_out(out)  # before anything is read or written: never replace a file that is not a cache
    rank, world, local_rank = setup_distributed()
    lock = None
    writer = None
    try:
        lock = lock_cache(out, rank=rank)  # a second extraction into this cache stops here, before the experts load
        spec = load_ensemble_spec(experts)
        device = device or (f"cuda:{local_rank}" if world > 1 and torch.cuda.is_available() else None)
        if device is not None:
            spec = EnsembleSpec(
                experts=tuple(dataclasses.replace(e, device=device) for e in spec.experts), scale=spec.scale
            )
        scale = spec.scale
        jobs, listing = build_jobs_checked(hr_dirs, lr_dir, scale)
        ensemble = ExpertEnsemble.from_spec(spec, gather_device="cpu")
        min_lr = ensemble.min_lr_size
        already = data_dir_of(out)
        pending = [j for j in jobs if overwrite or not part_path(already, j.name).is_file()]
        bad = {}
        for j in tqdm(pending, desc="check inputs", unit="img", disable=rank != 0 or len(pending) < 50):
            reason = check_job(j, scale, min_lr)
            if reason is not None:
                bad[j.name] = reason
        if (bad or listing) and not skip_bad:
            raise BadInputsError(
                f"{len(bad) + len(listing)} bad input(s); nothing was written (fix or remove them, or rerun with "
                "--skip-bad to leave them out)",
                [*listing, *bad.values()],
            )
        for problem in listing if rank == 0 else ():
            tqdm.write(f"extract_features: skipped {problem}", file=sys.stderr)
        meta = CacheMeta(
            scale=scale,
            experts=tuple(
                {**fp.to_dict(), **({SELF_ENSEMBLE_KEY: 8} if self_ensemble.expert_passes == 8 else {})}
                for fp in ensemble.fingerprints
            ),
            lr_method="given" if lr_dir is not None else "matlab_bicubic",
            layout=layout,
        )

        if overwrite and world > 1:  # rank 0 wipes before anyone writes
            if rank == 0:
                wipe_cache(out)
            dist.barrier()
        writer = CacheWriter(
            out, meta=meta, compression=compression, overwrite=overwrite and world == 1, rank=rank, lock=lock
        )
        mine = [j for i, j in enumerate(jobs) if i % world == rank]
        todo = [j for j in mine if not writer.is_done(j.name)]
        if rank == 0:
            cached = sum(writer.is_done(j.name) for j in jobs)
            print(
                f"extract_features: {len(jobs)} images ({cached} already cached), experts {list(ensemble.names)} "
                f"(x{scale}), {world} process(es)"
            )
        skipped: list[dict] = [{"name": n, "reason": r} for n, r in bad.items() if n in {j.name for j in mine}]
        for entry in skipped:
            tqdm.write(f"extract_features: skipped {entry['reason']}", file=sys.stderr)
        todo = [j for j in todo if j.name not in bad]
        bar = tqdm(todo, desc=f"extract[rank {rank}]" if world > 1 else "extract", unit="img", position=rank)
        for job in bar:
            try:
                lr, hr = load_pair(job, scale, min_lr)
            except SkipImage as exc:  # the file changed since the check
                if not skip_bad:
                    raise BadInputsError("a bad input; nothing more was written", [str(exc)]) from None
                skipped.append({"name": job.name, "reason": str(exc)})
                tqdm.write(f"extract_features: skipped {exc}", file=sys.stderr)
                continue
            res = ensemble.outputs(lr, self_ensemble)  # srs (1,E,3,sH,sW), feats E×(1,C_e,H,W)
            writer.write_sample(
                job.name,
                lr=to_uint8(lr).transpose(2, 0, 1).copy(),  # (3,h,w)
                hr=None if hr is None else to_uint8(hr).transpose(2, 0, 1).copy(),
                srs=encode_srs(res.srs[0], layout.sr_dtype),
                feats=[f[0].numpy().astype(np.float16) for f in res.feats] if layout.has_features else [],
                source_hr=str(job.hr or ""),
                source_lr=str(job.lr or ""),
            )
        bar.close()

        if world > 1:
            gathered: list[list[dict]] = [[] for _ in range(world)]
            dist.all_gather_object(gathered, skipped)
            skipped = [s for part in gathered for s in part]
            dist.barrier()
        done: list[str] = []
        if rank == 0:
            skipped_names = {s["name"] for s in skipped}
            done = [j.name for j in jobs if j.name not in skipped_names]  # write_index checks every file exists
            writer.write_index(done, skipped=skipped)
            print(
                f"extract_features: cache {out} holds {len(done)} images"
                + (f", {len(skipped)} skipped" if skipped else "")
            )
        return done, skipped
    finally:
        if writer is not None:
            writer.close()
        if lock is not None:
            lock.release()  # a no-op once the writer has released it
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def verify(path: Path) -> tuple[CacheReader, list[str], float]:
    """Re-read every sample of the cache at ``path`` against its checksums → (reader, problems, seconds)."""
    reader = CacheReader(path)
    t0 = time.time()
    problems = reader.verify()
    return reader, problems, time.time() - t0
