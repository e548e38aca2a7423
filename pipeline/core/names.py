"""Names that become folder names — an expert's output folder, a run's folder under ``runs/`` — follow one rule:
a letter or digit, then letters, digits, ``_``, ``.`` or ``-``, at most :data:`MAX_NAME` characters. No ``/``, so a
name never leaves the folder it is made in (``train.name=../../escape`` is refused), and no leading ``.`` or ``-``."""

from __future__ import annotations

import re

from pipeline.core.config import ConfigError
from pipeline.core.errors import shorten

__all__ = ["MAX_NAME", "NAME_RE", "check_folder_name"]

MAX_NAME = 128
NAME_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_NAME - 1}}}$")


def check_folder_name(value: str, key: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``value`` follows the rule above."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ConfigError(
            f"{key}: {shorten(value)} is not a valid name (it becomes a folder name): a letter or digit, then "
            f"letters, digits, '_', '.' or '-', at most {MAX_NAME} characters"
        )
