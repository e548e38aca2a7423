"""train.compile / train.channels_last / data.ram_budget_gb: validated config keys; the compiled and the
channels-last fusion compute what the eager NCHW one does (within float rounding); a failing compiler falls back to
eager with one printed line."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_fusion_net import make_inputs, perturb_zero_layers, tiny_config

from pipeline.core.config import ConfigError
from pipeline.model.fusion_net import FusionNet
from pipeline.training.config import load_run_config
from pipeline.training.fusion import compiled_forward

# fp32 on the CPU: a different kernel order (fused by inductor, or channels-last convolutions) only reorders sums
ATOL, RTOL = 1e-5, 1e-4


def _model_and_inputs():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = FusionNet(config=cfg).eval()
    perturb_zero_layers(model)  # not the untrained blend: every layer contributes
    return model, make_inputs(cfg, batch=2, size=(12, 12))


def test_config_keys_are_validated(tmp_path):
    cfg = load_run_config(None, ["train.compile=true", "train.channels_last=true", "data.ram_budget_gb=0.5"])
    assert cfg.train.compile and cfg.train.channels_last and cfg.data.ram_budget_gb == 0.5
    default = load_run_config(None)
    assert not default.train.compile and not default.train.channels_last and default.data.ram_budget_gb == 4.0
    for bad in ("data.ram_budget_gb=-1", "data.ram_budget_gb=5000", "data.ram_budget_gb=nan"):
        with pytest.raises(ConfigError, match="ram_budget_gb"):
            load_run_config(None, [bad])
    with pytest.raises(ConfigError, match="compile"):
        load_run_config(None, ["train.compile=maybe"])


def test_channels_last_gives_the_same_outputs():
    model, (lr, srs, feats) = _model_and_inputs()
    with torch.no_grad():
        ref = model(lr, srs, feats).sr
        cl = model.to(memory_format=torch.channels_last)
        out = cl(
            lr.contiguous(memory_format=torch.channels_last),
            srs,
            [f.contiguous(memory_format=torch.channels_last) for f in feats],
        ).sr
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="torch.compile on the CPU needs a C compiler"
)
def test_compiled_equals_eager(capsys):
    model, (lr, srs, feats) = _model_and_inputs()
    forward = compiled_forward(model, enabled=True, prog="t")
    with torch.no_grad():
        ref = model(lr, srs, feats).sr
        out = forward(lr, srs, feats).sr
    if "compiling failed" in capsys.readouterr().out:
        pytest.skip("torch.compile cannot compile on this machine (fell back to eager)")
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


def test_a_failing_compiler_falls_back_to_eager_in_one_line(monkeypatch, capsys):
    model, (lr, srs, feats) = _model_and_inputs()

    def broken(module):
        def fn(*args):
            raise RuntimeError("no compiler here")

        return fn

    monkeypatch.setattr(torch, "compile", broken)
    forward = compiled_forward(model, enabled=True, prog="t")
    with torch.no_grad():
        a, b = forward(lr, srs, feats).sr, forward(lr, srs, feats).sr
        ref = model(lr, srs, feats).sr
    assert torch.equal(a, ref) and torch.equal(b, ref)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln]
    assert len(lines) == 1 and "compiling failed" in lines[0] and "training eagerly" in lines[0]
    assert compiled_forward(model, enabled=False, prog="t") is model
