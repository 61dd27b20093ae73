"""Installed package versions, for manifests and MLflow requirements."""

from __future__ import annotations

import importlib.metadata


def installed(dist: str) -> str | None:
    """The installed version of distribution `dist`, or None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
