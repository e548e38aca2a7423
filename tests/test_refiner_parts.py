"""TSD-SR refiner building blocks that need no diffusers: config, tiling, colour fixes, LoRA files and merging."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from pipeline.core.config import ConfigError, load_config
from pipeline.refiner import LoRAFormatError, RefinerConfig, RefinerFileNotFoundError
from pipeline.refiner.colour import (
    adain_colour_fix,
    colour_fix,
    wavelet_colour_fix,
    wavelet_decompose2d,
)
from pipeline.refiner.files import resolve_files
from pipeline.refiner.lora import LoRAPair, check_lora, merge_lora_, read_lora_file
from pipeline.refiner.tiling import gaussian_weights, tile_starts, tiled_map

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------------------
def test_real_config_file_loads_with_overrides():
    cfg = load_config(RefinerConfig, REPO / "configs/refiner/tsdsr.yaml", ["device=cuda:1", "colour_fix=adain"])
    assert cfg.device == "cuda:1" and cfg.colour_fix == "adain"
    assert (cfg.transformer_lora_rank, cfg.vae_lora_rank, cfg.precision) == (64, 64, "fp16")
    assert cfg.transformer_lora_path.name == "transformer.safetensors"
    assert cfg.vae_lora_path.name == "vae.safetensors"
    assert cfg.prompt_embeds_path.name == "prompt_embeds.pt" and cfg.pool_embeds_path.name == "pool_embeds.pt"
    assert (cfg.latent_tile, cfg.latent_overlap) == (64, 8)


@pytest.mark.parametrize(
    "override, message",
    [
        ("colour_fix=sepia", "colour_fix"),
        ("latent_overlap=64", "latent_overlap"),
        ("vae_tile=-1", "vae_tile"),
        ("transformer_lora_rank=0", "transformer_lora_rank"),
        ("precision=fp16", "fp16"),  # with the default device (cpu)
        ("deterministic=1", "deterministic"),
        ("lora_file=x", "unknown key"),
    ],
)
def test_config_errors_name_the_setting(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RefinerConfig, None, [override])


def test_unset_paths_and_missing_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="base_dir is not set"):
        resolve_files(RefinerConfig())
    cfg = RefinerConfig(base_dir=str(tmp_path / "sd3"), lora_dir=str(tmp_path / "lora"), embedding_dir=str(tmp_path))
    with pytest.raises(RefinerFileNotFoundError) as info:
        resolve_files(cfg)
    text = str(info.value)
    for name in ("sd3", "transformer.safetensors", "vae.safetensors", "prompt_embeds.pt", "pool_embeds.pt"):
        assert name in text


# ---------------------------------------------------------------------------------------------------------------------
# tiling
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length, tile, overlap", [(4, 8, 2), (8, 8, 2), (10, 4, 2), (12, 4, 2), (70, 64, 8)])
def test_tile_starts_cover_the_axis_with_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    for a, b in itertools.pairwise(starts):
        assert 0 < b - a <= size - overlap  # consecutive tiles share >= overlap pixels


def test_gaussian_weights_peak_in_the_middle():
    w = gaussian_weights(8, 6)
    assert w.shape == (8, 6) and (w > 0).all()
    assert w[3:5, 2:4].min() > w[0, 0] * 100


@pytest.mark.parametrize("in_factor, out_factor", [(1, 1), (8, 1), (1, 8)])
def test_tiled_map_with_a_pixelwise_function_equals_untiled(in_factor, out_factor):
    grid = (10, 14)  # not a multiple of the tile stride: the last tile is flush with the end
    x = torch.randn(2, 3, grid[0] * in_factor, grid[1] * in_factor)
    weight = torch.randn(5, 3, 1, 1)

    def fn(t):  # pixelwise map + resampling between the two resolutions
        y = F.conv2d(t, weight)
        if in_factor > 1:
            y = F.avg_pool2d(y, in_factor)
        return F.interpolate(y, scale_factor=out_factor, mode="nearest") if out_factor > 1 else y

    tiled = tiled_map(x, fn, tile=4, overlap=2, in_factor=in_factor, out_factor=out_factor, align=2)
    torch.testing.assert_close(tiled, fn(x), rtol=1e-5, atol=1e-5)


def test_tiled_map_checks_alignment_and_untiled_shortcut():
    calls = []
    x = torch.randn(1, 2, 6, 6)
    tiled_map(x, lambda t: calls.append(t.shape) or t, tile=8, overlap=2)
    assert calls == [torch.Size([1, 2, 6, 6])]  # fits in one tile: one call on the whole input
    with pytest.raises(ValueError, match="multiple of 2"):
        tiled_map(torch.randn(1, 2, 10, 10), lambda t: t, tile=3, overlap=1, align=2)


# ---------------------------------------------------------------------------------------------------------------------
# colour fixes: measured on the low frequencies
# ---------------------------------------------------------------------------------------------------------------------
def _smooth_image(gen: torch.Generator) -> torch.Tensor:
    base = torch.rand(1, 3, 6, 6, generator=gen)
    return F.interpolate(base, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)


def _lowpass(img: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(img, 16)


def test_wavelet_fix_restores_the_input_colours_and_keeps_the_details():
    gen = torch.Generator().manual_seed(0)
    reference = _smooth_image(gen)
    detail = 0.1 * torch.randn(1, 3, 64, 64, generator=gen)
    cast = torch.tensor([1.3, 0.8, 1.0]).view(1, 3, 1, 1)
    refined = reference * cast + torch.tensor([0.1, -0.05, 0.15]).view(1, 3, 1, 1) + detail  # colour drift
    fixed = wavelet_colour_fix(refined, reference, levels=5)
    before = (_lowpass(refined) - _lowpass(reference)).abs().mean()
    after = (_lowpass(fixed) - _lowpass(reference)).abs().mean()
    assert after < 0.1 * before, (before, after)
    # the finest detail band is the refined image's, not the reference's
    high_fixed, _ = wavelet_decompose2d(fixed, 1)
    high_refined, _ = wavelet_decompose2d(refined, 1)
    assert (high_fixed - high_refined).abs().mean() < 0.2 * high_refined.abs().mean()
    # exact decomposition: high + low == image
    high, low = wavelet_decompose2d(refined, 5)
    torch.testing.assert_close(high + low, refined)


def test_adain_fix_matches_channel_statistics_and_restores_colour():
    gen = torch.Generator().manual_seed(1)
    reference = _smooth_image(gen)
    gain, offset = torch.tensor([0.5, 1.4, 0.8]).view(1, 3, 1, 1), torch.tensor([0.4, -0.2, 0.2]).view(1, 3, 1, 1)
    refined = reference * gain + offset + 0.02 * torch.randn(1, 3, 64, 64, generator=gen)  # per-channel colour drift
    fixed = adain_colour_fix(refined, reference)
    torch.testing.assert_close(fixed.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(fixed.std(dim=(2, 3)), reference.std(dim=(2, 3)), atol=1e-3, rtol=1e-3)
    before = (_lowpass(refined) - _lowpass(reference)).abs().mean()
    after = (_lowpass(fixed) - _lowpass(reference)).abs().mean()
    assert after < 0.1 * before, (before, after)


def test_colour_fix_dispatch():
    a, b = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    assert colour_fix(a, b, method="none") is a
    torch.testing.assert_close(colour_fix(a, b, method="adain"), adain_colour_fix(a, b))
    torch.testing.assert_close(colour_fix(a, b, method="wavelet", wavelet_levels=3), wavelet_colour_fix(a, b, levels=3))


# ---------------------------------------------------------------------------------------------------------------------
# LoRA: strict file reading, checking, merging (on plain torch layers)
# ---------------------------------------------------------------------------------------------------------------------
class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 5)
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)


def _toy_pairs(rank: int, gen: torch.Generator) -> dict[str, LoRAPair]:
    return {
        "lin": LoRAPair(down=torch.randn(rank, 6, generator=gen), up=torch.randn(5, rank, generator=gen)),
        "conv": LoRAPair(down=torch.randn(rank, 3, 3, 3, generator=gen), up=torch.randn(4, rank, 1, 1, generator=gen)),
    }


def test_merge_equals_the_unmerged_lora_forward():
    gen = torch.Generator().manual_seed(0)
    toy = _Toy()
    pairs = _toy_pairs(2, gen)
    x_lin, x_conv = torch.randn(4, 6, generator=gen), torch.randn(2, 3, 9, 7, generator=gen)
    scale = 3.0 / 2
    want_lin = toy.lin(x_lin) + scale * F.linear(F.linear(x_lin, pairs["lin"].down), pairs["lin"].up)
    down_conv = F.conv2d(x_conv, pairs["conv"].down, stride=2, padding=1)  # peft's lora_A: the layer's geometry
    want_conv = toy.conv(x_conv) + scale * F.conv2d(down_conv, pairs["conv"].up)
    merged = merge_lora_(toy, pairs, targets=["lin", "conv"], rank=2, alpha=3.0, source="toy")
    assert merged == 2
    torch.testing.assert_close(toy.lin(x_lin), want_lin, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(toy.conv(x_conv), want_conv, rtol=1e-5, atol=1e-5)


def test_check_lora_rejects_missing_unexpected_shape_and_rank():
    gen = torch.Generator().manual_seed(0)
    toy = _Toy()
    pairs = _toy_pairs(2, gen)
    with pytest.raises(LoRAFormatError, match=r"missing LoRA for 1 layer\(s\).*conv"):
        check_lora(toy, {"lin": pairs["lin"]}, targets=["lin", "conv"], rank=2, source="f.safetensors")
    with pytest.raises(LoRAFormatError, match=r"unexpected LoRA for 1 layer\(s\).*conv"):
        check_lora(toy, pairs, targets=["lin"], rank=2, source="f.safetensors")
    with pytest.raises(LoRAFormatError, match="f.safetensors.*rank 3"):
        check_lora(toy, pairs, targets=["lin", "conv"], rank=3, source="f.safetensors")
    bad = dict(pairs, lin=LoRAPair(down=pairs["lin"].down, up=torch.randn(6, 2)))
    with pytest.raises(LoRAFormatError, match="'lin'"):
        check_lora(toy, bad, targets=["lin", "conv"], rank=2, source="f.safetensors")


def _write(path: Path, keys: dict[str, torch.Tensor]) -> Path:
    save_file(keys, str(path))
    return path


def test_read_lora_file_strict_keys(tmp_path):
    a, b = torch.randn(2, 6), torch.randn(5, 2)
    good = _write(
        tmp_path / "good.safetensors", {"transformer.lin.lora_A.weight": a, "transformer.lin.lora_B.weight": b}
    )
    pairs = read_lora_file(good)
    assert list(pairs) == ["lin"] and torch.equal(pairs["lin"].down, a) and torch.equal(pairs["lin"].up, b)

    cases = {
        "peft_name.safetensors": (
            {"transformer.lin.lora_A.default.weight": a, "transformer.lin.lora_B.weight": b},
            "default",
        ),
        "no_prefix.safetensors": ({"lin.lora_A.weight": a, "lin.lora_B.weight": b}, "lin.lora_A.weight"),
        "extra.safetensors": (
            {
                "transformer.lin.lora_A.weight": a,
                "transformer.lin.lora_B.weight": b,
                "transformer.lin.alpha": torch.tensor(2.0),
            },
            "transformer.lin.alpha",
        ),
        "half.safetensors": ({"transformer.lin.lora_A.weight": a}, "only one of lora_A / lora_B"),
    }
    for name, (keys, message) in cases.items():
        path = _write(tmp_path / name, keys)
        with pytest.raises(LoRAFormatError, match=message) as info:
            read_lora_file(path)
        assert name in str(info.value)  # the file is named
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoRAFormatError, match="garbage.safetensors"):
        read_lora_file(tmp_path / "garbage.safetensors")
    with pytest.raises(RefinerFileNotFoundError, match="absent.safetensors"):
        read_lora_file(tmp_path / "absent.safetensors")


def test_config_is_frozen():
    cfg = RefinerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]
