"""TSD-SR LoRA files: which layers they adapt, strict key mapping, and merging into the base weights.

No LoRA-loading API of diffusers or peft is used: the files are read with ``safetensors`` and mapped here, so the
behaviour does not depend on their versions.

File layout (as written by TSD-SR: peft LoRA, ``get_peft_model_state_dict`` -> adapter name dropped, saved with a
``transformer.`` prefix; the VAE file uses the same prefix)::

    transformer.<module path>.lora_A.weight   (r, in)  or (r, in, kh, kw) for a Conv2d   "down"
    transformer.<module path>.lora_B.weight   (out, r) or (out, r, 1, 1)  for a Conv2d   "up"

Targets (which layers carry a LoRA) follow peft's rule for a list of names: a Linear/Conv2d whose full name equals a
target or ends with ``"." + target``:

* transformer (SD3Transformer2DModel): ``to_q, to_k, to_v, to_out.0, add_q_proj, add_k_proj, add_v_proj, proj,
  linear, proj_out`` -- so also the patch-embedding conv ``pos_embed.proj``, the feed-forward ``...net.0.proj`` and
  the AdaLayerNorm ``...norm1.linear`` / ``norm1_context.linear`` / ``norm_out.linear`` layers;
* VAE (AutoencoderKL): the encoder only -- ``encoder.conv_in``, the down blocks' resnet ``conv1``/``conv2``/
  ``conv_shortcut`` and downsampler convs, the mid block's attention ``to_q/to_k/to_v/to_out.0`` and resnet convs,
  ``encoder.conv_out`` -- and ``quant_conv`` when the VAE has one (SD3's has not).

Loading is strict: a key that is malformed, a target without a LoRA, a LoRA for a layer that is not a target, a
wrong shape or a rank different from the configured one is a :class:`LoRAFormatError` that names the file and the
keys. The LoRA is then merged into the weights (``W += alpha / r * up @ down``), which is exactly the unmerged
forward ``base(x) + alpha / r * up(down(x))`` of peft for Linear and Conv2d layers (zero padding, groups = 1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from pipeline.refiner.errors import LoRAFormatError, RefinerFileNotFoundError

__all__ = [
    "LORA_KEY_PREFIX",
    "TRANSFORMER_LORA_TARGETS",
    "VAE_LORA_TARGET_PATTERNS",
    "LoRAPair",
    "check_lora",
    "merge_lora_",
    "read_lora_file",
    "transformer_lora_targets",
    "vae_lora_targets",
]

LORA_KEY_PREFIX = "transformer."
_DOWN, _UP = ".lora_A.weight", ".lora_B.weight"

# TSD-SR's peft target_modules for the SD3 transformer (suffix match, see module docstring).
TRANSFORMER_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "proj",
    "linear",
    "proj_out",
)

# TSD-SR's VAE targets: the encoder (and quant_conv), written as full-name patterns.
VAE_LORA_TARGET_PATTERNS = (
    r"encoder\.conv_in",
    r"encoder\.down_blocks\.\d+\.resnets\.\d+\.(conv1|conv2|conv_shortcut)",
    r"encoder\.down_blocks\.\d+\.downsamplers\.\d+\.conv",
    r"encoder\.mid_block\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)",
    r"encoder\.mid_block\.resnets\.\d+\.(conv1|conv2)",
    r"encoder\.conv_out",
    r"quant_conv",
)
_VAE_RE = re.compile("|".join(f"(?:{p})" for p in VAE_LORA_TARGET_PATTERNS))


@dataclass(frozen=True)
class LoRAPair:
    """One layer's LoRA: ``down`` (lora_A) and ``up`` (lora_B) weights as stored in the file."""

    down: Tensor  # (r, in) | (r, in, kh, kw)
    up: Tensor  # (out, r) | (out, r, 1, 1)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def _adaptable(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            yield name, module


def transformer_lora_targets(model: nn.Module) -> list[str]:
    """Names of the transformer layers that TSD-SR adapts (peft's suffix rule over TRANSFORMER_LORA_TARGETS)."""
    return [
        name
        for name, _ in _adaptable(model)
        if any(name == t or name.endswith("." + t) for t in TRANSFORMER_LORA_TARGETS)
    ]


def vae_lora_targets(model: nn.Module) -> list[str]:
    """Names of the VAE layers that TSD-SR adapts (encoder + quant_conv, VAE_LORA_TARGET_PATTERNS)."""
    return [name for name, _ in _adaptable(model) if _VAE_RE.fullmatch(name)]


