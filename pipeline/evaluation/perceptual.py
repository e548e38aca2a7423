"""The NTIRE 2025 ImageSR ×4 perceptual track: LPIPS, DISTS, NIQE, MUSIQ, MANIQA, CLIP-IQA through pyiqa, from
local weight files only, and the track's score.

The metrics are ``pyiqa.create_metric(name)`` with pyiqa's default settings for ``lpips``, ``dists``, ``niqe``,
``musiq``, ``maniqa`` and ``clipiqa`` — what the organisers' ``eval.py`` creates — applied to the whole RGB image
in [0,1] (no border crop, no colour conversion on our side; the HR is only cropped to a multiple of the scale, as for
PSNR). LPIPS and DISTS compare SR with HR; the other four score the SR alone. Images must be at least 96x96
(NIQE's block size; MUSIQ, MANIQA and CLIP-IQA resize or crop internally). The track score is computed from the
metrics averaged over the images (not from per-image scores)::

    score = (1 - LPIPS) + (1 - DISTS) + CLIPIQA + MANIQA + MUSIQ/100 + max(0, (10 - NIQE)/10)

Nothing is downloaded: :func:`use_weights_dir` points torch hub and the Hugging Face cache at a local folder and sets
``HF_HUB_OFFLINE=1``; :func:`check_weights` reports every missing file (with where to put it and where it is
published) before anything is built. Expected layout of ``--weights-dir DIR`` — ``DIR/torch`` is used as
``TORCH_HOME`` and ``DIR/huggingface`` as ``HF_HOME``, i.e. the layout of ``~/.cache/{torch,huggingface}`` after
pyiqa has fetched the weights once on a machine with internet::

    DIR/torch/hub/checkpoints/alexnet-owt-7be5be79.pth    lpips    torchvision AlexNet IMAGENET1K_V1 (LPIPS trunk)
    DIR/torch/hub/checkpoints/vgg16-397923af.pth          dists    torchvision VGG16 IMAGENET1K_V1 (DISTS trunk)
    DIR/torch/hub/pyiqa/LPIPS_v0.1_alex-df73285e.pth      lpips    LPIPS v0.1 linear layers
    DIR/torch/hub/pyiqa/DISTS_weights-f5e65c96.pth        dists    DISTS alpha/beta
    DIR/torch/hub/pyiqa/niqe_modelparameters.mat          niqe     NIQE pristine-image model (mu/cov_prisparam)
    DIR/torch/hub/pyiqa/musiq_koniq_ckpt-e95806b9.pth     musiq    MUSIQ trained on KonIQ-10k
    DIR/torch/hub/pyiqa/ckpt_koniq10k.pt                  maniqa   MANIQA trained on KonIQ-10k (whole network)
    DIR/torch/hub/clip/RN50.pt                            clipiqa  OpenAI CLIP RN50 (its SHA-256 is checked)
    DIR/huggingface/hub/models--timm--vit_base_patch8_224.augreg2_in21k_ft_in1k/
        refs/main                                         maniqa   the snapshot's commit hash
        snapshots/<commit>/model.safetensors              maniqa   timm ViT-B/8 (MANIQA builds it pretrained,
                                                                   then overwrites it with its own checkpoint)

pyiqa's files are published at ``https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/<name>``, the
torchvision ones at ``https://download.pytorch.org/models/<name>``, CLIP at the URL in :data:`CLIP_RN50_URL`, the ViT
at ``https://huggingface.co/timm/vit_base_patch8_224.augreg2_in21k_ft_in1k`` (``model.safetensors``). Without
``--weights-dir`` the folders named by ``TORCH_HOME`` and ``HF_HOME`` / ``HF_HUB_CACHE`` (default ``~/.cache/torch``
and ``~/.cache/huggingface``) are used.

Never with random weights: pyiqa loads LPIPS and DISTS with ``strict=False``, so after building them every tensor of
their weight file is compared with the network's (:class:`PerceptualWeightsError` if any was not loaded); the other
loaders are strict. pyiqa reads its cache folders when it is imported, so :func:`use_weights_dir` must run before
pyiqa, timm or huggingface_hub are imported; :func:`build_metrics` verifies that they resolve to the checked folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.core.errors import ToolkitError
from pipeline.core.imageio import image_size, read_image
from pipeline.core.metrics import crop_to_match
from pipeline.core.safe_load import load_failure
from pipeline.evaluation.scoring import ImagePair

__all__ = [
    "CLIP_RN50_URL",
    "FR_METRICS",
    "METRIC_NAMES",
    "MIN_SIDE",
    "PERCEPTUAL_FORMULA",
    "ImageTooSmallError",
    "MissingWeightsError",
    "PerceptualSetupError",
    "PerceptualWeightsError",
    "WeightDirs",
    "WeightFile",
    "build_metrics",
    "check_image_sizes",
    "check_weights",
    "describe_layout",
    "perceptual_score",
    "score_pairs",
    "use_weights_dir",
    "weight_files",
]

METRIC_NAMES = ("lpips", "dists", "niqe", "musiq", "maniqa", "clipiqa")  # pyiqa names, created with defaults
FR_METRICS = ("lpips", "dists")  # full-reference: metric(sr, hr); the others: metric(sr)
PERCEPTUAL_FORMULA = "(1-LPIPS) + (1-DISTS) + CLIPIQA + MANIQA + MUSIQ/100 + max(0, (10-NIQE)/10)"

PYIQA_WEIGHTS_URL = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
TORCHVISION_URL = "https://download.pytorch.org/models/"
# pyiqa's CLIP loader pins this file by the SHA-256 in its URL and re-downloads any other file of that name.
CLIP_RN50_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt"
)
MANIQA_VIT_REPO = "timm/vit_base_patch8_224.augreg2_in21k_ft_in1k"  # timm's default tag of vit_base_patch8_224
MANIQA_VIT_FILE = "model.safetensors"

# The heads pyiqa loads with strict=False (a file without their tensors would leave them random, silently): the file
# and, per tensor, the key(s) it may have there (LPIPS registers its linear layers both as lin{i} and lins.{i}).
_NON_STRICT_HEADS = {
    "lpips": (
        "LPIPS_v0.1_alex-df73285e.pth",
        tuple((f"lin{i}.model.1.weight", f"lins.{i}.model.1.weight") for i in range(5)),
    ),
    "dists": ("DISTS_weights-f5e65c96.pth", (("alpha",), ("beta",))),
}
MIN_SIDE = 96  # NIQE splits the image into 96x96 blocks and fails on smaller images

FETCH_HINT = (
    "Put them there (layout: `python scripts/evaluate.py --help`). To fetch them all at once on a machine with "
    'internet: TORCH_HOME=DIR/torch HF_HOME=DIR/huggingface python -c "import pyiqa; '
    "[pyiqa.create_metric(n, device='cpu') for n in ('lpips', 'dists', 'niqe', 'musiq', 'maniqa', 'clipiqa')]\", "
    "then copy DIR (or use the existing ~/.cache/torch and ~/.cache/huggingface as DIR/torch and DIR/huggingface)."
)

_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


class MissingWeightsError(ToolkitError, FileNotFoundError):
    """Weight files the perceptual metrics need are missing (or are not the published files); the message names
    each one, where it must be and where it is published."""


class PerceptualWeightsError(ToolkitError, RuntimeError):
    """A metric was built but its weights were not (all) loaded from the file."""


class ImageTooSmallError(ToolkitError, ValueError):
    """An SR image is too small for the perceptual metrics (NIQE's 96x96 block)."""


class PerceptualSetupError(ToolkitError, RuntimeError):
    """pyiqa / torch hub / huggingface_hub would read other folders than the checked ones (imported too early)."""


@dataclass(frozen=True, kw_only=True)
class WeightDirs:
    torch_hub: Path  # torch.hub.get_dir(): checkpoints/ (torchvision), pyiqa/, clip/
    hf_cache: Path  # the Hugging Face hub cache: models--ORG--NAME/{refs,snapshots}


@dataclass(frozen=True, kw_only=True)
class WeightFile:
    metric: str  # the pyiqa metric that needs it
    what: str
    url: str  # where it is published
    hub_path: str = ""  # path under WeightDirs.torch_hub, or
    hf_repo: str = ""  # a Hugging Face repo in WeightDirs.hf_cache ...
    hf_filename: str = ""  # ... and the file of its snapshot
    sha256: str = ""  # the file must have this hash (pyiqa checks it and would re-download otherwise)

    def location(self, dirs: WeightDirs) -> str:
        """Where the file must be, for messages."""
        if self.hub_path:
            return str(dirs.torch_hub / self.hub_path)
        repo = dirs.hf_cache / _hf_repo_folder(self.hf_repo)
        return f"{repo}/snapshots/<commit>/{self.hf_filename} (with {repo}/refs/main holding <commit>)"


def _hf_repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def weight_files(names: tuple[str, ...] = METRIC_NAMES) -> list[WeightFile]:
    """Every file that ``pyiqa.create_metric(name)`` reads for ``names`` (pyiqa 0.1.16, torchvision, timm, CLIP)."""
    unknown = sorted(set(names) - set(METRIC_NAMES))
    if unknown:
        raise ValueError(f"unknown perceptual metric(s) {unknown}; known: {', '.join(METRIC_NAMES)}")

    def pyiqa_file(metric: str, name: str, what: str) -> WeightFile:
        return WeightFile(metric=metric, what=what, url=PYIQA_WEIGHTS_URL + name, hub_path=f"pyiqa/{name}")

    def torchvision_file(metric: str, name: str, what: str) -> WeightFile:
        return WeightFile(metric=metric, what=what, url=TORCHVISION_URL + name, hub_path=f"checkpoints/{name}")

    files = [
        torchvision_file("lpips", "alexnet-owt-7be5be79.pth", "torchvision AlexNet IMAGENET1K_V1 (LPIPS trunk)"),
        pyiqa_file("lpips", _NON_STRICT_HEADS["lpips"][0], "LPIPS v0.1 linear layers"),
        torchvision_file("dists", "vgg16-397923af.pth", "torchvision VGG16 IMAGENET1K_V1 (DISTS trunk)"),
        pyiqa_file("dists", _NON_STRICT_HEADS["dists"][0], "DISTS alpha/beta"),
        pyiqa_file("niqe", "niqe_modelparameters.mat", "NIQE pristine-image model"),
        pyiqa_file("musiq", "musiq_koniq_ckpt-e95806b9.pth", "MUSIQ trained on KonIQ-10k"),
        pyiqa_file("maniqa", "ckpt_koniq10k.pt", "MANIQA trained on KonIQ-10k"),
        WeightFile(
            metric="maniqa",
            what="timm ViT-B/8 that MANIQA builds with pretrained=True",
            url=f"https://huggingface.co/{MANIQA_VIT_REPO}/resolve/main/{MANIQA_VIT_FILE}",
            hf_repo=MANIQA_VIT_REPO,
            hf_filename=MANIQA_VIT_FILE,
        ),
        WeightFile(
            metric="clipiqa",
            what="OpenAI CLIP RN50 (CLIP-IQA backbone)",
            url=CLIP_RN50_URL,
            hub_path="clip/RN50.pt",
            sha256=CLIP_RN50_URL.rsplit("/", 2)[-2],
        ),
    ]
    return [f for f in files if f.metric in names]


def describe_layout(dirs: WeightDirs | None = None) -> str:
    """The expected files with what they are and where they are published (under ``DIR`` of ``--weights-dir DIR``
    when ``dirs`` is None)."""
    dirs = dirs or WeightDirs(torch_hub=Path("DIR/torch/hub"), hf_cache=Path("DIR/huggingface/hub"))
    return "\n".join(f"  {f.location(dirs)}\n      {f.metric}: {f.what}; published at {f.url}" for f in weight_files())


def _hf_cache_from_env() -> Path:
    """The Hugging Face hub cache as huggingface_hub computes it from the environment (without importing it)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.path.expanduser(os.environ[var])))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def use_weights_dir(weights_dir: str | Path | None) -> WeightDirs:
    """Force offline mode and, if ``weights_dir`` is given, use ``weights_dir/torch`` as TORCH_HOME and
    ``weights_dir/huggingface`` as HF_HOME (else the folders the environment already names). Sets ``os.environ``;
    call it before pyiqa, timm or huggingface_hub are imported."""
    os.environ.update(_OFFLINE_ENV)
    if weights_dir is not None:
        root = Path(weights_dir).expanduser().resolve()
        if not root.is_dir():
            raise MissingWeightsError(f"--weights-dir {root} is not a folder; expected layout:\n{describe_layout()}")
        os.environ["TORCH_HOME"] = str(root / "torch")
        os.environ["HF_HOME"] = str(root / "huggingface")
        os.environ["HF_HUB_CACHE"] = str(root / "huggingface" / "hub")
    return WeightDirs(torch_hub=Path(torch.hub.get_dir()), hf_cache=_hf_cache_from_env())


def _hf_snapshot_file(dirs: WeightDirs, f: WeightFile) -> Path | None:
    repo = dirs.hf_cache / _hf_repo_folder(f.hf_repo)
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return None
    path = repo / "snapshots" / ref.read_text(encoding="utf-8").strip() / f.hf_filename
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def check_weights(dirs: WeightDirs, names: tuple[str, ...] = METRIC_NAMES) -> None:
    """Raise :class:`MissingWeightsError` listing every file of ``names`` that is missing (or has the wrong hash)."""
    problems = []
    for f in weight_files(names):
        path = dirs.torch_hub / f.hub_path if f.hub_path else _hf_snapshot_file(dirs, f)
        if path is None or not path.is_file():
            problems.append(f"  missing  {f.location(dirs)}\n      {f.metric}: {f.what}; published at {f.url}")
        elif f.sha256 and _sha256(path) != f.sha256:
            problems.append(
                f"  wrong    {path}: SHA-256 is not {f.sha256}\n      {f.metric}: {f.what}; the published "
                f"file is {f.url} (pyiqa would try to download it again)"
            )
    if problems:
        raise MissingWeightsError(
            f"the perceptual metrics need {len(problems)} weight file(s) that are not in place (nothing is "
            "downloaded):\n" + "\n".join(problems) + "\n" + FETCH_HINT
        )


def check_image_sizes(pairs: list[ImagePair]) -> None:
    """Raise :class:`ImageTooSmallError` naming every SR image smaller than NIQE's 96x96 block (file headers only)."""
    small = []
    for pair in pairs:
        h, w = image_size(pair.sr)
        if min(h, w) < MIN_SIDE:
            small.append(f"{pair.sr.name} ({w}x{h})")
    if small:
        raise ImageTooSmallError(
            f"NIQE needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels; too small: {', '.join(small)}"
        )


def _check_resolution(dirs: WeightDirs) -> None:
    """pyiqa, torch hub and huggingface_hub must read exactly the checked folders, offline."""
    import huggingface_hub.constants as hf_constants
    import pyiqa.archs.clip_model as pyiqa_clip
    import pyiqa.utils.download_util as pyiqa_download

    seen = {
        "torch.hub.get_dir()": (Path(torch.hub.get_dir()), dirs.torch_hub),
        "pyiqa's weight folder": (Path(pyiqa_download.DEFAULT_CACHE_DIR), dirs.torch_hub / "pyiqa"),
        "huggingface_hub's cache": (Path(hf_constants.HF_HUB_CACHE), dirs.hf_cache),
    }
    problems = [f"{what} is {got}, expected {want}" for what, (got, want) in seen.items() if got != want]
    if not hf_constants.HF_HUB_OFFLINE:
        problems.append("huggingface_hub is not in offline mode")
    if pyiqa_clip._MODELS.get("RN50") != CLIP_RN50_URL:
        problems.append(f"pyiqa's CLIP RN50 is {pyiqa_clip._MODELS.get('RN50')}, this module checks {CLIP_RN50_URL}")
    if problems:
        raise PerceptualSetupError(
            "the perceptual metrics would not read the checked weight folders: "
            + "; ".join(problems)
            + ". Call pipeline.evaluation.perceptual.use_weights_dir() before pyiqa, timm or huggingface_hub are"
            " imported."
        )


def _state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is reported with its name
        raise PerceptualWeightsError(f"{path}: not a readable tensor file: {load_failure(exc)}") from None
    if not isinstance(state, dict):
        raise PerceptualWeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _verify_non_strict_heads(name: str, net: torch.nn.Module, dirs: WeightDirs) -> None:
    """pyiqa loads these heads with strict=False: prove that every head tensor came from the file."""
    filename, tensors = _NON_STRICT_HEADS[name]
    path = dirs.torch_hub / "pyiqa" / filename
    state = _state_dict_file(path)
    params = net.state_dict()
    missing, differ = [], []
    for aliases in tensors:
        key = next((k for k in aliases if k in state), None)
        if key is None:
            missing.append(aliases[0])
        elif state[key].shape != params[key].shape or not torch.equal(state[key].to(params[key]), params[key]):
            differ.append(key)
    if missing:
        raise PerceptualWeightsError(f"{path} lacks {missing}: {name} would run with random weights")
    if differ:
        raise PerceptualWeightsError(f"{name}: {differ} were not loaded from {path}")


def build_metrics(
    dirs: WeightDirs, *, names: tuple[str, ...] = METRIC_NAMES, device: str | torch.device = "cpu"
) -> dict[str, torch.nn.Module]:
    """``{name: pyiqa.create_metric(name, device=device)}`` with default settings, from the checked files only.
    pyiqa's loading messages go to stderr."""
    check_weights(dirs, names)
    for key, value in _OFFLINE_ENV.items():
        if os.environ.get(key) != value:
            raise PerceptualSetupError(f"{key} is not {value}: call use_weights_dir() first")
    import pyiqa

    _check_resolution(dirs)
    metrics = {}
    with contextlib.redirect_stdout(sys.stderr):
        for name in names:
            metrics[name] = pyiqa.create_metric(name, device=torch.device(device))
            if name in _NON_STRICT_HEADS:
                _verify_non_strict_heads(name, metrics[name].net, dirs)
    return metrics


def score_pairs(
    metrics: Mapping[str, torch.nn.Module],
    pairs: list[ImagePair],
    *,
    scale: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[dict]:
    """Per pair ``{"name", <metric>: float, ...}``: the whole SR image in [0,1] (and the HR cropped to a multiple
    of ``scale``, for LPIPS/DISTS); one pair in memory at a time."""
    rows = []
    for pair in tqdm(pairs, desc="perceptual", unit="img", disable=not progress):
        sr = read_image(pair.sr)  # (1,3,H,W) float32 in [0,1]
        hr = crop_to_match(read_image(pair.hr), sr, scale=scale)  # (1,3,H,W)
        sr, hr = sr.to(device), hr.to(device)
        row: dict = {"name": pair.name}
        for name, metric in metrics.items():
            value = metric(sr, hr) if name in FR_METRICS else metric(sr)
            row[name] = float(value.reshape(-1)[0])
        rows.append(row)
    return rows


def perceptual_score(means: Mapping[str, float]) -> float:
    """The NTIRE 2025 perceptual-track score from the metrics *averaged over the images*:
    ``(1-LPIPS) + (1-DISTS) + CLIPIQA + MANIQA + MUSIQ/100 + max(0, (10-NIQE)/10)``."""
    missing = [n for n in METRIC_NAMES if n not in means]
    if missing:
        raise KeyError(f"perceptual_score needs the means of {', '.join(METRIC_NAMES)}; missing {missing}")
    m = {n: float(means[n]) for n in METRIC_NAMES}
    niqe_term = (10.0 - m["niqe"]) / 10.0
    niqe_term = niqe_term if (niqe_term > 0.0 or math.isnan(niqe_term)) else 0.0  # clamp, but a NaN stays NaN
    return (1.0 - m["lpips"]) + (1.0 - m["dists"]) + m["clipiqa"] + m["maniqa"] + m["musiq"] / 100.0 + niqe_term
