"""One frozen expert: a spandrel model with its spec, device, precision, hooks, padding, cropping and tiling.

``Expert.run(x)`` maps the expert's input ``x`` — the LR ``(B,3,H,W)`` for ``input: lr``, an SR-sized image
``(B,3,sH,sW)`` for ``input: bicubic`` / ``expert:<name>`` — to

* ``sr``   ``(B,3,sH,sW)`` float32 in [0,1] (clamped, as spandrel's descriptor call does), and
* ``feat`` ``(B,C,H,W)``   float32: the hooked layer(s), cropped back to the LR grid (several layers are
  concatenated along channels),

both on the expert's device. The input is reflect-padded at the bottom/right to the architecture's size
requirements (spandrel's ``pad_tensor``, exactly what ``ImageModelDescriptor.__call__`` does; models such as HAT,
SwinIR, CRAFT, DITN pad further inside their forward), the model runs in the spec's precision, and outputs and
features are cropped back. With ``tile > 0`` large inputs run in LR tiles (``experts/tiling.py``).

At construction a dry run on the probe image (32×32 LR pixels, experts/probe.py) checks that the output is close
to the probe's bicubic upscale (a wrongly fed model is refused, naming the likely cause; ``probe_psnr`` keeps the
score) and that every hook layer lies on the LR grid, and records the feature channel count in the
:class:`ExpertFingerprint`.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from experts.code import load_code_model
from experts.devices import precision_dtype, resolve_device
from experts.hooks import FeatureHooks, HookError, default_hook_layers
from experts.loading import (
    ExpertLoadError,
    LoadedModel,
    load_descriptor,
    loaded_from_descriptor,
    read_state_dict,
    sha256_file,
)
from experts.padding import pad_to_requirements
from experts.probe import PROBE_LR, ProbeImages, diagnose_probe, probe_images, probe_psnr
from experts.spec import ExpertSpec, portable_path, resolve_expert_checkpoint
from experts.tiling import tiled_forward

__all__ = ["Expert", "ExpertFingerprint", "GradMode", "grad_context", "load_expert", "pinned_checkpoint"]

GradMode = Literal["inference", "no_grad"]


@contextlib.contextmanager
def grad_context(mode: GradMode) -> Iterator[None]:
    """``inference``: ``torch.inference_mode()`` (fastest; outputs cannot enter autograd later). ``no_grad``: for
    experts run live inside a training step, whose outputs feed a model that is being trained."""
    if mode == "inference":
        with torch.inference_mode():
            yield
    elif mode == "no_grad":
        with torch.no_grad():
            yield
    else:
        raise ValueError(f"grad_mode must be 'inference' or 'no_grad', got {mode!r}")


@dataclass(frozen=True)
class ExpertFingerprint:
    """What identifies an expert's outputs: the cache stores it and fusion reads ``feature_channels`` from it. In files
    (a cache's index, a checkpoint's config.json) it is the dict of :meth:`to_dict`; :meth:`from_dict` reads it back,
    checking every key the toolkit uses."""

    name: str
    architecture: str
    checkpoint: str
    sha256: str
    scale: int  # the model's own scale (1 for an HR-space restorer)
    input: str
    hook_layers: tuple[str, ...]
    feature_channels: int
    precision: str
    num_params: int
    tags: tuple[str, ...]
    hyperparameters: Mapping[str, Any]  # detected by spandrel (a code expert: its kwargs), JSON-serialisable
    code: Mapping[str, Any] | None = None  # a code expert's file (portable path), sha256, class, kwargs, data range …
    self_ensemble: int = 1  # 8: the outputs recorded are each expert's ×8 self-ensemble (a cache made so)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (the HDF5 cache stores it as a JSON attribute); ``self_ensemble`` only when not 1."""
        extra = {"code": dict(self.code)} if self.code is not None else {}
        if self.self_ensemble != 1:
            extra["self_ensemble"] = self.self_ensemble
        return {
            "name": self.name,
            "architecture": self.architecture,
            "checkpoint": self.checkpoint,
            "sha256": self.sha256,
            "scale": self.scale,
            "input": self.input,
            "hook_layers": list(self.hook_layers),
            "feature_channels": self.feature_channels,
            "precision": self.precision,
            "num_params": self.num_params,
            "tags": list(self.tags),
            "hyperparameters": dict(self.hyperparameters),
            **extra,
        }

    @classmethod
    def from_dict(cls, d: Any, *, where: str) -> ExpertFingerprint:
        """A fingerprint as a file holds it → the object; a missing key or a wrong type is one
        :class:`experts.loading.ExpertLoadError` naming ``where`` and the key (never a KeyError)."""
        if not isinstance(d, Mapping):
            raise ExpertLoadError(f"{where}: expected an expert fingerprint (an object), got {type(d).__name__}")

        def get(key: str, kind: type | tuple[type, ...], default: Any = _REQUIRED) -> Any:
            value = d.get(key, default)
            if value is _REQUIRED or not isinstance(value, kind) or isinstance(value, bool):
                shown = "nothing" if value is _REQUIRED else repr(value)[:80]
                raise ExpertLoadError(f"{where}.{key}: expected {_kind_name(kind)}, got {shown}")
            return value

        hooks = get("hook_layers", list)
        if not all(isinstance(h, str) for h in hooks):
            raise ExpertLoadError(f"{where}.hook_layers: expected a list of layer names")
        code = get("code", (Mapping, type(None)), None)
        return cls(
            name=get("name", str),
            architecture=get("architecture", str),
            checkpoint=get("checkpoint", str),
            sha256=get("sha256", str),
            scale=get("scale", int),
            input=get("input", str),
            hook_layers=tuple(hooks),
            feature_channels=get("feature_channels", int),
            precision=get("precision", str),
            num_params=get("num_params", int, 0),
            tags=tuple(get("tags", list, [])),
            hyperparameters=types.MappingProxyType(dict(get("hyperparameters", Mapping, {}))),
            code=types.MappingProxyType(dict(code)) if code is not None else None,
            self_ensemble=get("self_ensemble", int, 1),
        )


