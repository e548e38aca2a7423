"""ExpertEnsemble on tiny random HAT / DAT / NAFNet experts: shapes, cropping, input modes, devices, precision, CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import REPO_ROOT
from PIL import Image
from tiny_experts import save_tiny_checkpoint, tiny_ensemble_spec

from experts.devices import DeviceError, resolve_device
from experts.ensemble import ExpertEnsemble
from experts.expert import load_expert
from experts.hooks import FeatureHooks
from experts.loading import ExpertLoadError
from experts.spec import EnsembleSpec, ExpertSpec, load_ensemble_spec
from pipeline.commands.run_experts import main as run_main
from pipeline.core.config import save_config
from pipeline.core.imageio import read_image, to_uint8
from pipeline.core.resize import bicubic_upscale


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> EnsembleSpec:
    return tiny_ensemble_spec(tmp_path_factory.mktemp("tiny_experts"))


@pytest.fixture(scope="module")
def tiny_ensemble(tiny_spec) -> ExpertEnsemble:
    return ExpertEnsemble.from_spec(tiny_spec)


def test_outputs_and_features_have_the_documented_shapes(tiny_ensemble):
    lr = torch.rand(2, 3, 13, 11)  # not a multiple of HAT's window (8), nor of NAFNet's 2^3 at 4x
    srs, feats = tiny_ensemble(lr)
    assert srs.shape == (2, 3, 3, 52, 44) and srs.dtype == torch.float32
    assert 0 <= srs.min() and srs.max() <= 1
    assert [tuple(f.shape) for f in feats] == [(2, c, 13, 11) for c in tiny_ensemble.feature_channels]
    assert tiny_ensemble.feature_channels == (16, 32, 32)  # HAT embed 16, DAT embed 32, NAFNet decoders.0 = 4*8
    assert tiny_ensemble.names == ("hat", "dat", "nafnet")
    assert [fp.name for fp in tiny_ensemble.fingerprints] == ["hat", "dat", "nafnet"]
    json.dumps([fp.to_dict() for fp in tiny_ensemble.fingerprints])  # serialisable for the cache


def test_hat_feature_is_the_cropped_conv_after_body_and_sr_the_padded_run(tiny_ensemble):
    """Ground truth by hand: pad like spandrel, run the model with a hook, crop."""
    hat = tiny_ensemble.experts[0]
    lr = torch.rand(1, 3, 13, 11)
    srs, feats = tiny_ensemble(lr)
    with torch.no_grad(), FeatureHooks(hat.model, layers=("conv_after_body",)) as hooks:
        padded = torch.nn.functional.pad(lr, (0, 5, 0, 3), mode="reflect")  # HAT needs >= 16 px (spandrel)
        out = hat.model(padded)
        (feat,) = hooks.collect()
    torch.testing.assert_close(srs[:, 0], out[..., :52, :44].clamp(0, 1))
    torch.testing.assert_close(feats[0], feat[..., :13, :11])


def test_batch_items_are_independent(tiny_ensemble):
    lr = torch.rand(2, 3, 17, 16)
    srs, feats = tiny_ensemble(lr)
    srs1, feats1 = tiny_ensemble(lr[1:])
    torch.testing.assert_close(srs[1:], srs1, atol=1e-5, rtol=1e-4)
    for f, f1 in zip(feats, feats1):
        torch.testing.assert_close(f[1:], f1, atol=1e-5, rtol=1e-4)


def test_bicubic_input_mode_feeds_the_bicubic_upscale(tiny_ensemble):
    naf = tiny_ensemble.experts[2]
    lr = torch.rand(1, 3, 12, 10)
    srs, feats = tiny_ensemble(lr)
    sr, feat = naf.run(bicubic_upscale(lr, 4))
    torch.testing.assert_close(srs[:, 2], sr)
    torch.testing.assert_close(feats[2], feat)


def test_expert_input_mode_refines_another_experts_output(tiny_spec):
    spec = tiny_ensemble_spec_with(tiny_spec, nafnet_input="expert:hat")
    # listed first, but runs after HAT
    spec = dataclasses.replace(spec, experts=(spec.experts[2], spec.experts[0], spec.experts[1]))
    ens = ExpertEnsemble.from_spec(spec)
    lr = torch.rand(1, 3, 12, 10)
    srs, _ = ens(lr)
    assert ens.names == ("nafnet", "hat", "dat")
    sr_naf, _ = ens.experts[0].run(srs[:, 1])
    torch.testing.assert_close(srs[:, 0], sr_naf)


def tiny_ensemble_spec_with(spec: EnsembleSpec, *, nafnet_input: str) -> EnsembleSpec:
    experts = tuple(dataclasses.replace(e, input=nafnet_input) if e.name == "nafnet" else e for e in spec.experts)
    return dataclasses.replace(spec, experts=experts)


def test_cycles_are_rejected(tiny_spec):
    hat = tiny_spec.experts[0]
    a = dataclasses.replace(tiny_spec.experts[2], name="a", input="expert:b")
    b = dataclasses.replace(tiny_spec.experts[2], name="b", input="expert:a")
    experts = [load_expert(e) for e in (hat, a, b)]
    with pytest.raises(ValueError, match="cycle"):
        ExpertEnsemble(experts=experts)


def test_concurrent_path_matches_sequential(tiny_spec, tiny_ensemble):
    lr = torch.rand(1, 3, 16, 12)
    ref_srs, ref_feats = tiny_ensemble(lr)
    threaded = ExpertEnsemble(experts=tiny_ensemble.experts, concurrent=True)
    srs, feats = threaded(lr)
    torch.testing.assert_close(srs, ref_srs)
    for f, g in zip(feats, ref_feats):
        torch.testing.assert_close(f, g)


def test_grad_modes(tiny_spec):
    lr = torch.rand(1, 3, 16, 16)
    inference = ExpertEnsemble.from_spec(tiny_spec)
    assert inference(lr).feats[0].is_inference()
    live = ExpertEnsemble.from_spec(tiny_spec, grad_mode="no_grad")
    srs, feats = live(lr)
    assert not srs.is_inference() and not feats[0].is_inference() and not srs.requires_grad
    w = torch.ones(1, requires_grad=True)
    (srs * w).mean().backward()  # usable as a constant input of a model under training
    assert w.grad is not None


def test_missing_device_is_a_clear_error(tiny_spec):
    with pytest.raises(DeviceError, match="cuda:7"):
        resolve_device("cuda:7")
    with pytest.raises(DeviceError, match="invalid device 'gpu0'"):
        resolve_device("gpu0")
    hat = dataclasses.replace(tiny_spec.experts[0], device="cuda:1")
    with pytest.raises(DeviceError, match="cuda:1"):
        load_expert(hat)


def test_precision_is_checked_against_the_architecture(tiny_spec):
    hat = tiny_spec.experts[0]
    with pytest.raises(ValueError, match="does not support fp16"):
        load_expert(dataclasses.replace(hat, precision="fp16"))
    bf16 = load_expert(dataclasses.replace(hat, precision="bf16"))
    fp32 = load_expert(hat)
    lr = torch.rand(1, 3, 16, 16)
    sr16, feat16 = bf16.run(lr)
    sr32, _ = fp32.run(lr)
    assert sr16.dtype == feat16.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert (sr16 - sr32).abs().mean() < 0.05


def test_preset_runs_with_tiny_checkpoints(tiny_spec):
    """configs/experts/hat_dat_nafnet.yaml through the same path, with its checkpoints swapped for tiny ones."""
    preset = load_ensemble_spec(REPO_ROOT / "configs" / "experts" / "hat_dat_nafnet.yaml")
    tiny = {e.name: e.checkpoint for e in tiny_spec.experts}
    experts = tuple(  # random tiny weights: the loader's probe is off (experts/probe.py)
        dataclasses.replace(e, checkpoint=tiny[e.name], device="cpu", expect={}, min_probe_psnr=0)
        for e in preset.experts
    )
    ens = ExpertEnsemble.from_spec(dataclasses.replace(preset, experts=experts))
    srs, feats = ens(torch.rand(1, 3, 9, 21))
    assert srs.shape == (1, 3, 3, 36, 84) and [f.shape[-2:] for f in feats] == [(9, 21)] * 3
    with pytest.raises(ExpertLoadError, match=r"weights/HAT-L_SRx4_ImageNet-pretrain\.pth: checkpoint file not found"):
        ExpertEnsemble.from_spec(preset)  # the real checkpoints are not in this repository


def test_cli_writes_one_folder_per_expert(tiny_spec, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    save_config(tiny_spec, cfg)
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    for name, (h, w) in {"a.png": (12, 10), "b.bmp": (9, 14)}.items():
        Image.fromarray(to_uint8(torch.rand(1, 3, h, w))).save(lr_dir / name)
    out = tmp_path / "out"
    assert run_main(["--config", str(cfg), "--input", str(lr_dir), "--output", str(out)]) == 0
    for expert in ("hat", "dat", "nafnet"):
        assert read_image(out / expert / "a.png").shape == (1, 3, 48, 40)
        assert read_image(out / expert / "b.png").shape == (1, 3, 36, 56)
    fps = json.loads((out / "fingerprints.json").read_text())
    assert [fp["name"] for fp in fps] == ["hat", "dat", "nafnet"]
    assert run_main(["--config", str(cfg), "--input", str(lr_dir), "--output", str(out), "--device", "x=cpu"]) == 2


def test_single_expert_checkpoint_formats_agree(tmp_path):
    """The same weights as .pth (wrapped) and .safetensors give identical outputs."""
    a = save_tiny_checkpoint("SPAN", tmp_path / "s.pth", key="params")
    b = save_tiny_checkpoint("SPAN", tmp_path / "s.safetensors")
    lr = torch.rand(1, 3, 10, 9)
    outs = [
        load_expert(ExpertSpec(name="s", checkpoint=str(p), architecture="SPAN", scale=4, min_probe_psnr=0)).run(lr)
        for p in (a, b)
    ]
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=0)
