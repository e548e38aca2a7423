"""``run-experts --check``: onboarding a new expert YAML in one pass.

Every expert of the YAML is parsed and loaded on its own, so one pass lists every problem of every expert: the
YAML's (all unknown, missing and mistyped keys of an expert at once), then loading's (opt-in, missing files, pins —
together), the weights against the class (which entry of the file was loaded, which tensors differ), the smallest
input side (probed when the YAML does not give it) and the probe (experts/probe.py: is the output close to a bicubic
upscale; if not, the likely cause). A working expert's line gives its probe PSNR."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from experts.expert import load_expert
from experts.spec import EnsembleSpec, ExpertSpec, with_paths_from, yaml_folder
from pipeline.core.config import ConfigError, apply_overrides, config_from_dict, load_yaml
from pipeline.core.errors import ToolkitError, shorten

__all__ = ["ExpertCheck", "check_experts", "format_checks"]


@dataclass(frozen=True)
class ExpertCheck:
    """One expert's outcome: ``ok`` with what was measured, or the problems (one line)."""

    name: str
    ok: bool
    text: str
    probe_psnr: float = math.nan


def _expert_items(data: Mapping, path: Path) -> tuple[list[tuple[str, object]], list[str]]:
    """The YAML's expert entries (label, raw mapping) and its problems outside them."""
    problems = []
    unknown = sorted(set(data) - {"scale", "experts"})
    if unknown:
        problems.append(f"{path}: unknown top-level key(s) {shorten(unknown)}; valid keys: experts, scale")
    items = data.get("experts")
    if not isinstance(items, list) or not items:
        problems.append(f"{path}: experts: expected a non-empty list of experts, got {shorten(items)}")
        return [], problems
    labelled = []
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, Mapping) else None
        labelled.append((name if isinstance(name, str) and name else f"experts[{i}]", item))
    return labelled, problems


def check_experts(path: str | os.PathLike, *, overrides: Sequence[str] = ()) -> tuple[list[ExpertCheck], list[str]]:
    """Check every expert of the YAML at ``path`` → ``(one ExpertCheck per expert, problems of the file itself)``.
    Relative paths are relative to the YAML's folder, as :func:`experts.spec.load_ensemble_spec` reads them."""
    path = Path(path)
    data = apply_overrides(load_yaml(path), overrides)
    items, problems = _expert_items(data, path)
    base = yaml_folder(path)
    scale = data.get("scale", 4)
    specs: list[ExpertSpec | None] = []
    checks: list[ExpertCheck | None] = []
    for i, (label, item) in enumerate(items):
        try:
            if not isinstance(item, Mapping):
                raise ConfigError(f"experts[{i}]: expected a mapping, got {shorten(item)}")
            specs.append(with_paths_from(config_from_dict(ExpertSpec, item, _prefix=f"experts[{i}]"), base))
            checks.append(None)
        except ConfigError as exc:
            specs.append(None)
            checks.append(ExpertCheck(name=label, ok=False, text=f"{path}: {exc}"))
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        problems.append(f"{path}: scale: expected an integer >= 1, got {shorten(scale)}")
        scale = 4
    if all(s is not None for s in specs) and specs:
        try:  # what only the whole ensemble can say: unique names, inputs naming an expert, scales
            EnsembleSpec(experts=tuple(specs), scale=scale)
        except ConfigError as exc:
            problems.append(f"{path}: {exc}")
    for i, spec in enumerate(specs):
        if spec is None:
            continue
        try:
            expert = load_expert(spec, ensemble_scale=scale)
        except ToolkitError as exc:
            checks[i] = ExpertCheck(name=spec.name, ok=False, text=" ".join(str(exc).split()))
            continue
        checks[i] = ExpertCheck(name=spec.name, ok=True, text=_summary(spec, expert), probe_psnr=expert.probe_psnr)
        del expert
    return [c for c in checks if c is not None], problems


def _summary(spec: ExpertSpec, expert) -> str:
    fp = expert.fingerprint
    threshold = spec.min_probe_psnr
    off = ", check off" if not threshold else ""
    probe = f"probe PSNR {expert.probe_psnr:.2f} dB (min_probe_psnr {threshold:g}{off})"
    parts = [probe, f"{fp.architecture} x{fp.scale}", f"{fp.num_params:,} parameters"]
    parts.append(f"features {fp.feature_channels} channels" if fp.hook_layers else "no hooked features")
    if spec.code is not None:
        side = fp.code["min_size"]
        if spec.code.min_size is None:
            parts.append(f"min input side {side or 'none'} (probed: add `min_size: {side}` under code: to skip it)")
        else:
            parts.append(f"min input side {side or 'none'} (from the YAML)")
    return ", ".join(parts)


def format_checks(checks: Sequence[ExpertCheck], problems: Sequence[str]) -> list[str]:
    """The lines ``run-experts --check`` prints: the file's problems, then one line per expert."""
    lines = [f"problem: {p}" for p in problems]
    width = max((len(c.name) for c in checks), default=0)
    for c in checks:
        lines.append(f"{c.name:<{width}}  {'ok    ' if c.ok else 'FAILED'}  {c.text}")
    ok = sum(c.ok for c in checks)
    file_problems = f"; {len(problems)} problem(s) of the file" if problems else ""
    lines.append(f"{ok} of {len(checks)} experts pass{file_problems}")
    return lines
