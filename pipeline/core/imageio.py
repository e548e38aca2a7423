"""Image I/O: every image enters the toolkit as float32 RGB in [0,1] and leaves as an atomically written PNG.

Reading (:func:`read_image`) accepts PNG, JPEG, BMP and TIFF with 8 or 16 bits per channel:

* greyscale is replicated to 3 channels, palette images are expanded, CMYK/YCbCr/LAB are converted to RGB;
* an alpha channel is dropped with a warning that names the file;
* a corrupt, truncated or non-image file raises :class:`ImageReadError` naming the file and the reason.

Pillow decodes and validates every file (it refuses truncated data); for files with 16 bits per channel, which
Pillow can only hand out as 8-bit RGB, the pixels are decoded again with OpenCV at full precision.

Writing (:func:`write_image`) rounds (never truncates) to uint8 and writes ``name.png`` through a temporary file in
the same folder followed by ``os.replace``, so an interrupted write never leaves a truncated image under the final
name.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipeline.core.atomic import atomic_write_bytes
from pipeline.core.errors import BadInputsError, ToolkitError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "read_image",
    "read_image_array",
    "write_image",
    "list_images",
    "to_uint8",
    "quantize_8bit",
    "image_size",
    "ImageScan",
    "scan_image_folder",
    "scan_images",
    "strip_scale_suffix",
    "subfolder_problems",
    "check_min_side",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Pillow's own guard against decompression bombs stays on; the largest images of SR benchmarks are far below it.


class ImageReadError(ToolkitError, ValueError):
    """A file could not be read as an image; the message names the file and the reason."""


def _is_high_bit_depth(im: Image.Image) -> bool:
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return True
    for tile in im.tile:
        args = tile.args if hasattr(tile, "args") else tile[3]
        rawmode = args[0] if isinstance(args, tuple) else args
        if isinstance(rawmode, str) and "16" in rawmode:
            return True
    return False


def _decode_16bit(path: Path) -> np.ndarray:
    """Full-precision decode of a 16-bit PNG/TIFF with OpenCV → HWC float32 RGB (or HW) in [0,1]."""
    buf = np.fromfile(path, dtype=np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(f"{path}: OpenCV could not decode this 16-bit image")
    if arr.dtype != np.uint16:
        raise ImageReadError(f"{path}: expected 16-bit samples, decoder returned {arr.dtype}")
    arr = arr.astype(np.float32) / 65535.0
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            warnings.warn(f"{path}: alpha channel dropped", stacklevel=3)
            arr = arr[..., :3]
        arr = arr[..., ::-1]  # BGR -> RGB
    return arr


def read_image_array(path: str | os.PathLike) -> np.ndarray:
    """Read an image file into an ``(H, W, 3)`` float32 RGB array in [0, 1]."""
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: no such file")
    try:
        with Image.open(p) as im:
            high = _is_high_bit_depth(im)  # read from the tile descriptors, before load() clears them
            im.load()  # full decode: truncated/corrupt data raise here, not later
            mode = im.mode
            if high:
                arr = _decode_16bit(p)
            else:
                if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                    warnings.warn(f"{p}: alpha channel dropped", stacklevel=2)
                if mode == "1":
                    im = im.convert("L")
                elif mode not in ("L", "RGB"):
                    im = im.convert("RGB")
                arr = np.asarray(im, dtype=np.uint8).astype(np.float32) / 255.0
    except ImageReadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{p}: not a recognised image file ({exc})") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{p}: corrupt or truncated image ({exc})") from exc
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageReadError(f"{p}: unsupported image layout {arr.shape} (mode {mode})")
    return np.ascontiguousarray(arr)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` from the file header, without decoding the pixels."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            w, h = im.size
    except FileNotFoundError as exc:
        raise ImageReadError(f"{p}: no such file") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{p}: not a readable image ({exc})") from exc
    return h, w


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file into a ``(1, 3, H, W)`` float32 RGB tensor in [0, 1]."""
    arr = read_image_array(path)
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_uint8(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(1,3,H,W)``/``(3,H,W)`` tensor or ``(H,W,3)`` array in [0,1] → ``(H,W,3)`` uint8, rounded and clipped."""
    if isinstance(img, torch.Tensor):
        t = img.detach().float().cpu()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ValueError(f"expected a single image, got batch of {t.shape[0]}")
            t = t[0]
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"expected (3,H,W), got {tuple(t.shape)}")
        arr = t.permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected (H,W,3), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or Inf")
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def quantize_8bit(img: torch.Tensor) -> torch.Tensor:
    """Round to the 256 levels an 8-bit PNG holds (clamped to [0,1]), keeping the float dtype: what a saved and
    re-read PNG would contain."""
    return torch.round(img.clamp(0, 1) * 255.0) / 255.0


def write_image(path: str | os.PathLike, img: torch.Tensor | np.ndarray) -> Path:
    """Write an RGB image in [0,1] as an 8-bit PNG, atomically (temp file in the same folder + rename)."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ValueError(f"{p}: write_image writes PNG only (got suffix {p.suffix!r})")
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img), mode="RGB").save(buf, format="PNG")
    atomic_write_bytes(p, buf.getvalue())
    return p


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by extension) directly inside ``folder``, sorted by name; a missing folder is an error."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"image folder not found: {d}")
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class ImageScan:
    """What :func:`scan_images` found in a folder: the images that decoded (with their sizes) and one line per bad
    entry. :meth:`check` adds the size limit — known only once the experts are loaded — and raises every problem
    together, so a user fixes all of them in one go."""

    folder: Path
    sizes: dict[Path, tuple[int, int]]  # every image that decoded → (height, width), in name order
    problems: dict[Path, str]  # every bad entry → its line

    @property
    def files(self) -> list[Path]:
        return list(self.sizes)

    def check(self, *, min_side: int = 1, what: str = "the minimum side") -> list[Path]:
        """The images, if every entry is good and every image's shorter side is at least ``min_side``; otherwise one
        :class:`BadInputsError` listing every bad entry (in name order) — decoding problems and small images alike."""
        problems = dict(self.problems)
        for p, (h, w) in self.sizes.items():
            if min(h, w) < min_side:
                problems[p] = f"{p}: {w}x{h} is smaller than {what} {min_side}"
        if problems:
            lines = [problems[p] for p in sorted(problems)]
            raise BadInputsError(f"{len(lines)} bad input(s) in {self.folder}; nothing was written", lines)
        if not self.sizes:
            raise BadInputsError(f"no images in {self.folder} (looked for {'/'.join(IMAGE_EXTENSIONS)} files)", [])
        return self.files


