"""Pairing SR outputs with ground truth and scoring them the way the NTIRE organisers do.

File pairing is by stem, accepting the challenge naming (``0901x4.png`` ↔ ``0901.png``). Missing or extra files
and size mismatches are errors found *before* any scoring, each listing the offending names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline.core.errors import BadInputsError, ToolkitError
from pipeline.core.imageio import (
    ImageReadError,
    image_size,
    list_images,
    read_image,
    read_image_array,
    strip_scale_suffix,
    subfolder_problems,
)
from pipeline.core.metrics import crop_to_match, psnr_y, ssim_y

__all__ = [
    "ImagePair",
    "PairingError",
    "pair_images",
    "check_pairs",
    "check_sizes",
    "is_scores_json",
    "score_fidelity",
    "strip_scale_suffix",
    "mean_of",
]


class PairingError(ToolkitError, ValueError):
    """SR and HR folders do not correspond one-to-one."""


@dataclass(frozen=True)
class ImagePair:
    name: str  # the HR stem, e.g. "0901"
    sr: Path
    hr: Path


def _index(files: list[Path], folder: Path, problems: list[str] | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            line = f"{folder}: two images share the stem {f.stem!r} ({out[f.stem].name}, {f.name})"
            if problems is None:
                raise PairingError(line)
            problems.append(line)
            continue
        out[f.stem] = f
    return out


def pair_images(
    sr_dir: str | Path, hr_dir: str | Path, *, scale: int, problems: list[str] | None = None
) -> list[ImagePair]:
    """Pair every SR image with its HR image by stem (``NAMEx{scale}`` matches ``NAME``); errors on any mismatch —
    or, given a ``problems`` list, appends them there (with one line per sub-folder of either folder) and returns
    the pairs found, so that :func:`check_pairs` reports them together with every file's own problems."""
    sr_dir, hr_dir = Path(sr_dir), Path(hr_dir)
    sr_files, hr_files = list_images(sr_dir), list_images(hr_dir)
    if not sr_files:
        raise PairingError(f"no images in the SR folder {sr_dir}")
    if not hr_files:
        raise PairingError(f"no images in the HR folder {hr_dir}")
    if problems is not None:
        problems += subfolder_problems(sr_dir, label="SR folder") + subfolder_problems(hr_dir, label="HR folder")
    hr = _index(hr_files, hr_dir, problems)
    pairs: list[ImagePair] = []
    extra: list[str] = []
    for stem, path in _index(sr_files, sr_dir, problems).items():
        key = stem if stem in hr else strip_scale_suffix(stem, scale)
        if key in hr:
            pairs.append(ImagePair(name=key, sr=path, hr=hr[key]))
        else:
            extra.append(path.name)
    matched = {p.name for p in pairs}
    found = []
    if len(matched) != len(pairs):
        found.append("several SR images map to the same HR image (e.g. both 'x.png' and 'xx4.png')")
    missing = sorted(p.name for s, p in hr.items() if s not in matched)
    if missing:
        found.append(f"{len(missing)} HR image(s) have no SR result in {sr_dir}: {', '.join(missing[:10])}")
    if extra:
        found.append(f"{len(extra)} SR image(s) have no HR counterpart in {hr_dir}: {', '.join(sorted(extra)[:10])}")
    if found and problems is None:
        raise PairingError("; ".join(found))
    if problems is not None:
        problems += found
    return sorted(pairs, key=lambda p: p.name)


def check_sizes(pairs: list[ImagePair], *, scale: int) -> None:
    """Check from the file headers (no decoding) that each HR, cropped to a multiple of ``scale``, has its SR's size."""
    errors = []
    for pair in pairs:
        sh, sw = image_size(pair.sr)
        hh, hw = image_size(pair.hr)
        hc, wc = hh - hh % scale, hw - hw % scale
        if (sh, sw) != (hc, wc):
            errors.append(
                f"{pair.sr.name} is {sw}x{sh} (WxH) but {pair.hr.name} cropped to a multiple of {scale} is {wc}x{hc}"
            )
    if errors:
        raise PairingError(f"size mismatch for {len(errors)} image(s): " + "; ".join(errors))


def check_pairs(pairs: list[ImagePair], *, scale: int, problems: Sequence[str] = ()) -> None:
    """Decode every SR and HR image fully and check each pair's sizes (:func:`check_sizes`' rule): every unreadable
    or truncated file and every size mismatch — after the ``problems`` found already (:func:`pair_images`) — is
    reported together, one line each, before any scoring (:class:`pipeline.core.errors.BadInputsError`)."""
    problems = list(problems)
    sizes = decode_sizes({p for pair in pairs for p in (pair.sr, pair.hr)}, problems)
    problems += [m for pair in pairs if (m := size_mismatch(pair, sizes, scale=scale)) is not None]
    if problems:
        raise BadInputsError(f"{len(problems)} bad input(s); nothing was scored", problems)


def decode_sizes(paths: Iterable[Path], problems: list[str]) -> dict[Path, tuple[int, int]]:
    """Decode every file of ``paths`` fully → ``{path: (h, w)}``; each unreadable or truncated one is appended to
    ``problems`` (one line each) instead."""
    sizes: dict[Path, tuple[int, int]] = {}
    for path in sorted(paths):
        try:
            sizes[path] = read_image_array(path).shape[:2]
        except ImageReadError as exc:
            problems.append(str(exc))
    return sizes


def size_mismatch(pair: ImagePair, sizes: Mapping[Path, tuple[int, int]], *, scale: int) -> str | None:
    """The problem line when the SR image of ``pair`` is not the size of its HR cropped to a multiple of ``scale``
    (None when it is, or when either size is unknown: :func:`decode_sizes` reported that file)."""
    if pair.sr not in sizes or pair.hr not in sizes:
        return None
    (sh, sw), (hh, hw) = sizes[pair.sr], sizes[pair.hr]
    hc, wc = hh - hh % scale, hw - hw % scale
    if (sh, sw) == (hc, wc):
        return None
    return (
        f"{pair.sr}: size mismatch: {sw}x{sh} (WxH), but {pair.hr.name} cropped to a multiple of {scale} is {wc}x{hc}"
    )


def score_fidelity(pairs: list[ImagePair], *, scale: int, progress: bool = False) -> list[dict]:
    """NTIRE PSNR/SSIM (Y channel, border = scale) per pair; all sizes are checked before any image is scored, and
    images are loaded one pair at a time (memory stays bounded for large test sets)."""
    check_sizes(pairs, scale=scale)
    rows = []
    for pair in tqdm(pairs, desc="evaluate", unit="img", disable=not progress):
        sr = read_image(pair.sr)
        hr = crop_to_match(read_image(pair.hr), sr, scale=scale)
        rows.append(
            {
                "name": pair.name,
                "psnr": float(psnr_y(sr, hr, crop_border=scale)[0]),
                "ssim": float(ssim_y(sr, hr, crop_border=scale)[0]),
            }
        )
    return rows


def is_scores_json(path: Path) -> bool:
    """A JSON file of per-image and mean scores as ``scripts/evaluate.py --json`` writes it (may be replaced)."""
    import json

    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(payload, dict) and {"images", "mean", "scale"} <= payload.keys()


def mean_of(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows]
    return float(sum(vals) / len(vals)) if vals else math.nan
