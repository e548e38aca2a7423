"""FeatureHooks: capture by module name, always removed, strict about what they capture; default layers."""

from __future__ import annotations

import pytest
import torch
from tiny_experts import tiny_model
from torch import nn

from experts.hooks import FeatureHooks, HookError, default_hook_layers


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, 3, 1)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.fail:
            raise RuntimeError("boom")
        return self.head(y)


def _n_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_captures_named_layers_and_removes_hooks():
    net = _Net()
    x = torch.rand(2, 3, 5, 7)
    with FeatureHooks(net, layers=("body", "body.0")) as hooks:
        assert _n_hooks(net) == 2
        out = net(x)
        body, conv = hooks.collect()
    assert _n_hooks(net) == 0
    torch.testing.assert_close(body, torch.relu(net.body[0](x)))
    torch.testing.assert_close(net.head(body), out)
    assert conv.shape == (2, 4, 5, 7)


def test_hooks_are_removed_when_the_forward_raises():
    net = _Net()
    net.fail = True
    with pytest.raises(RuntimeError, match="boom"), FeatureHooks(net, layers=("body",)):
        net(torch.rand(1, 3, 4, 4))
    assert _n_hooks(net) == 0


def test_captured_features_are_copies():
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(inplace=True))
    with FeatureHooks(net, layers=("0",)) as hooks:
        net(torch.randn(1, 3, 4, 4))
        (feat,) = hooks.collect()
    assert (feat < 0).any()  # the in-place ReLU after it did not modify the captured tensor


def test_unknown_layer_suggests_close_names():
    with pytest.raises(HookError, match=r"no module\(s\) \['bdy'\].*'body'"):
        FeatureHooks(_Net(), layers=("bdy",))


def test_layer_that_runs_twice_or_not_at_all_is_an_error():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.unused = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(self.conv(x))

    net = Twice()
    with FeatureHooks(net, layers=("conv",)) as hooks:
        net(torch.rand(1, 3, 2, 2))
        with pytest.raises(HookError, match="ran 2 times"):
            hooks.collect()
    with FeatureHooks(net, layers=("unused",)) as hooks:
        net(torch.rand(1, 3, 2, 2))
        with pytest.raises(HookError, match="ran 0 times"):
            hooks.collect()


def test_non_tensor_output_is_an_error():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    net = nn.Sequential(Pair())
    with pytest.raises(HookError, match="returned tuple"), FeatureHooks(net, layers=("0",)):
        net(torch.rand(1, 3, 2, 2))
    assert _n_hooks(net) == 0


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("HAT", "conv_after_body"),
        ("DAT", "conv_after_body"),
        ("SPAN", "conv_cat"),
        ("Compact", "body.5"),
        ("NAFNet", "decoders.0"),
    ],
)
def test_default_hook_layers(arch, expected):
    assert default_hook_layers(arch, tiny_model(arch)) == (expected,)


def test_no_default_for_other_architectures():
    with pytest.raises(HookError, match="set `hooks:`"):
        default_hook_layers("ESRGAN", _Net())
