"""The ensembler type, its registry and the checks every method shares (pipeline/inference/ensemblers/).

An :class:`Ensembler` is frozen: the fingerprints of the experts it was fitted for, in order, and its few parameters.
Each method is one subclass, registered under its name in :data:`METHODS` (:func:`register`): how it is fitted
(:meth:`Ensembler.fit`), what it computes (:meth:`Ensembler.combine`), how it is described (:meth:`Ensembler.describe`),
its parameters and their file form (:meth:`Ensembler.parameters`, :meth:`Ensembler.from_parameters`). Nothing outside
this package compares a method's name: commands ask the class (``METHODS[name].fitted``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from pipeline.core.errors import ToolkitError, shorten

__all__ = [
    "ENSIR_BIN_WIDTH",
    "ENSIR_MIN_PIXELS",
    "MAX_WEIGHT",
    "METHODS",
    "Ensembler",
    "EnsemblerError",
    "FitOptions",
    "Fingerprints",
    "Pairs",
    "apply",
    "describe",
    "fit",
    "method_class",
    "register",
]

ENSIR_BIN_WIDTH = 32  # the authors' SR setting (8 bins per expert on 0–255)
ENSIR_MIN_PIXELS = 100  # fewer reference pixels in a bin set: global weights instead of EM
MAX_WEIGHT = 1e3  # |weight| of any ensembler parameter: a fitted blend stays within ±10, EnsIR's within [0, 1]


class EnsemblerError(ToolkitError, ValueError):
    """An ensembler file is unreadable or malformed, or does not belong to the experts it is used with."""


@dataclass(frozen=True)
class FitOptions:
    """What a fit may be tuned with; each method reads its own (EnsIR: ``bin_width`` and ``min_pixels``)."""

    border: int = 4  # pixels cropped at each side of every training image (the scoring's crop)
    bin_width: int = ENSIR_BIN_WIDTH
    min_pixels: int = ENSIR_MIN_PIXELS


# name → class, in registration order: mean, zzpm, blend, topk, blend_reg, ensir (the package's import order)
METHODS: dict[str, type[Ensembler]] = {}
Pairs = Iterator[tuple[torch.Tensor, torch.Tensor]]  # (srs (B,E,3,h,w), hr (B,3,h,w)), border cropped
Fingerprints = tuple[dict[str, Any], ...]


def register(cls: type[Ensembler]) -> type[Ensembler]:
    """Class decorator: ``cls`` is the method ``cls.method``."""
    if not cls.method or cls.method in METHODS:
        raise ValueError(f"ensembler method {cls.method!r} is empty or registered twice")
    METHODS[cls.method] = cls
    return cls


def method_class(method: Any) -> type[Ensembler]:
    """The class of the method called ``method`` (an :class:`EnsemblerError` for an unknown one)."""
    cls = METHODS.get(method) if isinstance(method, str) else None
    if cls is None:
        raise EnsemblerError(f"method: unknown {shorten(method)}, expected one of {list(METHODS)}")
    return cls


@dataclass(frozen=True, kw_only=True, eq=False)
class Ensembler:
    """A fitted training-free ensemble (one subclass per method). ``experts``: fingerprints of the experts it was
    fitted for, in order (each with at least ``name`` and ``sha256``, as :class:`cache.schema.CacheMeta`
    ``experts``). Parameters are float64 CPU tensors."""

    method: ClassVar[str] = ""
    fitted: ClassVar[bool] = False  # fitted on training images (reads samples; used from a file of `sr-fusion fit`)
    parameter_keys: ClassVar[tuple[str, ...]] = ()  # its parameters, as its file's ``params`` names them

    experts: tuple[dict[str, Any], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "experts", _check_experts(self.experts))

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def expert_names(self) -> tuple[str, ...]:
        return tuple(str(fp["name"]) for fp in self.experts)

    # --- what each method defines ---------------------------------------------------------------------------------
    @classmethod
    def fit_checked(cls, pairs: Pairs, *, experts: Fingerprints, options: FitOptions) -> Ensembler:
        """Fit on ``pairs`` (border cropped, shapes checked: :func:`fit`) for ``experts``; a method with nothing to
        fit reads none of them."""
        raise NotImplementedError

    def combine(self, srs: torch.Tensor) -> torch.Tensor:
        """``srs (B,E,3,H,W)`` → ``(B,3,H,W)``, not clamped."""
        raise NotImplementedError

    def describe(self) -> str:
        """One sentence on what it computes (submission readme, tables)."""
        raise NotImplementedError

    def parameters(self) -> dict[str, Any]:
        """Its parameters as JSON values, in its file's order."""
        return {}

    @classmethod
    def from_parameters(cls, params: Mapping[str, Any], *, experts: Any) -> Ensembler:
        """The ensembler of ``params`` (as :meth:`parameters` writes them) for ``experts``; every problem is an
        :class:`EnsemblerError` naming the key."""
        if set(params) != set(cls.parameter_keys):
            raise EnsemblerError(
                f"params: method {cls.method!r} takes {sorted(cls.parameter_keys)}, got {sorted(map(str, params))}"
            )
        return cls(experts=experts, **{k: params[k] for k in cls.parameter_keys})

    # --- shared -----------------------------------------------------------------------------------------------------
    def apply(self, srs: torch.Tensor) -> torch.Tensor:
        """``srs (B,E,3,H,W)`` in the fitted experts' order → ``(B,3,H,W)`` in [0,1] (dtype and device of ``srs``)."""
        if srs.ndim != 5 or srs.shape[2] != 3:
            raise EnsemblerError(f"srs must be (B,E,3,H,W), got {tuple(srs.shape)}")
        if srs.shape[1] != self.num_experts:
            raise EnsemblerError(
                f"the {self.method} ensembler was fitted for {self.num_experts} experts "
                f"{list(self.expert_names)}, got srs with {srs.shape[1]}"
            )
        return self.combine(srs).clamp(0.0, 1.0)


