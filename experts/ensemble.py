"""ExpertEnsemble: run every expert on an LR batch → ``srs (B,E,3,sH,sW)`` + ``feats`` (E × ``(B,C_e,H,W)``).

* Order: outputs follow the order of the experts in the spec. Experts that take another expert's output
  (``input: expert:<name>``) run after it: the experts are grouped into stages by dependency depth.
* Inputs: ``lr`` gets the LR batch; ``bicubic`` gets the MATLAB-bicubic ×scale upscale of it
  (``pipeline.core.resize.bicubic_upscale``, computed once per call); ``expert:<name>`` gets that expert's clamped SR.
* Devices: each expert runs on its spec's device; outputs are gathered (float32) on ``gather_device``. When the
  experts of a stage sit on two or more devices (e.g. HAT on cuda:0, the others on cuda:1) each device's experts run
  in their own thread, so the GPUs work concurrently (every device has its own CUDA stream; experts sharing a device
  run one after another). With one device they run sequentially.
* Grad mode: ``"inference"`` (``torch.inference_mode``, the default — caching, evaluation) or ``"no_grad"`` for live
  training, where the outputs feed a model under autograd.

The ensemble is deliberately not an ``nn.Module``: wrapping it in a trainable module must not register the experts'
parameters with an optimiser or move them with ``.to()``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import torch

from experts.devices import resolve_device
from experts.expert import Expert, ExpertFingerprint, GradMode, load_expert
from experts.lazy import LazyExpert, load_expert_cached
from experts.spec import EnsembleSpec, input_source, load_ensemble_spec
from experts.store import ExpertStore
from pipeline.core.augment import AUGMENTATIONS, augment, deaugment
from pipeline.core.resize import bicubic_upscale
from pipeline.core.self_ensemble import SelfEnsemble

__all__ = ["EnsembleOutput", "ExpertEnsemble"]

AnyExpert = Expert | LazyExpert  # a loaded expert, or one known by its card until it has to run (experts/lazy.py)


class EnsembleOutput(NamedTuple):
    srs: torch.Tensor  # (B,E,3,sH,sW) float32 in [0,1]
    feats: list[torch.Tensor]  # E tensors (B,C_e,H,W) float32


class ExpertEnsemble:
    """Frozen experts run together; see the module docstring. Build with :meth:`from_spec` / :meth:`from_yaml`."""

    def __init__(
        self,
        *,
        experts: Sequence[AnyExpert],
        scale: int = 4,
        gather_device: str = "cpu",
        concurrent: bool | None = None,
    ) -> None:
        if not experts:
            raise ValueError("an ensemble needs at least one expert")
        names = [e.name for e in experts]
        if len(set(names)) != len(names):
            raise ValueError(f"expert names must be unique: {names}")
        for e in experts:
            if e.ensemble_scale != scale:
                raise ValueError(f"expert {e.name!r} was built for x{e.ensemble_scale}, the ensemble is x{scale}")
        self.experts: tuple[AnyExpert, ...] = tuple(experts)
        self.scale = scale
        self.gather_device = resolve_device(gather_device)
        self.concurrent = concurrent  # None: concurrent iff a stage spans several devices
        self._stages = _stages(self.experts)
        # experts/store.py: outputs computed once, reused by every command (from_spec(store=...) also loads lazily)
        self.store: ExpertStore | None = None

    @classmethod
    def from_spec(
        cls,
        spec: EnsembleSpec,
        *,
        gather_device: str = "cpu",
        grad_mode: GradMode = "inference",
        concurrent: bool | None = None,
        store: ExpertStore | None = None,
    ) -> ExpertEnsemble:
        """Load every expert of ``spec``. With a ``store`` (:attr:`store`): an expert whose card the store holds is
        loaded only when one of its outputs is not stored (:mod:`experts.lazy`)."""
        if store is None:
            experts = [load_expert(e, ensemble_scale=spec.scale, grad_mode=grad_mode) for e in spec.experts]
        else:
            experts = [
                load_expert_cached(e, store=store, ensemble_scale=spec.scale, grad_mode=grad_mode) for e in spec.experts
            ]
        ensemble = cls(experts=experts, scale=spec.scale, gather_device=gather_device, concurrent=concurrent)
        ensemble.store = store
        return ensemble

    @classmethod
    def from_yaml(
        cls,
        path: str | os.PathLike,
        *,
        gather_device: str = "cpu",
        grad_mode: GradMode = "inference",
        concurrent: bool | None = None,
        store: ExpertStore | None = None,
    ) -> ExpertEnsemble:
        """``from_spec(load_ensemble_spec(path))``, e.g.
        ``ExpertEnsemble.from_yaml("configs/experts/shared_real.yaml")``."""
        return cls.from_spec(
            load_ensemble_spec(Path(path)),
            gather_device=gather_device,
            grad_mode=grad_mode,
            concurrent=concurrent,
            store=store,
        )

    # ---------------------------------------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.experts)

    @property
    def fingerprints(self) -> tuple[ExpertFingerprint, ...]:
        return tuple(e.fingerprint for e in self.experts)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """``C_e`` of every expert, in output order (known from the dry run at load time)."""
        return tuple(e.feature_channels for e in self.experts)

    @property
    def min_lr_size(self) -> int:
        """Smallest LR side every expert runs on: 1. Each expert pads its input up to its size requirements (reflect,
        then replicate beyond what reflection allows — spandrel's rule, ``experts/padding.py``) and crops the result
        back, so a spandrel ``minimum`` or a code expert's ``min_size`` is never a limit on the input (a 1×1 LR runs;
        tests/test_cli_errors.py)."""
        return 1

    def __len__(self) -> int:
        return len(self.experts)

    def __call__(self, lr: torch.Tensor) -> EnsembleOutput:
        """``lr (B,3,H,W)`` float in [0,1] → ``EnsembleOutput(srs (B,E,3,sH,sW), feats [E × (B,C_e,H,W)])`` on the
        gather device."""
        if lr.ndim != 4 or lr.shape[1] != 3 or not lr.is_floating_point():
            raise ValueError(f"expected a float (B,3,H,W) LR batch, got {tuple(lr.shape)} {lr.dtype}")
        lr = lr.float()
        results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        bicubic: torch.Tensor | None = None
        for stage in self._stages:
            jobs: list[tuple[AnyExpert, torch.Tensor]] = []
            for e in stage:
                source = input_source(e.spec)
                if source is not None:
                    x = results[source][0]  # (B,3,sH,sW)
                elif e.spec.input == "bicubic":
                    if bicubic is None:
                        bicubic = bicubic_upscale(lr, self.scale)  # (B,3,sH,sW), clamped
                    x = bicubic
                else:
                    x = lr
                jobs.append((e, x))
            results.update(self._run_stage(jobs))
        srs = torch.stack([results[e.name][0] for e in self.experts], dim=1)  # (B,E,3,sH,sW)
        feats = [results[e.name][1].contiguous() for e in self.experts]
        return EnsembleOutput(srs=srs, feats=feats)

    def self_ensemble(self, lr: torch.Tensor) -> EnsembleOutput:
        """×8 self-ensemble of **each expert**: every expert runs on the 8 dihedral transforms of ``lr`` (rot90 ×
        flip, :mod:`pipeline.core.augment`), each output is transformed back, and the 8 are averaged per expert — the
        "+" results of the SR papers, what challenge teams submit. ``srs (B,E,3,sH,sW)`` are those averages (float32,
        not quantised); ``feats`` come from the identity pass (k = 0), as the fusion reads them."""
        first = self(lr)  # k = 0: the identity pass, its features are kept
        total = first.srs.double()
        for k in range(1, AUGMENTATIONS):
            out = self(augment(lr, k))
            total += deaugment(out.srs, k).double()  # (B,E,3,sH,sW)
        return EnsembleOutput(srs=(total / AUGMENTATIONS).float(), feats=first.feats)

    def outputs(self, lr: torch.Tensor, mode: SelfEnsemble = SelfEnsemble.NONE) -> EnsembleOutput:
        """The experts' outputs for ``lr`` as ``mode`` says: ``NONE`` one pass (``self(lr)``), ``EXPERTS`` each expert's
        ×8 (:meth:`self_ensemble`). ``PIPELINE`` is an error: the ×8 of a whole pipeline is its caller's
        (:func:`pipeline.inference.pipeline.super_resolve`)."""
        if mode is SelfEnsemble.NONE:
            return self(lr)
        if mode is SelfEnsemble.EXPERTS:
            return self.self_ensemble(lr)
        raise ValueError(f"self-ensemble {mode}: the experts alone run none or experts-x8")

    def output_keys(self, lr: torch.Tensor) -> list[str]:
        """Each expert's store key (:meth:`experts.store.ExpertStore.key`) for the input ``lr``: what identifies that
        expert's outputs for this LR (and so for every transform of it)."""
        return [_store_key(e, lr) for e in self.experts]

    def _run_one(self, expert: AnyExpert, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One expert on its input ``x``; with a :attr:`store`, its stored output for exactly this input when there
        is one (else it runs and the result is stored)."""
        if self.store is None:
            sr, feat = expert.run(x)
        else:
            key = _store_key(expert, x)
            hit = self.store.get(key)
            if hit is not None:
                sr, feat = hit["sr"], hit["feat"]
            else:
                sr, feat = expert.run(x)
                self.store.put(key, {"sr": sr, "feat": feat})
        return sr.to(self.gather_device), feat.to(self.gather_device)

    def _run_group(self, jobs: list[tuple[AnyExpert, torch.Tensor]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {e.name: self._run_one(e, x) for e, x in jobs}

    def _run_stage(self, jobs: list[tuple[AnyExpert, torch.Tensor]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        groups: dict[torch.device, list[tuple[AnyExpert, torch.Tensor]]] = {}
        for e, x in jobs:
            groups.setdefault(e.device, []).append((e, x))
        concurrent = len(groups) > 1 if self.concurrent is None else self.concurrent
        if not concurrent or len(jobs) == 1:
            return self._run_group(jobs)
        # one thread per device (or per expert when forced on a single device, to exercise the threaded path)
        buckets = list(groups.values()) if len(groups) > 1 else [[job] for job in jobs]
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with ThreadPoolExecutor(max_workers=len(buckets), thread_name_prefix="expert") as pool:
            for part in pool.map(self._run_group, buckets):
                out.update(part)
        return out


def _store_key(expert: AnyExpert, x: torch.Tensor) -> str:
    return ExpertStore.key(
        fingerprint=expert.fingerprint.to_dict(),
        tile=expert.spec.tile,
        tile_overlap=expert.spec.tile_overlap,
        device=str(expert.device),
        x=x,
    )


def _stages(experts: Sequence[AnyExpert]) -> list[list[AnyExpert]]:
    """Group experts by dependency depth (``input: expert:<name>``); unknown sources and cycles are errors."""
    by_name = {e.name: e for e in experts}
    depth: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> int:
        if name in depth:
            return depth[name]
        if name in path:
            raise ValueError(f"expert inputs form a cycle: {' -> '.join((*path, name))}")
        source = input_source(by_name[name].spec)
        if source is None:
            d = 0
        elif source not in by_name:
            raise ValueError(
                f"expert {name!r} takes input {by_name[name].spec.input!r}, but there is no expert "
                f"{source!r} in {list(by_name)}"
            )
        else:
            d = visit(source, (*path, name)) + 1
        depth[name] = d
        return d

    for e in experts:
        visit(e.name, ())
    return [[e for e in experts if depth[e.name] == d] for d in range(max(depth.values()) + 1)]
