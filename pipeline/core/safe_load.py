"""Why ``torch.load(..., weights_only=True)`` refused a file, in words that are safe to pass on.

PyTorch's refusal ends with advice to re-run ``torch.load`` with ``weights_only=False`` — which runs whatever code the
file's pickle names. This toolkit never does that, so its messages must not suggest it either: every place that reads
a ``.pth`` file turns the exception into :func:`load_failure` text instead of echoing it."""

from __future__ import annotations

import pickle
import re

from pipeline.core.errors import shorten

__all__ = ["load_failure"]

_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_OPERAND_RE = re.compile(r"WeightsUnpickler error: ([^\n]*?)(?: Please use| was not an allowed|\n|$)")


def load_failure(exc: BaseException) -> str:
    """One line saying why a weights-only load failed; never advice to disable the restricted unpickler."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        found = _GLOBAL_RE.search(text)
        if found:
            what = f"a pickled Python object ({found.group(1)})"
        else:
            detail = _OPERAND_RE.search(text)
            what = (
                f"something other than tensors ({shorten(detail.group(1), 120, quote=False)})"
                if detail
                else ("something other than tensors and plain containers")
            )
        return (
            f"the file holds {what} besides tensors and plain containers; this toolkit never runs code from a "
            "weights file: save the weights as a plain state dict (torch.save(model.state_dict(), path)) or as "
            ".safetensors"
        )
    return f"{type(exc).__name__}: {shorten(' '.join(text.split()), 300, quote=False)}"
