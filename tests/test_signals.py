"""Ground-truth-free signals for the gate (pipeline/model/signals.py)."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.resize import imresize
from pipeline.model.signals import expert_spread, lr_consistency


@pytest.mark.parametrize("experts", [1, 2, 3, 5])
def test_lr_consistency_is_zero_for_an_sr_that_explains_the_lr_and_grows_with_error(experts):
    g = torch.Generator().manual_seed(experts)
    hr = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 10, generator=g), size=(32, 40), mode="bicubic")
    lr = imresize(hr.double(), 0.25).float()  # the float MATLAB path: hr explains lr exactly
    srs = hr.unsqueeze(1).repeat(1, experts, 1, 1, 1)  # (B,E,3,32,40)
    m0 = lr_consistency(srs, lr, scale=4)
    assert m0.shape == (2, experts, 1, 8, 10) and m0.abs().max() < 1e-6
    noise = torch.randn(srs.shape, generator=g)
    means = [lr_consistency(srs + a * noise, lr, scale=4).mean().item() for a in (0.01, 0.03, 0.1)]
    assert 1e-4 < means[0] < means[1] < means[2]
    # a perturbation of one expert shows in that expert's map only
    if experts > 1:
        bad = srs.clone()
        bad[:, -1] += 0.05 * noise[:, -1]
        m = lr_consistency(bad, lr, scale=4)
        assert m[:, :-1].abs().max() < 1e-6 and m[:, -1].mean() > 1e-3


def test_lr_consistency_refuses_mismatched_sizes():
    with pytest.raises(ValueError, match="is not the x4"):
        lr_consistency(torch.rand(1, 2, 3, 16, 16), torch.rand(1, 3, 5, 4), scale=4)


def test_expert_spread_on_hand_values():
    srs = torch.zeros(1, 2, 3, 2, 2)
    srs[:, 1] = 0.2  # two experts 0.2 apart: std 0.1 everywhere
    torch.testing.assert_close(expert_spread(srs), torch.full((1, 1, 2, 2), 0.1))
    assert expert_spread(srs[:, :1]).abs().max() == 0  # one expert: no disagreement


@pytest.mark.parametrize("experts", [1, 2, 3, 5])
def test_gate_signals_channels_and_values(experts):
    from pipeline.model.signals import gate_signals, num_gate_signals

    g = torch.Generator().manual_seed(7)
    hr = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 10, generator=g), size=(32, 40), mode="bicubic")
    lr = imresize(hr.double(), 0.25).float()
    srs = hr.unsqueeze(1).repeat(1, experts, 1, 1, 1)
    s = gate_signals(lr, srs, scale=4)
    assert s.shape == (2, num_gate_signals(experts), 8, 10) and s.dtype == torch.float32
    assert s[:, : experts + 1].abs().max() < 1e-4  # consistent experts that agree: no error, no spread
    luma = 0.299 * lr[:, 0] + 0.587 * lr[:, 1] + 0.114 * lr[:, 2]
    torch.testing.assert_close(s[:, -1], luma)
    noisy = srs + 0.05 * torch.randn(srs.shape, generator=g)
    s2 = gate_signals(lr, noisy, scale=4)
    assert (s2[:, :experts] > 0.1).float().mean() > 0.9  # log1p(255·error) of a visibly wrong SR
    if experts > 1:
        assert s2[:, experts].mean() > 0.5  # the experts now disagree