def apply(ens: Ensembler, srs: torch.Tensor) -> torch.Tensor:
    """``ens.apply(srs)``."""
    return ens.apply(srs)


def describe(ens: Ensembler) -> str:
    """``ens.describe()``."""
    return ens.describe()


def fit(
    method: str,
    samples: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    experts: Sequence[Mapping[str, Any]],
    border: int = 4,
    bin_width: int = ENSIR_BIN_WIDTH,
    min_pixels: int = ENSIR_MIN_PIXELS,
) -> Ensembler:
    """Fit ``method`` on ``samples``, an iterable of ``(srs (B,E,3,H,W), hr (B,3,H,W))`` (usually B = 1, one image
    at a time: the statistics stream), ``border`` pixels cropped at each side. ``experts``: fingerprints of the E
    experts, in ``srs`` order. ``bin_width`` and ``min_pixels`` are EnsIR's. ``mean`` / ``zzpm`` read no samples."""
    cls = method_class(method)
    if isinstance(border, bool) or not isinstance(border, int) or border < 0:
        raise EnsemblerError(f"border: expected an integer >= 0, got {border!r}")
    fps = _check_experts(experts)
    options = FitOptions(border=border, bin_width=bin_width, min_pixels=min_pixels)
    return cls.fit_checked(_checked(samples, len(fps), border), experts=fps, options=options)


def _checked(
    samples: Iterable[tuple[torch.Tensor, torch.Tensor]], num_experts: int, border: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The samples with their ``border`` cropped, shapes checked: ``srs (B,E,3,h,w)``, ``hr (B,3,h,w)``."""
    inner = slice(border, -border or None)  # border 0: the whole image
    for i, (srs, hr) in enumerate(samples):
        if srs.ndim != 5 or srs.shape[1:3] != (num_experts, 3) or hr.shape != srs[:, 0].shape:
            raise EnsemblerError(
                f"sample {i}: expected srs (B,{num_experts},3,H,W) and hr (B,3,H,W), got "
                f"{tuple(srs.shape)} and {tuple(hr.shape)}"
            )
        yield srs[..., inner, inner], hr[..., inner, inner]


def _check_experts(experts: Any) -> tuple[dict[str, Any], ...]:
    if isinstance(experts, (str, bytes, Mapping)) or not isinstance(experts, Sequence) or not experts:
        raise EnsemblerError(f"experts: expected a non-empty list of fingerprints, got {type(experts).__name__}")
    if len(experts) > 64:
        raise EnsemblerError(f"experts: at most 64 experts, got {len(experts)}")
    out = []
    for i, fp in enumerate(experts):
        if not isinstance(fp, Mapping):
            raise EnsemblerError(f"experts[{i}]: expected a fingerprint mapping, got {type(fp).__name__}")
        for key in ("name", "sha256"):
            if not isinstance(fp.get(key), str) or not fp[key]:
                raise EnsemblerError(f"experts[{i}].{key}: expected a non-empty string, got {shorten(fp.get(key))}")
        try:
            out.append(json.loads(json.dumps(dict(fp), allow_nan=False)))  # a JSON-clean copy (tuples → lists)
        except (TypeError, ValueError) as exc:
            raise EnsemblerError(f"experts[{i}]: not JSON-serialisable ({shorten(str(exc), quote=False)})") from None
    return tuple(out)


def _as_param(key: str, value: Any, shape: tuple[int, ...]) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu().clone()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise EnsemblerError(f"{key}: not an array of numbers ({shorten(str(exc), quote=False)})") from None
    if tuple(t.shape) != shape:
        raise EnsemblerError(f"{key}: expected shape {list(shape)}, got {shorten(list(t.shape))}")
    if not bool(torch.isfinite(t).all()):
        raise EnsemblerError(f"{key}: contains NaN/Inf")
    big = t.abs().max().item() if t.numel() else 0.0
    if big > MAX_WEIGHT:  # finite, but the blended image would overflow (and no fit ever gives such a weight)
        raise EnsemblerError(f"{key}: a weight of {big:g} is outside [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}]")
    return t


def _describe(experts: Sequence[Mapping[str, Any]]) -> str:
    return shorten(
        "[" + ", ".join(f"{fp.get('name')}@{str(fp.get('sha256'))[:12]}" for fp in experts) + "]", quote=False
    )
