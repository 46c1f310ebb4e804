"""The installed dlforge version: the one lookup every stage, tag and model metadata use."""

from __future__ import annotations

import functools
from importlib import metadata


@functools.cache
def dlforge_version() -> str:
    """The installed package's version; ``0+unknown`` (still a valid PEP 440 version) when it is not installed."""
    try:
        return metadata.version("dlforge")
    except metadata.PackageNotFoundError:
        return "0+unknown"
