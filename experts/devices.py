"""Device strings and precisions of experts, checked against this machine and the architecture."""

from __future__ import annotations

import torch

from pipeline.core.errors import ToolkitError

__all__ = ["DeviceError", "precision_dtype", "resolve_device"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ToolkitError, RuntimeError):
    """A device string is malformed or names a device this machine does not have."""


def resolve_device(name: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or ``"mps"``) → ``torch.device``; a device that does not exist here
    is a :class:`DeviceError` saying what is available."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"invalid device {name!r}: {exc}") from exc
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but CUDA is not available on this machine (use 'cpu')")
        count = torch.cuda.device_count()
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= count:
            raise DeviceError(
                f"device {name!r} does not exist: this machine has {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})"
            )
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"device {name!r} requested but MPS is not available on this machine")
        return dev
    raise DeviceError(f"unsupported device type {dev.type!r} in {name!r}; use cpu, cuda or cuda:N")


def precision_dtype(precision: str, *, supports_half: bool, supports_bfloat16: bool, what: str) -> torch.dtype:
    """The dtype of ``precision`` (fp32/bf16/fp16), refusing what the architecture does not support (spandrel's
    descriptor flags). ``what`` names the expert in the error."""
    if precision not in _DTYPES:
        raise ValueError(f"{what}: unknown precision {precision!r}; use one of {sorted(_DTYPES)}")
    if precision == "fp16" and not supports_half:
        raise ValueError(
            f"{what}: the architecture does not support fp16 (spandrel: supports_half=False); use bf16 or fp32"
        )
    if precision == "bf16" and not supports_bfloat16:
        raise ValueError(f"{what}: the architecture does not support bf16 (spandrel: supports_bfloat16=False)")
    return _DTYPES[precision]
