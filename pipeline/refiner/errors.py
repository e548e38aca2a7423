"""Errors raised by the TSD-SR refiner. Every message names the file, key or setting at fault."""

from __future__ import annotations

from pipeline.core.errors import ToolkitError

__all__ = ["LoRAFormatError", "RefinerError", "RefinerFileNotFoundError", "RefinerWeightsError"]


class RefinerError(ToolkitError, RuntimeError):
    """Base class: the refiner cannot run as configured (or produced an unusable result)."""


class RefinerFileNotFoundError(RefinerError, FileNotFoundError):
    """A file or folder the refiner needs (base model, LoRA file, prompt embedding) does not exist."""


class RefinerWeightsError(RefinerError):
    """A weight/embedding file exists but its content does not fit (missing or unexpected tensors, wrong shapes)."""


class LoRAFormatError(RefinerWeightsError):
    """A TSD-SR LoRA file has a malformed, missing or unexpected key, or a tensor of the wrong shape or rank."""
