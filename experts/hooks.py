"""Capture intermediate features of a frozen model by module name, and the default layer per architecture.

:class:`FeatureHooks` registers forward hooks on named submodules for the duration of a ``with`` block and always
removes them on exit, also when the forward raises. Each hooked module must run exactly once per forward and return
a tensor; anything else is an error naming the layer, never a silently wrong feature.

Default hook layer per architecture (:func:`default_hook_layers`) — the deepest body feature at LR resolution, before
upsampling:

* any model with a top-level ``conv_after_body`` (the SwinIR family: SwinIR, Swin2SR, HAT, DAT, DRCT, ATD, RGT, GRL,
  and CRAFT, DITN): that conv's output. It fires *before* the long skip (``x = conv_after_body(body(x)) + x``), so the
  feature is the body's residual, not the upsampler's input.
* SPAN: ``conv_cat`` — the 1×1 conv fusing ``[conv_1 out, block_6 out, block_1 out, block_5 pre-attention]``; its
  output is exactly what the upsampler receives.
* Compact (Real-ESRGAN SRVGGNetCompact): the last activation of ``body`` (the last ``num_feat``-channel map before the
  conv that produces the pixel-shuffle channels).
* NAFNet (a ×1 restorer fed an SR-sized image): the decoder stage at stride 4, ``decoders.{n-3}`` for ``n`` encoder
  levels — at 1/4 of its input it lies on the LR grid. Needs ``n >= 3``.

Every other architecture needs ``hooks:`` in its spec. Whatever the layer, :class:`experts.expert.Expert` checks on
a dry run that the feature lies on the LR grid before it is used.
"""

from __future__ import annotations

import difflib
from types import TracebackType
from typing import Self

import torch
from torch import nn

from pipeline.core.errors import ToolkitError

__all__ = ["FeatureHooks", "HookError", "default_hook_layers"]


class HookError(ToolkitError, RuntimeError):
    """A hook layer does not exist, did not run exactly once, or did not return a tensor."""


class FeatureHooks:
    """``with FeatureHooks(model, layers=("conv_after_body",)) as hooks: model(x)`` → ``hooks.features[name]``.

    Captured tensors are detached copies (a later in-place op of the model cannot change them). ``clear()`` forgets
    the captured features so the same instance can be reused for several forwards inside one ``with`` block.
    """

    def __init__(self, model: nn.Module, *, layers: tuple[str, ...]) -> None:
        if not layers:
            raise HookError("FeatureHooks needs at least one layer name")
        modules = dict(model.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            hints = {name: difflib.get_close_matches(name, list(modules), n=3) for name in missing}
            raise HookError(f"{type(model).__name__} has no module(s) {missing}; closest names: {hints}")
        self._modules = {name: modules[name] for name in layers}
        self.layers = tuple(layers)
        self.features: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            self._calls[name] = self._calls.get(name, 0) + 1
            if not isinstance(output, torch.Tensor):
                raise HookError(
                    f"hook layer {name!r} ({type(module).__name__}) returned {type(output).__name__}, "
                    f"not a tensor; hook a module that outputs a feature map"
                )
            self.features[name] = output.detach().clone()

        return hook

    def __enter__(self) -> Self:
        self.clear()
        try:
            for name, module in self._modules.items():
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every registered hook (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def clear(self) -> None:
        self.features = {}
        self._calls = {}

    def collect(self) -> list[torch.Tensor]:
        """The captured features in ``layers`` order; each layer must have run exactly once since ``clear()``."""
        for name in self.layers:
            n = self._calls.get(name, 0)
            if n != 1:
                raise HookError(
                    f"hook layer {name!r} ran {n} times in one forward (expected exactly once); "
                    "hook a module that runs once per forward"
                )
        return [self.features[name] for name in self.layers]


def default_hook_layers(architecture: str, model: nn.Module) -> tuple[str, ...]:
    """The documented default hook layer of a spandrel model (see the module docstring); an error when there is none."""
    modules = dict(model.named_modules())
    if "conv_after_body" in modules:
        return ("conv_after_body",)
    if architecture == "SPAN" and "conv_cat" in modules:
        return ("conv_cat",)
    if architecture == "Compact":
        body = model.get_submodule("body")
        return (f"body.{len(body) - 2}",)  # type: ignore[arg-type]
    if architecture == "NAFNet":
        n = len(model.get_submodule("decoders"))  # type: ignore[arg-type]
        if n < 3:
            raise HookError(f"NAFNet with {n} levels has no stride-4 stage; set `hooks:` in the spec")
        return (f"decoders.{n - 3}",)
    top = [name for name, _ in model.named_children()]
    raise HookError(
        f"no default hook layer for architecture {architecture!r}; set `hooks:` in the expert spec "
        f"(top-level modules: {top})"
    )