_REQUIRED = object()


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {"str": "a string", "int": "an integer", "list": "a list", "Mapping": "an object"}.get(k.__name__, "null")
        for k in kinds
    )


class Expert:
    """A frozen expert (see the module docstring). Build it with :func:`load_expert`."""

    def __init__(
        self,
        *,
        spec: ExpertSpec,
        loaded: LoadedModel,
        checkpoint: Path,
        sha256: str,
        ensemble_scale: int = 4,
        grad_mode: GradMode = "inference",
    ) -> None:
        what = f"expert {spec.name!r} ({checkpoint})"
        self.in_factor = 1 if spec.input == "lr" else ensemble_scale  # input pixels per LR pixel
        if self.in_factor * loaded.scale != ensemble_scale:
            raise ValueError(
                f"{what}: input {spec.input!r} needs a x{ensemble_scale // self.in_factor} model for a "
                f"x{ensemble_scale} ensemble, the checkpoint is x{loaded.scale}"
            )
        self.spec = spec
        self.name = spec.name
        self.checkpoint = checkpoint
        self.probe_psnr = math.nan  # dB of the probe's output against its bicubic upscale (set by _probe)
        self.ensemble_scale = ensemble_scale
        self.grad_mode: GradMode = grad_mode
        self.size_requirements = loaded.size_requirements
        self.model_scale = loaded.scale
        self.data_range = loaded.data_range  # the model is fed [0, data_range] and its output divided by it
        self.device = resolve_device(spec.device)
        self.dtype = precision_dtype(
            spec.precision,
            supports_half=loaded.supports_half,
            supports_bfloat16=loaded.supports_bfloat16,
            what=what,
        )
        model = loaded.model
        model.eval()
        model.requires_grad_(False)
        self.model = model.to(device=self.device, dtype=self.dtype)
        if spec.hooks:
            self.hook_layers: tuple[str, ...] = tuple(spec.hooks)
        elif loaded.code is not None:
            self.hook_layers = ()  # a code expert has no default layer: no features unless `hooks:` names them
        else:
            self.hook_layers = default_hook_layers(loaded.architecture, model)
        if self.hook_layers:
            FeatureHooks(model, layers=self.hook_layers)  # fail now on a layer name that does not exist

        channels = self._probe()
        self.fingerprint = ExpertFingerprint(
            name=spec.name,
            architecture=loaded.architecture,
            checkpoint=portable_path(checkpoint),
            sha256=sha256,
            scale=loaded.scale,
            input=spec.input,
            hook_layers=self.hook_layers,
            feature_channels=channels,
            precision=spec.precision,
            num_params=sum(p.numel() for p in model.parameters()),
            tags=tuple(loaded.tags),
            hyperparameters=types.MappingProxyType(dict(loaded.hyperparameters)),
            code=types.MappingProxyType(dict(loaded.code)) if loaded.code is not None else None,
        )

    @property
    def feature_channels(self) -> int:
        return self.fingerprint.feature_channels

    # ---------------------------------------------------------------------------------------------------------------
    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert input ``x`` (see module docstring; any device) → ``(sr (B,3,sH,sW), feat (B,C,H,W))`` float32 on
        the expert's device, under this expert's grad mode."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expert {self.name!r}: expected (B,3,H,W) input, got {tuple(x.shape)}")
        h_in, w_in = x.shape[-2:]
        if h_in % self.in_factor or w_in % self.in_factor:
            raise ValueError(f"expert {self.name!r}: input {h_in}x{w_in} is not {self.in_factor}x an LR size")
        h, w = h_in // self.in_factor, w_in // self.in_factor  # LR grid
        with grad_context(self.grad_mode), self._on_device():
            x = x.to(device=self.device, dtype=torch.float32)
            tile = self.spec.tile
            if tile and max(h, w) > tile:
                sr, feat = tiled_forward(
                    self._forward_once,
                    x,
                    lr_size=(h, w),
                    tile=tile,
                    overlap=self.spec.tile_overlap,
                    in_factor=self.in_factor,
                    out_factors=(self.ensemble_scale, 1),
                )
            else:
                sr, feat = self._forward_once(x)
        return sr, feat

    def _on_device(self) -> contextlib.AbstractContextManager:
        """Make the expert's GPU the current one (code that allocates on "cuda" without an index lands there)."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def _forward_once(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_in, w_in = x.shape[-2:]
        h, w = h_in // self.in_factor, w_in // self.in_factor
        out, raw_feats = self._hooked_forward(x)
        s = self.model_scale
        sr = out[..., : h_in * s, : w_in * s].float().clamp_(0, 1)  # (B,3,sH,sW)
        if not self.hook_layers:
            return sr, sr.new_zeros(sr.shape[0], 0, h, w)  # no hooked layer: an empty (B,0,H,W) feature
        feats = []
        for name, f in zip(self.hook_layers, raw_feats):
            if f.ndim != 4 or f.shape[-2] < h or f.shape[-1] < w:
                raise HookError(
                    f"expert {self.name!r}: hook layer {name!r} gave {tuple(f.shape)}, smaller than the LR grid {h}x{w}"
                )
            feats.append(f[..., :h, :w])  # padding is at the bottom/right
        feat = torch.cat(feats, dim=1).float() if len(feats) > 1 else feats[0].float()  # (B,C,H,W)
        return sr, feat

    def _hooked_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Pad ``x`` to the size requirements, run the model with hooks → (raw output, raw hooked features)."""
        h_in, w_in = x.shape[-2:]
        xp = pad_to_requirements(x, self.size_requirements)  # reflect at bottom/right, as spandrel's descriptor call
        xp = xp.to(self.dtype)
        if self.data_range != 1.0:
            xp = xp * self.data_range
        if self.hook_layers:
            with FeatureHooks(self.model, layers=self.hook_layers) as hooks:
                out = self.model(xp)
                feats = hooks.collect()
        else:
            out, feats = self.model(xp), []
        if self.data_range != 1.0 and isinstance(out, torch.Tensor):
            out = out / self.data_range
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[1] != 3:
            raise RuntimeError(
                f"expert {self.name!r}: the model returned {type(out).__name__} "
                f"{tuple(getattr(out, 'shape', ()))}, expected (B,3,H,W)"
            )
        s = self.model_scale
        if out.shape[-2] < h_in * s or out.shape[-1] < w_in * s:
            raise RuntimeError(
                f"expert {self.name!r}: output {tuple(out.shape)} is smaller than x{s} the input {h_in}x{w_in}"
            )
        return out, feats

    def _probe(self) -> int:
        """Dry run on the probe image (experts/probe.py): the output must be close to the probe's bicubic upscale
        (else an :class:`ExpertLoadError` naming the likely cause), each hook layer on the LR grid; → the feature
        channel count. Sets ``probe_psnr``."""
        a = PROBE_LR
        probe = probe_images(self.ensemble_scale)
        x = probe.lr if self.in_factor == 1 else probe.bicubic  # (1,3,a,a) LR, or its upscale for a x1 restorer
        with grad_context(self.grad_mode), self._on_device():
            out, feats = self._hooked_forward(x.to(self.device, copy=True))  # a copy: the probe is shared
        self._check_probe(out, probe)
        for name, f in zip(self.hook_layers, feats):
            if f.ndim != 4 or not (a <= f.shape[-2] < 2 * a and a <= f.shape[-1] < 2 * a):
                raise HookError(
                    f"expert {self.name!r}: hook layer {name!r} is not on the LR grid: a {a}x{a} LR input gives a "
                    f"feature of shape {tuple(f.shape)} (expected (B,C,{a}..{2 * a - 1},{a}..{2 * a - 1})); "
                    "hook a layer at LR resolution"
                )
        return sum(int(f.shape[1]) for f in feats)

    def _check_probe(self, out: torch.Tensor, probe: ProbeImages) -> None:
        side = PROBE_LR * self.ensemble_scale
        sr = out[..., :side, :side].float()
        border = 2 * self.ensemble_scale
        self.probe_psnr = probe_psnr(sr, probe.bicubic, border=border)
        threshold = self.spec.min_probe_psnr
        if threshold <= 0 or self.probe_psnr >= threshold:  # 0: the check is off
            return
        x = probe.lr if self.in_factor == 1 else probe.bicubic

        def rerun(data_range: float) -> torch.Tensor:
            saved, self.data_range = self.data_range, data_range
            try:
                with grad_context(self.grad_mode), self._on_device():
                    return self._hooked_forward(x.to(self.device, copy=True))[0][..., :side, :side].float()
            except Exception:  # noqa: BLE001 — a model that fails on the other range: that range is not the cause
                return torch.full_like(sr, math.nan)
            finally:
                self.data_range = saved

        cause = diagnose_probe(
            score=self.probe_psnr,
            threshold=threshold,
            output=sr,
            ref=probe.bicubic,
            border=border,
            data_range=self.data_range if self.spec.code is not None else None,
            rerun=rerun if self.spec.code is not None else None,
        )
        raise ExpertLoadError(
            f"{self.checkpoint}: expert {self.name!r} fails the probe: on a smooth {PROBE_LR}x{PROBE_LR} test "
            f"image its output is {self.probe_psnr:.1f} dB from the bicubic upscale, min_probe_psnr is "
            f"{threshold:g} dB; {cause}"
        )


