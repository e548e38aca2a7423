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
    CHECKSUMS,
    CheckpointError,
    load_pretrained,
    read_config,
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
    first_cfg = read_config(ckpts[0])
    if not first_cfg.set_gate.enabled or first_cfg.set_gate.members != 1:
        raise StackError(f"{ckpts[0]}: not a single set gate (set_gate.enabled and members=1 are needed)")
    first_experts = read_extra(ckpts[0]).get("experts")
    members_meta, states = [], []
    for source, ckpt in zip(sources, ckpts, strict=True):
        if (ckpt / CHECKSUMS).is_file():
            sums = verify_checksums(ckpt)
        else:
            raise StackError(f"{ckpt / CHECKSUMS} is missing: a member must be a finished, checksummed checkpoint")
        cfg = read_config(ckpt)
        if cfg != first_cfg:
            diff = [
                f.name
                for f in dataclasses.fields(cfg)
                if getattr(cfg, f.name) != getattr(first_cfg, f.name)  # the top-level sections that differ
            ]
            raise StackError(f"{ckpt}: its model config differs from {ckpts[0]}'s in {diff}: members must be alike")
        extra = read_extra(ckpt)
        if extra.get("experts") != first_experts:
            raise StackError(f"{ckpt}: trained for other experts than {ckpts[0]}: members must share the experts")
        states.append(load_pretrained(ckpt).state_dict())
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
    extra = {k: v for k, v in read_extra(ckpts[0]).items() if k not in ("step", "val_psnr", "val_ssim", "run")}
    extra["members"] = members_meta
    save_pretrained(model, dst, extra=extra)
    write_checksums(dst)
    return model.eval(), dst
