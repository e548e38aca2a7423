"""pipeline/evaluation/perceptual.py and ``scripts/evaluate.py --perceptual``: the track score, the missing-weights
error, and the
whole pyiqa plumbing of the six metrics on *stand-in* weight files.

The stand-ins have exactly the file names, locations, keys and shapes that the loaders read (torchvision AlexNet and
VGG16, pyiqa's LPIPS/DISTS/NIQE/MUSIQ/MANIQA files, timm's ViT-B/8 in the Hugging Face cache layout, OpenAI CLIP
RN50), taken from the architectures themselves built on the meta device, with random values. Two deviations, both in
the subprocess runner below, both measured and explained in :func:`_run_standins`:

* CLIP: pyiqa pins ``RN50.pt`` by the SHA-256 in its URL and re-downloads any other file of that name, so the runner
  registers the stand-in's hash (pyiqa's table and ours); the file's name and place stay the official ones.
* MANIQA: its default evaluation is 20 crops of 224x224 through a ViT-B/8 — measured 154 s for one image on one core
  of the busy 2-core dev machine (~8 s per crop) — so the runner evaluates 1 crop per image (``test_sample=1``);
  weights, code path and everything else are the defaults.

pyiqa and huggingface_hub read their cache folders when they are imported, and other test modules (diffusers) may
import them first; so the end-to-end part runs in one fresh interpreter (a subprocess), which also does the probes
that prove that pyiqa reads the stand-ins.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import unittest.mock
import zlib
from pathlib import Path

import pytest
import torch

from pipeline.core.cli import run_program
from pipeline.core.imageio import write_image
from pipeline.evaluation.perceptual import (
    CLIP_RN50_URL,
    METRIC_NAMES,
    MissingWeightsError,
    WeightDirs,
    check_weights,
    perceptual_score,
    use_weights_dir,
    weight_files,
)
from pipeline.evaluation.scoring import pair_images

EVALUATE = Path(__file__).resolve().parents[1] / "scripts" / "evaluate.py"  # the stand-in subprocess has no conftest


def evaluate_main(argv: list[str]) -> int:
    """``python scripts/evaluate.py ARGV``, in this process."""
    return run_program(EVALUATE, argv)


REPO_ROOT = Path(__file__).resolve().parents[1]
_ENV_KEYS = (
    "TORCH_HOME",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
)


@pytest.fixture
def restore_env():
    """use_weights_dir() sets os.environ: give every test its environment back."""
    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# --------------------------------------------------------------------------------------------------- the formula


def test_score_formula_on_known_values():
    means = {"lpips": 0.2, "dists": 0.1, "niqe": 4.0, "musiq": 60.0, "maniqa": 0.5, "clipiqa": 0.7}
    # 0.8 + 0.9 + 0.7 + 0.5 + 0.6 + 0.6
    assert perceptual_score(means) == pytest.approx(4.1, abs=1e-12)
    # NIQE above 10 is clamped to a zero contribution (never negative); exactly 10 gives 0 too
    assert perceptual_score({**means, "niqe": 14.0}) == pytest.approx(3.5, abs=1e-12)
    assert perceptual_score({**means, "niqe": 10.0}) == pytest.approx(3.5, abs=1e-12)
    assert perceptual_score({**means, "niqe": 0.0}) == pytest.approx(4.5, abs=1e-12)
    assert math.isnan(perceptual_score({**means, "niqe": math.nan}))  # the clamp never hides a NaN
    with pytest.raises(KeyError, match="maniqa"):
        perceptual_score({k: v for k, v in means.items() if k != "maniqa"})


# ------------------------------------------------------------------------------------------ missing weight files


def test_missing_weights_error_names_every_file(tmp_path, restore_env):
    dirs = use_weights_dir(tmp_path)
    assert dirs == WeightDirs(torch_hub=tmp_path / "torch" / "hub", hf_cache=tmp_path / "huggingface" / "hub")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(MissingWeightsError) as err:
        check_weights(dirs)
    msg = str(err.value)
    for f in weight_files():
        assert f.location(dirs) in msg and f.url in msg
    assert "vit_base_patch8_224.augreg2_in21k_ft_in1k/refs/main" in msg

    # everything present but one file: only that one is named
    for f in weight_files(("lpips", "dists", "niqe", "musiq")):
        (dirs.torch_hub / f.hub_path).parent.mkdir(parents=True, exist_ok=True)
        (dirs.torch_hub / f.hub_path).touch()
    (dirs.torch_hub / "pyiqa" / "DISTS_weights-f5e65c96.pth").unlink()
    with pytest.raises(MissingWeightsError) as err:
        check_weights(dirs, ("lpips", "dists", "niqe", "musiq"))
    assert "1 weight file(s)" in str(err.value) and "DISTS_weights-f5e65c96.pth" in str(err.value)
    check_weights(dirs, ("lpips", "niqe", "musiq"))

    # a CLIP file that is not the published one is reported (pyiqa would try to download it again)
    (dirs.torch_hub / "clip").mkdir()
    (dirs.torch_hub / "clip" / "RN50.pt").write_bytes(b"not the CLIP model")
    with pytest.raises(MissingWeightsError, match=r"RN50.pt: SHA-256 is not afeb0e10"):
        check_weights(dirs, ("clipiqa",))


def _pairs(root: Path, sizes: list[tuple[int, int]]) -> tuple[Path, Path]:
    """HR images (sides not multiples of 4, to exercise the crop) and SR = cropped HR + noise, challenge naming."""
    g = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate(sizes):
        hr = torch.rand(1, 3, h + 2, w + 3, generator=g)
        sr = (hr[..., :h, :w] + 0.05 * torch.randn(1, 3, h, w, generator=g)).clamp(0, 1)
        write_image(root / "hr" / f"{i:04d}.png", hr)
        write_image(root / "sr" / f"{i:04d}x4.png", sr)
    return root / "sr", root / "hr"


def test_evaluate_perceptual_reports_missing_weights_before_any_work(tmp_path, restore_env, capsys):
    sr, hr = _pairs(tmp_path, [(96, 96)])
    (tmp_path / "weights").mkdir()
    weights = tmp_path / "weights"
    assert evaluate_main(["--sr", str(sr), "--hr", str(hr), "--perceptual", "--weights-dir", str(weights)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no image was scored
    assert "9 weight file(s)" in err and str(weights / "torch" / "hub" / "pyiqa" / "ckpt_koniq10k.pt") in err


def test_evaluate_perceptual_rejects_images_below_niqe_block(tmp_path, restore_env, capsys):
    sr, hr = _pairs(tmp_path, [(96, 96), (64, 128)])
    assert evaluate_main(["--sr", str(sr), "--hr", str(hr), "--perceptual", "--weights-dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "at least 96x96" in err and "too small: 0001x4.png (128x64)" in err


def test_layout_is_documented_in_module_and_help(capsys):
    from pipeline.evaluation import perceptual

    assert evaluate_main(["--help"]) == 0
    help_text = capsys.readouterr().out
    for f in weight_files():
        rel = f.hub_path or f"models--{f.hf_repo.replace('/', '--')}/"
        assert rel in perceptual.__doc__, rel
        assert rel in help_text and f.url in help_text


# ------------------------------------------------------------------------------ stand-ins, run in a subprocess

POOL = 1 << 22  # random values per file; every float tensor of a file is a window of its pool (small files)


def _window(pool: torch.Tensor, shape: torch.Size, key: str) -> torch.Tensor:
    n = math.prod(shape)
    if n <= pool.numel():
        start = zlib.crc32(key.encode()) % (pool.numel() - n + 1)
        return pool[start : start + n].view(shape)
    rows, cols = shape[0], n // shape[0]  # larger than the pool: overlapping shifted rows (VGG's classifier)
    step = (pool.numel() - cols) // max(rows - 1, 1)
    return pool.as_strided((rows, cols), (step, 1)).view(shape)


def _random_state(state: dict[str, torch.Tensor], seed: int, std: float = 0.02) -> dict[str, torch.Tensor]:
    """Random tensors with the keys, shapes and dtypes of ``state`` (BatchNorm statistics 0/1, integers 0)."""
    pool = torch.randn(POOL, generator=torch.Generator().manual_seed(seed)) * std
    out = {}
    for key, t in state.items():
        if not t.is_floating_point():
            out[key] = torch.zeros(t.shape, dtype=t.dtype)
        elif key.endswith("running_var"):
            out[key] = torch.ones(t.shape)
        elif key.endswith("running_mean"):
            out[key] = torch.zeros(t.shape)
        else:
            out[key] = _window(pool, t.shape, key)
    return out


def _write_standins(root: Path) -> str:
    """Write every file of weight_files() under ``root`` (TORCH_HOME = root/torch, HF_HOME = root/huggingface must
    already be set); returns the SHA-256 of the stand-in RN50.pt."""
    import hashlib

    import numpy as np
    import scipy.io
    import timm
    import torchvision
    from pyiqa.archs.clip_model import CLIP
    from pyiqa.archs.dists_arch import DISTS
    from pyiqa.archs.lpips_arch import LPIPS
    from pyiqa.archs.maniqa_arch import MANIQA
    from pyiqa.archs.musiq_arch import MUSIQ
    from safetensors.torch import save_file

    hub = root / "torch" / "hub"  # names and places as the loaders look them up (not taken from weight_files())

    def save(rel: str, state: dict) -> None:
        (hub / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, hub / rel)

    with torch.device("meta"):  # shapes only: nothing is initialised
        alexnet, vgg16 = torchvision.models.alexnet(), torchvision.models.vgg16()
    save("checkpoints/alexnet-owt-7be5be79.pth", _random_state(alexnet.state_dict(), 1))
    save("checkpoints/vgg16-397923af.pth", _random_state(vgg16.state_dict(), 2))
    with torch.device("meta"):  # these two load the stand-in trunks just written (into meta tensors: a no-op)
        lpips, dists = LPIPS(pretrained=False), DISTS(pretrained=False)
    lins = {k: v for k, v in lpips.state_dict().items() if re.fullmatch(r"lin\d\.model\.1\.weight", k)}
    assert len(lins) == 5
    save("pyiqa/LPIPS_v0.1_alex-df73285e.pth", {k: v.clone() for k, v in _random_state(lins, 3).items()})
    g = torch.Generator().manual_seed(4)  # DISTS weights are positive (they are normalised by their sum)
    save(
        "pyiqa/DISTS_weights-f5e65c96.pth",
        {k: 0.05 + 0.1 * torch.rand(dists.state_dict()[k].shape, generator=g) for k in ("alpha", "beta")},
    )
    rng = np.random.default_rng(5)
    a = rng.normal(size=(36, 36))
    (hub / "pyiqa").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        hub / "pyiqa" / "niqe_modelparameters.mat",
        {"mu_prisparam": rng.normal(size=(1, 36)), "cov_prisparam": a @ a.T / 36 + 0.1 * np.eye(36)},
    )
    with torch.device("meta"):
        musiq, vit = MUSIQ(pretrained=False), timm.create_model("vit_base_patch8_224", pretrained=False)
    save("pyiqa/musiq_koniq_ckpt-e95806b9.pth", _random_state(musiq.state_dict(), 6))
    repo = root / "huggingface" / "hub" / "models--timm--vit_base_patch8_224.augreg2_in21k_ft_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(
        {k: v.clone() for k, v in _random_state(vit.state_dict(), 7).items()},  # safetensors: no shared storage
        repo / "snapshots" / commit / "model.safetensors",
    )
    real_create_model = timm.create_model

    def meta_vit(name: str, pretrained: bool) -> torch.nn.Module:
        with torch.device("meta"):
            return real_create_model(name, pretrained=False)

    # MANIQA's Swin part calls .item() at construction (impossible on meta): build it on CPU around a meta ViT.
    with unittest.mock.patch.object(timm, "create_model", meta_vit):
        maniqa = MANIQA(train_dataset="koniq", scale=0.8, pretrained=False)
    save("pyiqa/ckpt_koniq10k.pt", _random_state(maniqa.state_dict(), 8))
    (hub / "clip").mkdir(parents=True)
    # OpenAI CLIP RN50: embedding 1024; ResNet (3,4,6,3) x 64 at 224; text: 77 tokens, 49408 words, 512 wide, 8 heads,
    # 12 layers
    with torch.device("meta"):
        clip = CLIP(1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12)
    # the published RN50.pt is a TorchScript archive, and pyiqa's loader only reads it as one (torch.jit.load)
    holder = _Holder()
    for key, value in _random_state(clip.state_dict(), 9).items():
        *path, leaf = key.split(".")
        module = holder
        for name in path:
            if name not in module._modules:
                module.add_module(name, _Holder())
            module = module._modules[name]
        module.register_buffer(leaf, value)
    torch.jit.save(torch.jit.script(holder), hub / "clip" / "RN50.pt")
    return hashlib.sha256((hub / "clip" / "RN50.pt").read_bytes()).hexdigest()


class _Holder(torch.nn.Module):
    """A TorchScript-able node of the CLIP stand-in: only tensors, no computation."""

    def forward(self) -> int:
        return 0


def _run_standins(root: Path, sr: Path, hr: Path, out: Path) -> None:
    """The subprocess: write stand-ins, run evaluate.py --perceptual on them, probe that pyiqa reads them."""
    import contextlib
    import io
    import time

    torch.set_num_threads(1)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    import pyiqa  # noqa: F401  (timed here: the import alone is a good part of this test's cost)
    import pyiqa.archs.clip_model as pyiqa_clip
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    from pipeline.evaluation import perceptual

    timings["import pyiqa"] = time.perf_counter() - t0

    # what the installed pyiqa / torchvision / timm read, to compare with pipeline.evaluation.perceptual's table
    from pyiqa.archs import dists_arch, lpips_arch, maniqa_arch, musiq_arch, niqe_arch
    from timm.models import get_pretrained_cfg
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    facts = {
        "configs": {n: dict(DEFAULT_CONFIGS[n]["metric_opts"]) for n in perceptual.METRIC_NAMES},
        "urls": [
            lpips_arch.default_model_urls["0.1_alex"],
            dists_arch.default_model_urls["url"],
            niqe_arch.default_model_urls["url"],
            musiq_arch.default_model_urls["koniq10k"],
            maniqa_arch.default_model_urls["koniq"],
            AlexNet_Weights.IMAGENET1K_V1.url,
            VGG16_Weights.IMAGENET1K_V1.url,
            pyiqa_clip._MODELS["RN50"],
            (
                f"https://huggingface.co/{get_pretrained_cfg('vit_base_patch8_224').hf_hub_id}/resolve/main/"
                "model.safetensors"
            ),
        ],
    }

    t0 = time.perf_counter()
    sha = _write_standins(root)
    timings["write stand-ins"] = time.perf_counter() - t0
    # CLIP: pyiqa re-downloads an RN50.pt whose SHA-256 differs from the one in its URL; register the stand-in's.
    url = CLIP_RN50_URL.replace(CLIP_RN50_URL.rsplit("/", 2)[-2], sha)
    pyiqa_clip._MODELS["RN50"] = url
    perceptual.CLIP_RN50_URL = url
    # MANIQA: 1 crop per image instead of the default 20 (ViT-B/8 at 224x224 costs seconds per crop on a busy CPU).
    DEFAULT_CONFIGS["maniqa"]["metric_opts"]["test_sample"] = 1

    t0 = time.perf_counter()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = evaluate_main(
            [
                "--sr",
                str(sr),
                "--hr",
                str(hr),
                "--perceptual",
                "--weights-dir",
                str(root),
                "--json",
                str(out.with_name("scores.json")),
            ]
        )
    timings["evaluate --perceptual"] = time.perf_counter() - t0

    # probe 1: doubling LPIPS's linear layers in the stand-in doubles LPIPS (it is linear in them)
    t0 = time.perf_counter()
    dirs = perceptual.use_weights_dir(root)
    pairs = pair_images(sr, hr, scale=4)
    lin_path = dirs.torch_hub / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth"
    lins = torch.load(lin_path, weights_only=True)
    torch.save({k: 2 * v for k, v in lins.items()}, lin_path)
    doubled = perceptual.score_pairs(perceptual.build_metrics(dirs, names=("lpips",)), pairs, scale=4)
    # probe 2: an LPIPS file without the linear layers would leave them random (pyiqa loads with strict=False)
    torch.save({f"foo{i}": v for i, v in enumerate(lins.values())}, lin_path)
    try:
        perceptual.build_metrics(dirs, names=("lpips",))
        unloaded = "no error"
    except perceptual.PerceptualWeightsError as exc:
        unloaded = str(exc)
    # probe 3: the ViT is found through the Hugging Face cache's refs/main, as huggingface_hub resolves it offline
    vit_repo = dirs.hf_cache / "models--timm--vit_base_patch8_224.augreg2_in21k_ft_in1k"
    (vit_repo / "refs" / "main").rename(vit_repo / "refs" / "old")
    try:
        perceptual.check_weights(dirs, ("maniqa",))
        no_ref = "no error"
    except perceptual.MissingWeightsError as exc:
        no_ref = str(exc)
    timings["probes"] = time.perf_counter() - t0

    out.write_text(
        json.dumps(
            {
                "rc": rc,
                "stdout": stdout.getvalue(),
                "facts": facts,
                "timings": timings,
                "lpips_doubled": [r["lpips"] for r in doubled],
                "lpips_unloaded": unloaded,
                "vit_without_ref": no_ref,
            }
        )
    )


@pytest.fixture(scope="module")
def standin_run(tmp_path_factory):
    """Runs :func:`_run_standins` in a fresh interpreter (1 thread, offline, HOME and caches in a tmp folder)."""
    tmp = tmp_path_factory.mktemp("perceptual")
    sr, hr = _pairs(tmp, [(96, 96), (96, 128)])  # NIQE's minimum is 96x96
    (tmp / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TORCH_HOME", "XDG_CACHE"))}
    env.update(
        HOME=str(tmp / "home"),
        TORCH_HOME=str(tmp / "weights" / "torch"),
        OMP_NUM_THREADS="1",
        HF_HOME=str(tmp / "weights" / "huggingface"),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO_ROOT),
    )
    out = tmp / "result.json"
    code = (
        f"from pathlib import Path; from tests.test_perceptual import _run_standins; "
        f"_run_standins(Path({str(tmp / 'weights')!r}), Path({str(sr)!r}), Path({str(hr)!r}), Path({str(out)!r}))"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"stand-in run failed:\n{proc.stderr[-6000:]}"
        result = json.loads(out.read_text())
        result["json"] = json.loads((tmp / "scores.json").read_text())
        result["stderr"] = proc.stderr
        yield result
    finally:
        shutil.rmtree(tmp / "weights", ignore_errors=True)  # ~0.5 GB of stand-ins (the ViT's safetensors is full size)


def _printed(stdout: str) -> dict[str, list[float]]:
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in ("0000", "0001", "mean"):
            rows[parts[0]] = [float(x) for x in parts[1:9]]
    return rows


@pytest.mark.slow  # its standin_run fixture takes ~27 s
def test_evaluate_perceptual_end_to_end_on_standins(standin_run):
    assert standin_run["rc"] == 0, standin_run["stderr"][-3000:]
    stdout = standin_run["stdout"]
    header = stdout.splitlines()[0].split()
    assert header == ["image", "PSNR-Y", "SSIM-Y", "LPIPS", "DISTS", "NIQE", "MUSIQ", "MANIQA", "CLIPIQA"]
    rows = _printed(stdout)
    assert set(rows) == {"0000", "0001", "mean"} and all(len(v) == 8 for v in rows.values())
    assert all(math.isfinite(x) for v in rows.values() for x in v)

    data = standin_run["json"]
    assert [r["name"] for r in data["images"]] == ["0000", "0001"]
    for r in data["images"]:
        assert set(METRIC_NAMES) | {"name", "psnr", "ssim"} == set(r)
        assert all(math.isfinite(r[n]) for n in METRIC_NAMES)
    for n in METRIC_NAMES:  # means over the images, and the score from the means
        assert data["mean"][n] == pytest.approx(sum(r[n] for r in data["images"]) / 2, rel=1e-12, abs=1e-15)
    assert data["perceptual_score"] == perceptual_score(data["mean"])
    assert math.isfinite(data["perceptual_score"])

    printed_score = float(re.search(r"perceptual score (\S+) =", stdout).group(1))
    printed_means = dict(zip(METRIC_NAMES, rows["mean"][2:]))
    assert printed_score == pytest.approx(perceptual_score(printed_means), abs=5e-4)  # 4-decimal rounding
    assert printed_score == pytest.approx(data["perceptual_score"], abs=5e-5)
    assert "Loading pretrained model" not in stdout  # pyiqa's loader messages go to stderr


@pytest.mark.slow  # shares the ~27 s standin_run fixture
def test_pyiqa_reads_the_standins(standin_run):
    lpips = [r["lpips"] for r in standin_run["json"]["images"]]
    assert standin_run["lpips_doubled"] == pytest.approx([2 * v for v in lpips], rel=1e-5)
    assert "LPIPS_v0.1_alex-df73285e.pth lacks" in standin_run["lpips_unloaded"]
    assert "random weights" in standin_run["lpips_unloaded"]
    no_ref = standin_run["vit_without_ref"]
    assert "missing" in no_ref and "refs/main holding <commit>" in no_ref


@pytest.mark.slow  # shares the ~27 s standin_run fixture
def test_weight_table_matches_installed_pyiqa(standin_run):
    """The files pipeline.evaluation.perceptual checks are the ones pyiqa 0.1.16 / torchvision / timm load by
    default."""
    facts = standin_run["facts"]
    assert [f.url for f in weight_files()] == [facts["urls"][i] for i in (5, 0, 6, 1, 2, 3, 4, 8, 7)]
    configs = facts["configs"]
    assert configs["lpips"] == {"type": "LPIPS", "net": "alex", "version": "0.1"}
    assert configs["musiq"] == {"type": "MUSIQ", "pretrained": "koniq10k"}
    assert configs["maniqa"]["train_dataset"] == "koniq" and configs["clipiqa"] == {"type": "CLIPIQA"}
