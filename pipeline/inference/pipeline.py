"""Full-pipeline inference: a trained fusion checkpoint + the experts it was trained with → SR images.

* :func:`load_pipeline` verifies the checkpoint (``SHA256SUMS``), rebuilds the fusion network, and loads the experts
  from the fingerprints stored in the checkpoint — or from a user's expert YAML (other paths, devices, tiles), whose
  files must then have the same sha256, architecture, hook layers and input as the fingerprints.
* :func:`super_resolve` runs experts + fusion on one LR image in a self-ensemble mode
  (:class:`pipeline.core.self_ensemble.SelfEnsemble`: none, ×8 of each expert, ×8 of the whole pipeline);
  :func:`ensemble_super_resolve` does the same for a training-free ensembler.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from experts.ensemble import ExpertEnsemble
from experts.expert import ExpertFingerprint
from experts.loading import ExpertLoadError
from experts.spec import EnsembleSpec, ExpertSpec, load_ensemble_spec, recorded_path
from experts.store import ExpertStore
from pipeline.core.augment import AUGMENTATIONS, augment, deaugment
from pipeline.core.errors import ToolkitError
from pipeline.core.self_ensemble import SelfEnsemble
from pipeline.inference.ensemblers import Ensembler
from pipeline.model.fusion_net import FusionNet
from pipeline.model.io import load_pretrained, read_extra, resolve_checkpoint, verify_checksums

__all__ = [
    "FusionPipeline",
    "check_fingerprints",
    "PipelineError",
    "ensemble_super_resolve",
    "expert_spec",
    "expert_spec_from_yaml",
    "load_pipeline",
    "super_resolve",
]


class PipelineError(ToolkitError, ValueError):
    """The checkpoint and the experts do not belong together (names, hooks, sha256, feature widths)."""


@dataclass
class FusionPipeline:
    fusion: FusionNet
    ensemble: ExpertEnsemble
    checkpoint: Path
    extra: dict[str, Any]  # the checkpoint's config.json extra (its file form)
    recorded: tuple[ExpertFingerprint, ...]  # the experts it was trained with, as config.json records them
    device: torch.device

    @property
    def scale(self) -> int:
        return self.ensemble.scale


def _spec_from_fingerprints(
    ckpt: Path, fps: tuple[ExpertFingerprint, ...], *, scale: int, device: str, tile: int
) -> EnsembleSpec:
    coded = [fp for fp in fps if fp.code]
    if coded:
        fp = coded[0]
        raise PipelineError(
            f"{ckpt}: expert {fp.name!r} is defined by a Python file ({fp.code.get('file')}) and importing it "
            "runs its code: name the experts with --experts, a YAML that opts in with `trust_code: true` "
            "(e.g. configs/experts/esr_pool.yaml)"
        )
    experts = tuple(
        ExpertSpec(
            name=fp.name,
            checkpoint=str(recorded_path(fp.checkpoint)),
            architecture=fp.architecture,
            scale=fp.scale,
            hooks=tuple(fp.hook_layers),
            input=fp.input,
            precision=fp.precision,
            device=device,
            tile=tile,
            sha256=fp.sha256,
            # the probe (experts/probe.py) vetted these experts when the cache was made from their YAML, and the
            # pin holds the very same weights: it is measured again (Expert.probe_psnr), not enforced twice
            min_probe_psnr=0.0,
        )
        for fp in fps
    )
    return EnsembleSpec(experts=experts, scale=scale)


def _spec_from_yaml(
    path: Path, fps: tuple[ExpertFingerprint, ...], *, device: str | None, tile: int | None
) -> EnsembleSpec:
    spec = load_ensemble_spec(path)
    names = [e.name for e in spec.experts]
    if names != [fp.name for fp in fps]:
        raise PipelineError(f"{path} lists experts {names}; the fusion was trained with {[fp.name for fp in fps]}")
    experts = []
    for e, fp in zip(spec.experts, fps):
        if e.architecture != fp.architecture or e.input != fp.input:
            raise PipelineError(
                f"{path}: expert {e.name!r} is {e.architecture}/{e.input}, the fusion was trained with "
                f"{fp.architecture}/{fp.input}"
            )
        if e.hooks and tuple(e.hooks) != tuple(fp.hook_layers):
            raise PipelineError(f"{path}: expert {e.name!r} hooks {list(e.hooks)}, trained with {fp.hook_layers}")
        if e.sha256 is not None and e.sha256 != fp.sha256:
            raise PipelineError(
                f"{path}: expert {e.name!r} pins sha256 {e.sha256[:12]}…, trained with {fp.sha256[:12]}…"
            )
        code = fp.code
        recorded_code = dict(code) if code is not None else "spandrel model"
        if (e.code is None) != (code is None) or (
            code is not None
            and (e.code.sha256, e.code.class_name, e.code.data_range, dict(e.code.kwargs))
            != (code["sha256"], code["class_name"], code["data_range"], dict(code["kwargs"]))
        ):
            raise PipelineError(
                f"{path}: expert {e.name!r} is not built as the fusion's was "
                f"(code file, class, kwargs or data range differ from the recorded {recorded_code})"
            )
        changes: dict[str, Any] = {"sha256": fp.sha256, "hooks": tuple(fp.hook_layers)}  # loading verifies it
        if device is not None:
            changes["device"] = device
        if tile is not None:
            changes["tile"] = tile
        experts.append(dataclasses.replace(e, **changes))
    return EnsembleSpec(experts=tuple(experts), scale=spec.scale)


def check_fingerprints(ckpt: Path, fps: Any) -> tuple[ExpertFingerprint, ...]:
    """The expert fingerprints a checkpoint's config.json records (``extra.experts``) → the objects
    (:meth:`experts.expert.ExpertFingerprint.from_dict`: every key loading reads, checked; their numbers' ranges:
    :func:`pipeline.model.io.read_extra`). A hand-edited file is one :class:`PipelineError` naming the key, never a
    KeyError."""
    if not isinstance(fps, list) or not fps:
        raise PipelineError(f"{ckpt}: config.json records no expert fingerprints; cannot know which experts to run")
    try:
        return tuple(
            ExpertFingerprint.from_dict(fp, where=f"{ckpt}: config.json extra.experts[{i}]") for i, fp in enumerate(fps)
        )
    except ExpertLoadError as exc:
        raise PipelineError(str(exc)) from None


def expert_spec(
    ckpt: Path,
    extra: dict[str, Any],
    *,
    experts_yaml: str | os.PathLike | None = None,
    device: str = "cpu",
    tile: int | None = None,
) -> EnsembleSpec:
    """The experts checkpoint ``ckpt`` (with config.json ``extra``) was trained with: from its recorded fingerprints,
    or from ``experts_yaml`` checked against them; every expert checkpoint is pinned to the recorded sha256."""
    fps = check_fingerprints(ckpt, extra.get("experts"))
    if experts_yaml is not None:
        return _spec_from_yaml(Path(experts_yaml), fps, device=device, tile=tile)
    return _spec_from_fingerprints(ckpt, fps, scale=int(extra.get("scale", 4)), device=device, tile=tile or 0)


def expert_spec_from_yaml(path: str | os.PathLike, *, device: str = "cpu", tile: int | None = None) -> EnsembleSpec:
    """An expert YAML with every expert on ``device`` (and ``tile`` LR pixels when given): the experts of a
    training-free ensemble, which records no fingerprints of its own beyond its weights file."""
    spec = load_ensemble_spec(Path(path))
    changes: dict[str, Any] = {"device": device}
    if tile is not None:
        changes["tile"] = tile
    return EnsembleSpec(experts=tuple(dataclasses.replace(e, **changes) for e in spec.experts), scale=spec.scale)


def load_pipeline(
    run_or_ckpt: str | os.PathLike,
    *,
    experts_yaml: str | os.PathLike | None = None,
    device: str = "cpu",
    tile: int | None = None,
    store: ExpertStore | None = None,
) -> FusionPipeline:
    """Run dir (its ``best`` checkpoint) or checkpoint dir → verified fusion + the experts it was trained with (the
    recorded ones, or those of ``experts_yaml`` checked against them). ``store``: the experts read their outputs from
    it (and load only when one is missing: :meth:`experts.ensemble.ExpertEnsemble.from_spec`)."""
    ckpt = resolve_checkpoint(run_or_ckpt, which="best")
    verify_checksums(ckpt)
    extra = read_extra(ckpt)
    spec = expert_spec(ckpt, extra, experts_yaml=experts_yaml, device=device, tile=tile)
    fps = check_fingerprints(ckpt, extra.get("experts"))
    fusion = load_pretrained(ckpt, device=device)
    if tuple(fusion.config.inputs.feat_channels) != tuple(fp.feature_channels for fp in fps):
        raise PipelineError(
            f"{ckpt}: fusion feature widths {fusion.config.inputs.feat_channels} differ from the "
            f"recorded experts' {[fp.feature_channels for fp in fps]}"
        )
    ensemble = ExpertEnsemble.from_spec(spec, gather_device=device, store=store)
    got = [fp.feature_channels for fp in ensemble.fingerprints]
    if got != [fp.feature_channels for fp in fps]:
        raise PipelineError(
            f"experts give feature widths {got}, the fusion was trained with {[fp.feature_channels for fp in fps]}"
        )
    return FusionPipeline(
        fusion=fusion, ensemble=ensemble, checkpoint=ckpt, extra=extra, recorded=fps, device=torch.device(device)
    )


def _pipeline_x8(run: Callable[[torch.Tensor], torch.Tensor], lr: torch.Tensor, mode: SelfEnsemble) -> torch.Tensor:
    """``run`` (LR → SR, the whole pipeline) on ``lr``, or with ``PIPELINE`` on each of its 8 dihedral transforms, the
    outputs mapped back and averaged; clamped to [0,1]."""
    ks = range(AUGMENTATIONS) if mode is SelfEnsemble.PIPELINE else (0,)
    outs = [deaugment(run(augment(lr, k)), k) for k in ks]
    return torch.stack(outs).mean(dim=0).clamp_(0, 1)


@torch.inference_mode()
def super_resolve(
    pipe: FusionPipeline, lr: torch.Tensor, *, self_ensemble: SelfEnsemble = SelfEnsemble.NONE
) -> torch.Tensor:
    """``lr (1,3,H,W)`` in [0,1] → ``sr (1,3,sH,sW)`` in [0,1] (not quantised), in a self-ensemble mode
    (:class:`pipeline.core.self_ensemble.SelfEnsemble`): ``PIPELINE`` runs experts and fusion on each of the 8
    transforms; ``EXPERTS`` runs the fusion once, on each expert's ×8 self-ensemble (features from the identity
    pass)."""
    lr = lr.to(pipe.device)
    if self_ensemble is SelfEnsemble.EXPERTS:
        srs, feats = pipe.ensemble.outputs(lr, self_ensemble)
        return pipe.fusion.forward_with_precomputed(lr, srs, feats).sr.clamp_(0, 1)

    def once(x: torch.Tensor) -> torch.Tensor:
        srs, feats = pipe.ensemble(x)
        return pipe.fusion.forward_with_precomputed(x, srs, feats).sr

    return _pipeline_x8(once, lr, self_ensemble)


@torch.inference_mode()
def ensemble_super_resolve(
    ensemble: ExpertEnsemble, ens: Ensembler, lr: torch.Tensor, *, self_ensemble: SelfEnsemble = SelfEnsemble.NONE
) -> torch.Tensor:
    """A training-free ensembler (:mod:`pipeline.inference.ensemblers`) on the experts' outputs for ``lr (1,3,H,W)`` →
    ``sr (1,3,sH,sW)``; ``self_ensemble`` as in :func:`super_resolve`."""
    if self_ensemble is SelfEnsemble.EXPERTS:
        return ens.apply(ensemble.outputs(lr, self_ensemble).srs)
    return _pipeline_x8(lambda x: ens.apply(ensemble(x).srs), lr, self_ensemble)
