"""The root of the toolkit's typed errors.

Every error that a user can cause — a bad config value, a missing or foreign file, an unreadable image, a cache made
with other experts, an output path that would replace something the tool did not write — is a subclass of
:class:`ToolkitError` (usually together with the builtin it refines, e.g. ``ConfigError(ToolkitError, ValueError)``).
Library code raises them with a one-line message naming the file or key; only the command-line entry points
(:func:`pipeline.core.cli.run_cli`) turn them into ``prog: message`` and exit status 2. Anything else that escapes is a
bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ECHO_LIMIT", "BadInputsError", "OutputPathError", "ToolkitError", "shorten"]

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