def subfolder_problems(folder: str | os.PathLike, *, label: str) -> list[str]:
    """One line per (non-hidden) sub-folder of ``folder``: images are never searched in sub-folders, so a nested
    folder is reported with the bad inputs rather than silently left out."""
    return [
        f"{p}: a folder inside the {label} (images are not searched in sub-folders)"
        for p in sorted(Path(folder).iterdir())
        if p.is_dir() and not p.name.startswith(".")
    ]


def scan_images(
    folder: str | os.PathLike, *, other_files: bool = True, subfolders: bool = True, label: str = "input folder"
) -> ImageScan:
    """Decode every image directly inside ``folder`` and note every bad entry — zero-byte, truncated or non-image
    files with an image extension, and (unless allowed) other files (``other_files``) and sub-folders
    (``subfolders``; images are never searched recursively). Hidden files (``.name``) are ignored. Raises only for a
    missing folder; :meth:`ImageScan.check` raises the rest."""
    d = Path(folder)
    if not d.is_dir():
        raise BadInputsError(f"{label} not found: {d}", [])
    problems: dict[Path, str] = {}
    sizes: dict[Path, tuple[int, int]] = {}
    for p in sorted(d.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if not subfolders:
                problems[p] = f"{p}: a folder inside the {label} (images are not searched in sub-folders)"
            continue
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            if not other_files:
                problems[p] = f"{p}: not an image file (extension {p.suffix or 'none'!r})"
            continue
        try:
            arr = read_image_array(p)
        except ImageReadError as exc:
            problems[p] = " ".join(str(exc).split())
            continue
        sizes[p] = (int(arr.shape[0]), int(arr.shape[1]))
    return ImageScan(folder=d, sizes=sizes, problems=problems)


def scan_image_folder(
    folder: str | os.PathLike,
    *,
    min_side: int = 1,
    other_files: bool = True,
    subfolders: bool = True,
    label: str = "input folder",
) -> list[Path]:
    """The images directly inside ``folder`` (sorted), each one **fully decoded** first, so that every bad input is
    found before any work: :func:`scan_images` then :meth:`ImageScan.check` with ``min_side`` — every problem
    (unreadable files, images smaller than ``min_side``, other files, sub-folders) in one
    :class:`BadInputsError`, one line per file; a missing or empty folder is one too."""
    scan = scan_images(folder, other_files=other_files, subfolders=subfolders, label=label)
    return scan.check(min_side=min_side, what="the minimum side")


def check_min_side(files: list[Path], min_side: int, *, what: str = "the experts' minimum LR side") -> None:
    """Every image's shorter side (read from its header) is at least ``min_side``; all offenders are listed, one
    line each (:class:`BadInputsError`)."""
    small = []
    for f in files:
        h, w = image_size(f)
        if min(h, w) < min_side:
            small.append(f"{f}: {w}x{h} is smaller than {what} {min_side}")
    if small:
        raise BadInputsError(f"{len(small)} image(s) too small; nothing was written", small)


def strip_scale_suffix(stem: str, scale: int) -> str:
    """``0901x4`` → ``0901`` (the NTIRE LR/SR naming); other stems unchanged."""
    suffix = f"x{scale}"
    return stem[: -len(suffix)] if stem.endswith(suffix) and len(stem) > len(suffix) else stem
