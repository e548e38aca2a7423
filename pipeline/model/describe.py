"""The fusion network in words, from its config: what a submission's readme.txt and the report say it is. Only the
parts that are switched on are named, in the order the data flows (pipeline/model/fusion_net.py)."""

from __future__ import annotations

from pipeline.model.fusion_config import FusionConfig

__all__ = ["describe_network"]

# a phase switch of FusionConfig → what it does, in a reader's words (gating and set_gate are described below)
_PHASES = (
    ("freq", "frequency decomposition (block DCT, Haar and FFT bands)"),
    ("cross_band", "cross-band attention"),
    ("cross_expert", "cross-expert attention"),
    ("fourier_unit", "a global Fourier unit"),
    ("hierarchical", "hierarchical LR-to-HR refinement"),
)
_RESIDUALS = (
    ("hessian", "Hessian detail attention"),
    ("refine", "a residual refinement CNN"),
    ("lr_residual", "LR back-projection"),
    ("edge", "Laplacian edge enhancement"),
)


def _combination(cfg: FusionConfig) -> str:
    """How the experts' images are combined per pixel."""
    experts = f"the {cfg.num_experts} experts"
    if cfg.set_gate.enabled:
        base = "a fixed blend" if cfg.set_gate.base is not None else "their mean"
        sg = cfg.set_gate
        signals = ", fed LR-consistency signals" if sg.signals else ""
        wide = f", dilations {'/'.join(map(str, sg.dilations))}" if sg.dilations and max(sg.dilations) > 1 else ""
        residual = ", plus a learned luma residual" if sg.residual else ""
        gate = (
            "a set gate (one small network shared by every expert)"
            if sg.members == 1
            else f"the mean of {sg.members} independently trained set gates (each one small network shared by every "
            "expert)"
        )
        return f"{gate} that moves each pixel's weights of {experts} away from {base}{signals}{wide}{residual}"
    if cfg.gating.enabled:
        start = (
            "a fixed blend"
            if cfg.gating.base is not None or cfg.gating.prior is not None
            else f"expert {cfg.start_expert}"
            if cfg.start_expert is not None
            else "their mean"
        )
        signals = ", fed LR-consistency signals" if cfg.gating.signals else ""
        return f"per-pixel gating of {experts} (starting from {start}){signals}"
    return f"the plain mean of {experts}"


def describe_network(cfg: FusionConfig, *, params: int | None = None) -> str:
    """``"a 58K-parameter fusion network on …: a set gate …; with …; plus …"``: how the experts are combined, then
    every enabled phase (the trunk's, then the residual branches)."""
    size = f"a {params / 1e3:.0f}K-parameter fusion network" if params is not None else "a fusion network"
    sees = "the experts' SR images" + (" and hooked features" if cfg.inputs.features else "")
    before = [text for name, text in _PHASES if getattr(cfg, name).enabled]
    after = [text for name, text in _RESIDUALS if getattr(cfg, name).enabled]
    parts = [f"{size} on {sees}: {_combination(cfg)}"]
    if before:
        parts.append("with " + ", ".join(before))
    if after:
        parts.append("plus " + ", ".join(after))
    return "; ".join(parts)