def _listing(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def read_lora_file(path: str | Path) -> dict[str, LoRAPair]:
    """Read a TSD-SR LoRA file into ``{module path: LoRAPair}`` (CPU tensors as stored).

    Every key must be ``transformer.<module>.lora_A.weight`` or ``transformer.<module>.lora_B.weight`` and every
    module must have both; anything else is a :class:`LoRAFormatError` naming the file and the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise RefinerFileNotFoundError(f"LoRA file not found: {path}")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoRAFormatError(f"{path}: not a readable safetensors file: {exc}") from exc
    if not state:
        raise LoRAFormatError(f"{path}: contains no tensors")
    downs: dict[str, Tensor] = {}
    ups: dict[str, Tensor] = {}
    malformed = []
    for key, tensor in state.items():
        if not key.startswith(LORA_KEY_PREFIX) or not key.endswith((_DOWN, _UP)):
            malformed.append(key)
            continue
        module = key[len(LORA_KEY_PREFIX) :]
        if module.endswith(_DOWN):
            downs[module[: -len(_DOWN)]] = tensor
        else:
            ups[module[: -len(_UP)]] = tensor
    if malformed:
        hint = (
            " (peft's adapter name '.default' must not be in the keys)"
            if any(".default" in k for k in malformed)
            else ""
        )
        raise LoRAFormatError(
            f"{path}: {len(malformed)} unexpected key(s) not of the form "
            f"'{LORA_KEY_PREFIX}<module>{_DOWN}' / '{LORA_KEY_PREFIX}<module>{_UP}'{hint}: {_listing(malformed)}"
        )
    unpaired = sorted(set(downs) ^ set(ups))
    if unpaired:
        raise LoRAFormatError(
            f"{path}: LoRA layer(s) with only one of lora_A / lora_B (missing key for): {_listing(unpaired)}"
        )
    return {name: LoRAPair(down=downs[name], up=ups[name]) for name in sorted(downs)}


def _expected_shapes(module: nn.Module, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if isinstance(module, nn.Linear):
        return (rank, module.in_features), (module.out_features, rank)
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return (rank, module.in_channels, kh, kw), (module.out_channels, rank, 1, 1)
    raise TypeError(f"LoRA on {type(module).__name__} is not supported")


def check_lora(
    model: nn.Module, pairs: Mapping[str, LoRAPair], *, targets: Iterable[str], rank: int, source: str
) -> None:
    """Strict check of ``pairs`` against the layers ``targets`` of ``model``: same set of layers, right shapes, all
    of rank ``rank``, finite values. ``source`` (the file) is named in every error."""
    targets = list(targets)
    if not targets:
        raise LoRAFormatError(f"{source}: the model has no LoRA target layers (is it the right model?)")
    missing = sorted(set(targets) - set(pairs))
    unexpected = sorted(set(pairs) - set(targets))
    if missing or unexpected:
        parts = [f"{source}: LoRA keys do not match the model's TSD-SR target layers"]
        if missing:
            parts.append(
                f"missing LoRA for {len(missing)} layer(s) (key {LORA_KEY_PREFIX}<layer>{_DOWN}/{_UP}): "
                f"{_listing(missing)}"
            )
        if unexpected:
            parts.append(f"unexpected LoRA for {len(unexpected)} layer(s) that are not targets: {_listing(unexpected)}")
        raise LoRAFormatError("; ".join(parts))
    for name in targets:
        pair = pairs[name]
        module = model.get_submodule(name)
        want_down, want_up = _expected_shapes(module, rank)
        if tuple(pair.down.shape) != want_down or tuple(pair.up.shape) != want_up:
            raise LoRAFormatError(
                f"{source}: LoRA of layer {name!r} ({type(module).__name__}) has shapes lora_A {tuple(pair.down.shape)}"
                f", lora_B {tuple(pair.up.shape)}; expected {want_down}, {want_up} for rank {rank} "
                f"(file rank {pair.rank})"
            )
        if isinstance(module, nn.Conv2d) and (
            module.groups != 1 or tuple(module.dilation) != (1, 1) or module.padding_mode != "zeros"
        ):
            raise LoRAFormatError(f"{source}: cannot merge a LoRA into conv {name!r} (groups/dilation/padding_mode)")
        if not (torch.isfinite(pair.down).all() and torch.isfinite(pair.up).all()):
            raise LoRAFormatError(f"{source}: LoRA of layer {name!r} contains NaN or infinite values")


@torch.no_grad()
def merge_lora_(
    model: nn.Module,
    pairs: Mapping[str, LoRAPair],
    *,
    targets: Iterable[str],
    rank: int,
    alpha: float,
    source: str,
) -> int:
    """Check (:func:`check_lora`) and merge ``pairs`` into ``model`` in place: ``W += alpha / rank * up @ down``,
    computed in float32 on the weight's device, stored in the weight's dtype. Returns the number of merged layers."""
    targets = list(targets)
    check_lora(model, pairs, targets=targets, rank=rank, source=source)
    scale = float(alpha) / float(rank)
    for name in targets:
        pair = pairs[name]
        weight = model.get_submodule(name).weight
        down = pair.down.to(device=weight.device, dtype=torch.float32).reshape(rank, -1)  # (r, in*kh*kw)
        up = pair.up.to(device=weight.device, dtype=torch.float32).reshape(-1, rank)  # (out, r)
        delta = (up @ down).reshape(weight.shape) * scale
        weight.copy_((weight.to(torch.float32) + delta).to(weight.dtype))
    return len(targets)
