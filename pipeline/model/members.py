"""Stack independently trained set gates into one checkpoint whose gates are their mean (a deep ensemble of gates).

    stack_gates([runs/pool_s0, runs/pool_s1, runs/pool_s2, runs/pool_s3], "checkpoints/fusion_esr_pool")

Each source is a run (its ``ckpt/last``) or a checkpoint of **one** set gate (``model.set_gate.members=1``); all must
have the same model configuration (widths, depth, dilations, base blend, inputs …) and the same experts — they may
differ only in how they were trained (``train.seed``). The result is an ordinary checkpoint (``model.safetensors`` +
``config.json`` + ``SHA256SUMS``) with ``model.set_gate.members=K``: member k's weights under ``set_gate.members.k``,
each source's sha256 and step in ``extra.members``; it loads, submits, compares and exports like any other. Stacking
the same sources in the same order writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.model.fusion_net import FusionNet
from pipeline.model.io import (
    CheckpointError,
    ChecksumError,
    load_pretrained,
    read_extra,
    resolve_checkpoint,
    save_pretrained,
    verify_checksums,
    write_checksums,
)

__all__ = ["StackError", "stack_gates"]

PREFIX = "set_gate."


class StackError(CheckpointError):
    """The sources cannot be stacked: not single set gates, or not of one configuration and one set of experts."""


def stack_gates(sources: Sequence[str | os.PathLike], out: str | os.PathLike) -> tuple[FusionNet, Path]:
    """Load every source (checksums verified), check they are single set gates of one configuration and one expert
    set, and write the stacked checkpoint to ``out`` (a new or empty folder). Returns ``(model, out)``."""
    if len(sources) < 2:
        raise StackError(f"stack-gates needs two or more sources, got {len(sources)}")
    dst = Path(out)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise StackError(f"{dst}: exists and is not an empty folder (the stacked checkpoint is written there)")
    ckpts = [resolve_checkpoint(s, which="last") for s in sources]
    if len(set(ckpts)) != len(ckpts):
        raise StackError(f"a checkpoint is named twice: {[str(c) for c in ckpts]} (members must be trained apart)")
    members_meta, states, extras, first_cfg = [], [], [], None
    for source, ckpt in zip(sources, ckpts, strict=True):
        try:  # a member must be a finished, checksummed checkpoint
            sums = verify_checksums(ckpt)
        except ChecksumError as exc:
            raise StackError(str(exc)) from None
        model = load_pretrained(ckpt)
        cfg, extra = model.config, read_extra(ckpt)
        if not cfg.set_gate.enabled or cfg.set_gate.members != 1:
            raise StackError(f"{ckpt}: not a single set gate (set_gate.enabled and members=1 are needed)")
        if first_cfg is not None and cfg != first_cfg:
            diff = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(first_cfg, f.name)]
            raise StackError(f"{ckpt}: its model config differs from {ckpts[0]}'s in {diff}: members must be alike")
        if extras and extra.get("experts") != extras[0].get("experts"):
            raise StackError(f"{ckpt}: trained for other experts than {ckpts[0]}: members must share the experts")
        first_cfg = first_cfg or cfg
        states.append(model.state_dict())
        extras.append(extra)
        sha = sums["model.safetensors"]
        members_meta.append({"source": str(source), "sha256": sha, "step": extra.get("step"), "run": extra.get("run")})
    shared = [k for k in states[0] if not k.startswith(PREFIX)]
    for k in shared:  # nothing outside the gate may differ (the set-gate recipes have no such weights at all)
        for ckpt, state in zip(ckpts[1:], states[1:], strict=True):
            if not torch.equal(state[k], states[0][k]):
                raise StackError(f"{ckpt}: weight {k} outside the set gate differs from {ckpts[0]}'s")
    cfg = dataclasses.replace(first_cfg, set_gate=dataclasses.replace(first_cfg.set_gate, members=len(ckpts)))
    model = FusionNet(config=cfg)
    stacked = {k: states[0][k] for k in shared}
    for i, state in enumerate(states):
        stacked.update({f"{PREFIX}members.{i}.{k[len(PREFIX) :]}": v for k, v in state.items() if k.startswith(PREFIX)})
    model.load_state_dict(stacked, strict=True)
    extra = {k: v for k, v in extras[0].items() if k not in ("step", "val_psnr", "val_ssim", "run")}
    extra["members"] = members_meta
    save_pretrained(model, dst, extra=extra)
    write_checksums(dst)
    return model.eval(), dst