def pinned_checkpoint(spec: ExpertSpec) -> tuple[Path, str]:
    """A spandrel expert's checkpoint file and its sha256, checked against the spec's pin (nothing parsed); an
    :class:`ExpertLoadError` naming the file when it is missing or not the pinned one."""
    path = resolve_expert_checkpoint(spec)
    if not path.is_file():
        raise ExpertLoadError(f"{path}: checkpoint file not found (expert {spec.name!r})")
    digest = sha256_file(path)
    if spec.sha256 is not None and digest != spec.sha256:
        raise ExpertLoadError(f"{path}: sha256 {digest} differs from the pinned {spec.sha256}")
    return path, digest


def load_expert(spec: ExpertSpec, *, ensemble_scale: int = 4, grad_mode: GradMode = "inference") -> Expert:
    """Load, verify, freeze and place the expert ``spec`` (its paths are absolute after
    :func:`experts.spec.load_ensemble_spec`; a relative one in a spec built in code is relative to the current folder).

    Raises :class:`experts.loading.ExpertLoadError` (naming the file) for a missing/unsafe/unknown/mismatching
    checkpoint, :class:`experts.devices.DeviceError` for a device this machine lacks, ``ValueError`` for an
    unsupported precision, :class:`experts.hooks.HookError` for a bad hook layer.
    """
    if spec.code is not None:
        loaded, path, digest = load_code_model(spec)
    else:
        path, digest = pinned_checkpoint(spec)  # the pin first: a file that is not the pinned one is never parsed
        state = read_state_dict(path, key=spec.checkpoint_key)
        desc = load_descriptor(path, state, architecture=spec.architecture, scale=spec.scale, expect=spec.expect)
        loaded = loaded_from_descriptor(desc)
    return Expert(
        spec=spec, loaded=loaded, checkpoint=path, sha256=digest, ensemble_scale=ensemble_scale, grad_mode=grad_mode
    )
