"""The environment variables fedattr reads for its directories, read here and nowhere else.

``FEDATTR_DATA_DIR``: where datasets live (default ``~/.cache/fedattr/data``).
``FEDATTR_CACHE_DIR``: where trained generators are cached (default ``~/.cache/fedattr/generators``).
A node's ``node_config`` (``data-dir``, ``cache-dir``) and a scenario's ``data.data_dir`` take
precedence over both; these functions give the value when neither names one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["DATA_DIR_ENV", "CACHE_DIR_ENV", "data_dir_override", "cache_dir_override", "default_data_dir",
           "default_cache_dir"]

DATA_DIR_ENV = "FEDATTR_DATA_DIR"
CACHE_DIR_ENV = "FEDATTR_CACHE_DIR"


def _get(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    return value or None


def data_dir_override(environ: Mapping[str, str] | None = None) -> str | None:
    """``FEDATTR_DATA_DIR`` when set and not empty, else None (``environ`` defaults to ``os.environ``)."""
    return _get(DATA_DIR_ENV, environ)


def cache_dir_override(environ: Mapping[str, str] | None = None) -> str | None:
    """``FEDATTR_CACHE_DIR`` when set and not empty, else None."""
    return _get(CACHE_DIR_ENV, environ)


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where datasets live unless a scenario or node names another directory."""
    return Path(data_dir_override(environ) or Path.home() / ".cache" / "fedattr" / "data")


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where trained generators are cached unless a node names another directory (absolute)."""
    return Path(cache_dir_override(environ) or Path.home() / ".cache" / "fedattr" / "generators").resolve()
