"""Frozen pretrained SR experts: spec → strict spandrel loading → hooked, padded, tiled inference on any device.

Public API (see experts/README.md)::

    from experts import ExpertEnsemble
    ens = ExpertEnsemble.from_yaml("configs/experts/shared_real.yaml")
    srs, feats = ens(lr)              # lr (B,3,H,W) → srs (B,E,3,4H,4W), feats: E × (B,C_e,H,W)
    ens.feature_channels              # (C_1, ..., C_E), known at load time
    [fp.to_dict() for fp in ens.fingerprints]
"""

from experts.devices import DeviceError
from experts.ensemble import EnsembleOutput, ExpertEnsemble
from experts.expert import Expert, ExpertFingerprint, GradMode, load_expert
from experts.hooks import FeatureHooks, HookError, default_hook_layers
from experts.loading import ExpertLoadError, read_state_dict
from experts.spec import (
    EnsembleSpec,
    ExpertSpec,
    load_ensemble_spec,
    resolve_expert_checkpoint,
    with_devices,
)
from experts.tiling import tile_spans, tiled_forward

__all__ = [
    "DeviceError",
    "EnsembleOutput",
    "EnsembleSpec",
    "Expert",
    "ExpertEnsemble",
    "ExpertFingerprint",
    "ExpertLoadError",
    "ExpertSpec",
    "FeatureHooks",
    "GradMode",
    "HookError",
    "default_hook_layers",
    "load_ensemble_spec",
    "load_expert",
    "read_state_dict",
    "resolve_expert_checkpoint",
    "tile_spans",
    "tiled_forward",
    "with_devices",
]
