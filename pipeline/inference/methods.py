"""What a submission runs on each LR image — the fusion of a trained run, or a training-free ensemble of the
experts — chosen by one rule (:func:`choose`) and built in one place (:func:`build`) for ``sr-fusion submit``, the
exported NTIRE code (:func:`pipeline.inference.submission.run_model_dir`) and, for its files, ``sr-fusion export``.

* ``fusion``: ``run`` (a run folder → its best checkpoint, or a checkpoint folder); its experts are the recorded ones,
  or those of ``experts`` (an expert YAML with other paths or devices), checked against the record.
* an ensemble (:data:`pipeline.inference.ensemblers.METHODS`): ``experts`` (the YAML) and no ``run``; a method fitted
  on training images (``blend``, ``topk``, ``blend_reg``, ``ensir``) needs its ``weights`` file (``sr-fusion fit``),
  which must hold that method and have been fitted for these experts; ``mean`` and ``zzpm`` take none.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from experts.ensemble import ExpertEnsemble
from experts.store import ExpertStore
from pipeline.core.errors import ToolkitError
from pipeline.core.self_ensemble import SelfEnsemble
from pipeline.inference.ensemblers import METHODS, Ensembler, fit
from pipeline.inference.ensemblers import load as load_ensembler
from pipeline.inference.pipeline import (
    FusionPipeline,
    ensemble_super_resolve,
    expert_spec_from_yaml,
    load_pipeline,
    super_resolve,
)
from pipeline.model.describe import describe_network

__all__ = [
    "CHOICES",
    "FUSION",
    "MethodChoice",
    "MethodError",
    "SRMethod",
    "build",
    "choose",
    "ensembler_method",
    "fusion_method",
]

FUSION = "fusion"
CHOICES: dict[str, type[Ensembler] | None] = {FUSION: None, **METHODS}  # name → ensembler class (None: the fusion)


class MethodError(ToolkitError, ValueError):
    """The method and its files do not go together (a missing or extra run / experts / weights, a weights file of
    another method, a fusion trained on ×8 experts run otherwise)."""


@dataclass(frozen=True)
class MethodChoice:
    """A method and the files it runs from, checked by :func:`choose`."""

    method: str  # a key of CHOICES
    run: Path | None = None
    experts: Path | None = None
    weights: Path | None = None

    @property
    def ensembler_class(self) -> type[Ensembler] | None:
        """The ensemble's class; None for the fusion."""
        return CHOICES[self.method]

    def source(self) -> str:
        """Where it comes from, for the first printed line."""
        if self.ensembler_class is None:
            return f"checkpoint {self.run}"
        return f"weights {self.weights}" if self.weights is not None else "no fitted weights"


def choose(
    method: str,
    *,
    run: str | os.PathLike | None = None,
    experts: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
) -> MethodChoice:
    """The one rule of the module docstring (what each method needs, nothing it does not); a :class:`MethodError`
    naming the option otherwise."""
    if method not in CHOICES:
        raise MethodError(f"--method {method!r}: one of {', '.join(CHOICES)}")
    cls = CHOICES[method]
    if cls is None:
        if run is None or weights is not None:
            raise MethodError(f"--method {method} needs --run (and no --weights)")
    elif experts is None or run is not None:
        raise MethodError(f"--method {method} needs --experts (and no --run)")
    elif cls.fitted and weights is None:
        raise MethodError(f"--method {method} needs --weights (fit it with `sr-fusion fit`)")
    return MethodChoice(
        method=method,
        run=None if run is None else Path(run),
        experts=None if experts is None else Path(experts),
        weights=None if weights is None else Path(weights),
    )


def chosen_ensembler(choice: MethodChoice, fingerprints: list[dict]) -> Ensembler:
    """An ensemble's :class:`Ensembler` for the experts of ``fingerprints``: its weights file (fitted for these
    experts, holding this method), or — a method with nothing to fit — the method itself."""
    cls = choice.ensembler_class
    if cls is None:
        raise MethodError("the fusion has no ensembler")
    if choice.weights is None:
        return fit(choice.method, [], experts=fingerprints)
    ens = load_ensembler(choice.weights, experts=fingerprints)
    if type(ens) is not cls:
        raise MethodError(f"{choice.weights} holds a {ens.method!r} ensembler, not {choice.method!r}")
    return ens


