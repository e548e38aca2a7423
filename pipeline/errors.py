"""The root of the toolkit's typed errors.

Every error that a user can cause — a bad config value, a missing or foreign file, an unreadable image, a cache made
with other experts, an output path that would replace something the tool did not write — is a subclass of
:class:`ToolkitError` (usually together with the builtin it refines, e.g. ``ConfigError(ToolkitError, ValueError)``).
Library code raises them with a one-line message naming the file or key; only the command-line entry points
(:func:`pipeline.cli.run_cli`) turn them into ``prog: message`` and exit status 2. Anything else that escapes is a
bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ToolkitError", "OutputPathError"]


class ToolkitError(Exception):
    """A problem with the user's inputs, files or configuration (not a bug); the message is one line."""


class OutputPathError(ToolkitError, ValueError):
    """An output path that must not be written: it holds something this tool did not make, or is not writable."""
