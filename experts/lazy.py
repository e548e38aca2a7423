"""Experts loaded only when one of them has to run.

With an expert-output store (:mod:`experts.store`) that already holds every output a command needs — a second
submission with another method, a second compare with another fusion — what is left of the experts' cost is loading
them: importing team files, building, strict loads, dry runs, the probe. :func:`load_expert_cached` skips it:

* A **card** is an expert's fingerprint (:class:`experts.expert.ExpertFingerprint`) as it was when the expert was
  last loaded in full, every check passed, with its probe score and the hooks its spec asked for. It lives in the
  store under a key of what the loaded model *is*: the sha256 of its checkpoint (and of its code file, with the
  class, kwargs, data range, padding and minimum size), the checkpoint key, scale, input, precision and expected
  hyper-parameters, the ensemble scale, the device type, torch's and spandrel's versions. Not its name, file paths,
  tiling or device index: the YAML's spec and the one a fusion checkpoint records for the same weights share a card.
* On every start the files are still hashed against their pins and a code expert still needs ``trust_code: true``
  (:func:`expert_digests`: the same errors as a full load, nothing imported). A card is used only when the spec
  agrees with it as a full load would check: the architecture it names, the hooks it names (or the default ones),
  the probe score above its ``min_probe_psnr``; otherwise the expert is loaded in full (and any error is the full
  load's). The fingerprint then carries the spec's name and paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
from collections.abc import Mapping
from typing import Any

import spandrel
import torch

from experts.code import code_expert_digests
from experts.devices import resolve_device
from experts.expert import Expert, ExpertFingerprint, GradMode, load_expert, pinned_checkpoint
from experts.loading import ExpertLoadError
from experts.spec import ExpertSpec, portable_path, resolve_expert_checkpoint
from experts.store import ExpertStore

__all__ = ["LazyExpert", "card_key", "expert_digests", "load_expert_cached"]

CARD_VERSION = 1


def expert_digests(spec: ExpertSpec) -> dict[str, str]:
    """The sha256 of the files ``spec`` loads, checked against its pins (nothing parsed or imported) → ``{"weights":
    …}`` (+ ``"code"`` for a code expert). Raises :class:`ExpertLoadError` as :func:`experts.expert.load_expert`."""
    if spec.code is not None:
        code, weights = code_expert_digests(spec)
        return {"weights": weights, "code": code}
    return {"weights": pinned_checkpoint(spec)[1]}


def _plain(obj: Any) -> Any:
    """A spec's value as plain JSON data (dataclasses, mappings and tuples included)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def card_key(spec: ExpertSpec, *, ensemble_scale: int, digests: Mapping[str, str]) -> str:
    """The store key of ``spec``'s card (see the module docstring)."""
    code = None
    if spec.code is not None:
        code = {k: v for k, v in _plain(spec.code).items() if k not in ("file", "sha256")}
    material = {
        "card": CARD_VERSION,
        "files": dict(digests),
        "code": code,
        "checkpoint_key": spec.checkpoint_key,
        "scale": spec.scale,
        "input": spec.input,
        "precision": spec.precision,
        "expect": _plain(spec.expect),
        "ensemble_scale": ensemble_scale,
        "device": resolve_device(spec.device).type,
        "torch": torch.__version__,
        "spandrel": spandrel.__version__,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def _card_of(expert: Expert) -> dict[str, Any]:
    return {
        "fingerprint": expert.fingerprint.to_dict(),
        "hooks_requested": list(expert.spec.hooks),
        "probe_psnr": None if math.isnan(expert.probe_psnr) else float(expert.probe_psnr),
    }


def _fingerprint_from_card(card: dict, spec: ExpertSpec, *, where: str) -> ExpertFingerprint | None:
    """The card's fingerprint under ``spec``'s name and paths, or None when ``spec`` asks for what a full load of it
    would check differently (architecture, hooks, the probe's threshold)."""
    fp = ExpertFingerprint.from_dict(card.get("fingerprint"), where=where)
    if spec.hooks and tuple(spec.hooks) != fp.hook_layers:
        return None
    if not spec.hooks and card.get("hooks_requested"):  # the card is of other hooks than this expert's default
        return None
    if spec.architecture and spec.architecture != fp.architecture:
        return None
    probe = card.get("probe_psnr")
    if spec.min_probe_psnr > 0 and not (isinstance(probe, (int, float)) and probe >= spec.min_probe_psnr):
        return None
    code = None
    if fp.code is not None and spec.code is not None:
        code = types.MappingProxyType({**fp.code, "file": spec.code.file})
    return dataclasses.replace(
        fp,
        name=spec.name,
        checkpoint=portable_path(resolve_expert_checkpoint(spec)),
        code=code if code is not None else fp.code,
    )


def _normal(fp: ExpertFingerprint) -> str:
    return json.dumps(fp.to_dict(), sort_keys=True, default=str)


class LazyExpert:
    """An expert known by its card; loaded in full on its first :meth:`run` (a store miss)."""

    def __init__(
        self, *, spec: ExpertSpec, fingerprint: ExpertFingerprint, ensemble_scale: int, grad_mode: GradMode
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.fingerprint = fingerprint
        self.ensemble_scale = ensemble_scale
        self.grad_mode: GradMode = grad_mode
        self.device = resolve_device(spec.device)
        self._expert: Expert | None = None

    @property
    def feature_channels(self) -> int:
        return self.fingerprint.feature_channels

    @property
    def is_loaded(self) -> bool:
        return self._expert is not None

    def expert(self) -> Expert:
        """The expert, loaded in full (once); its fingerprint must be the card's."""
        if self._expert is None:
            expert = load_expert(self.spec, ensemble_scale=self.ensemble_scale, grad_mode=self.grad_mode)
            if _normal(expert.fingerprint) != _normal(self.fingerprint):
                raise ExpertLoadError(
                    f"{expert.checkpoint}: expert {self.name!r} loaded with fingerprint "
                    f"{expert.fingerprint.to_dict()}, its card in the expert store says "
                    f"{self.fingerprint.to_dict()}: clear the store (sr-fusion store --clear) or run with --no-store"
                )
            self._expert = expert
        return self._expert

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`experts.expert.Expert.run`, loading the expert first if it is not loaded yet."""
        return self.expert().run(x)


def load_expert_cached(
    spec: ExpertSpec, *, store: ExpertStore, ensemble_scale: int = 4, grad_mode: GradMode = "inference"
) -> Expert | LazyExpert:
    """A :class:`LazyExpert` when ``store`` holds this expert's card, else the expert loaded in full (its card
    stored for the next command)."""
    digests = expert_digests(spec)
    key = card_key(spec, ensemble_scale=ensemble_scale, digests=digests)
    card = store.get_record("cards", key)
    fingerprint = None
    if card is not None:
        fingerprint = _fingerprint_from_card(card, spec, where=str(store.record_path("cards", key)))
    if fingerprint is not None:
        return LazyExpert(spec=spec, fingerprint=fingerprint, ensemble_scale=ensemble_scale, grad_mode=grad_mode)
    expert = load_expert(spec, ensemble_scale=ensemble_scale, grad_mode=grad_mode)
    store.put_record("cards", key, _card_of(expert))
    return expert
