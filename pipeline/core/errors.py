"""The root of the toolkit's typed errors.

Every error that a user can cause — a bad config value, a missing or foreign file, an unreadable image, a cache made
with other experts, an output path that would replace something the tool did not write — is a subclass of
:class:`ToolkitError` (usually together with the builtin it refines, e.g. ``ConfigError(ToolkitError, ValueError)``).
Library code raises them with a one-line message naming the file or key; only the command-line entry points
(:func:`pipeline.core.cli.run_cli`) turn them into ``prog: message`` and exit status 2. Anything else that escapes is a
bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "ECHO_LIMIT",
    "BadInputsError",
    "DiskFullError",
    "OutputPathError",
    "ToolkitError",
    "disk_full",
    "is_disk_full",
    "shorten",
]

ECHO_LIMIT = 200  # characters of a user's value that an error message echoes (a 100,000-character string is not)


def shorten(value: object, limit: int = ECHO_LIMIT, *, quote: bool = True) -> str:
    """``repr(value)`` (``str(value)`` with ``quote=False``) cut to ``limit`` characters, saying how long it was:
    how an error message echoes what a user wrote (a file name, a config value) without echoing all of it."""
    try:
        text = repr(value) if quote else str(value)
    except ValueError:  # an int of more digits than Python converts to text
        return f"<a {type(value).__name__} too large to print>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


class ToolkitError(Exception):
    """A problem with the user's inputs, files or configuration (not a bug); the message is one line."""


class OutputPathError(ToolkitError, ValueError):
    """An output path that must not be written: it holds something this tool did not make, or is not writable."""


class BadInputsError(ToolkitError, ValueError):
    """Several inputs are bad (unreadable, truncated, too small, unpaired ...): every one is listed, one line each, so
    a user fixes them all in one go. ``problems`` are the lines; ``summary`` says where and what happens next."""

    def __init__(self, summary: str, problems: list[str]) -> None:
        self.summary = summary
        self.problems = [" ".join(p.split()) for p in problems]
        super().__init__(f"{summary}: " + "; ".join(self.problems) if self.problems else summary)


class DiskFullError(ToolkitError, OSError):
    """The disk (or the user's quota) filled up while a file was written; the partial file was removed, so rerunning
    after freeing space resumes where the run stopped."""


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """``exc`` is an :class:`OSError` for a full disk (``ENOSPC``) or an exceeded quota (``EDQUOT``)."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def disk_full(path: str | os.PathLike, what: str, exc: OSError) -> DiskFullError:
    """The one-line error for ``exc`` (see :func:`is_disk_full`) raised while writing ``what`` to ``path``."""
    reason = "disk quota exceeded" if exc.errno == errno.EDQUOT else "no space left on the device"
    err = DiskFullError(
        f"{path}: {reason} while writing {what}; the partial file was removed — free some space and rerun (what "
        "was finished is kept)"
    )
    err.errno = exc.errno
    return err