@dataclass(frozen=True)
class SRMethod:
    """What a submission runs on each LR image: the fusion or a training-free ensembler, in one self-ensemble mode."""

    name: str  # "fusion" or the ensembler's method
    self_ensemble: SelfEnsemble
    device: torch.device
    run: Callable[[torch.Tensor], torch.Tensor]  # lr (1,3,H,W) → sr (1,3,sH,sW) in [0,1]
    description: str  # the readme's method description
    extra_data: bool
    min_lr: int


def fusion_method(pipe: FusionPipeline, *, self_ensemble: SelfEnsemble = SelfEnsemble.NONE) -> SRMethod:
    """The fusion in a self-ensemble mode. A fusion trained on ×8 self-ensembled experts (``sr-fusion extract
    --self-ensemble experts-x8``: the fingerprints say ``self_ensemble: 8``) sees such experts only with
    ``experts-x8``; any other mode is refused."""
    x8 = sorted({fp.self_ensemble for fp in pipe.recorded})
    if x8 == [8] and self_ensemble is not SelfEnsemble.EXPERTS:
        raise MethodError(
            f"{pipe.checkpoint} was trained on each expert's x8 self-ensemble: run it with --self-ensemble experts-x8"
        )
    experts = ", ".join(f"{fp.name} ({fp.architecture})" for fp in pipe.recorded)
    params = sum(p.numel() for p in pipe.fusion.parameters())
    sub = pipe.extra.get("submission", {})
    network = describe_network(pipe.fusion.config, params=params)  # the parts that ran, none that were off
    description = (
        f"Multi-expert fusion: frozen experts {experts}; {network}; trained on the experts' outputs; "
        f"self-ensemble: {self_ensemble.readme}."
    )
    if sub.get("description"):
        description += " " + sub["description"]
    return SRMethod(
        name=FUSION,
        self_ensemble=self_ensemble,
        device=pipe.device,
        description=description,
        run=lambda lr: super_resolve(pipe, lr, self_ensemble=self_ensemble),
        extra_data=bool(sub.get("extra_data")),
        min_lr=pipe.ensemble.min_lr_size,
    )


def ensembler_method(
    ensemble: ExpertEnsemble,
    ens: Ensembler,
    *,
    self_ensemble: SelfEnsemble = SelfEnsemble.NONE,
    device: str = "cpu",
    extra_data: bool = False,
) -> SRMethod:
    """A training-free ensembler of the loaded experts in a self-ensemble mode."""
    experts = ", ".join(f"{fp.name} ({fp.architecture})" for fp in ensemble.fingerprints)
    description = (
        f"Training-free ensemble of frozen experts {experts}: {ens.describe()}; self-ensemble: {self_ensemble.readme}."
    )
    dev = torch.device(device)

    def run(lr: torch.Tensor) -> torch.Tensor:
        return ensemble_super_resolve(ensemble, ens, lr.to(dev), self_ensemble=self_ensemble)

    return SRMethod(
        name=ens.method,
        self_ensemble=self_ensemble,
        device=dev,
        run=run,
        description=description,
        extra_data=extra_data,
        min_lr=ensemble.min_lr_size,
    )


def build(
    choice: MethodChoice,
    *,
    device: str = "cpu",
    tile: int | None = None,
    self_ensemble: SelfEnsemble = SelfEnsemble.NONE,
    extra_data: bool = False,
    store: ExpertStore | None = None,
) -> SRMethod:
    """Load what ``choice`` names (checksums, pins and fingerprints verified) → the :class:`SRMethod` to run.
    ``extra_data``: an ensemble's readme declares extra training data (a fusion's checkpoint says it itself).
    ``store``: every expert output is read from it when there and stored when not (:mod:`experts.store`: exact, so
    the outputs are the same with or without it)."""
    if choice.ensembler_class is None:
        pipe = load_pipeline(choice.run, experts_yaml=choice.experts, device=device, tile=tile, store=store)
        return fusion_method(pipe, self_ensemble=self_ensemble)
    spec = expert_spec_from_yaml(choice.experts, device=device, tile=tile)
    ensemble = ExpertEnsemble.from_spec(spec, gather_device=device, store=store)
    ens = chosen_ensembler(choice, [fp.to_dict() for fp in ensemble.fingerprints])
    return ensembler_method(ensemble, ens, self_ensemble=self_ensemble, device=device, extra_data=extra_data)
