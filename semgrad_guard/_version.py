"""The installed distribution's version: the one source is pyproject.toml, read via importlib.metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("semgrad-guard")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    VERSION = "0+unknown"
