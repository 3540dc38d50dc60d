"""Serving backends behind one interface (deployments/backends/base.py): TGI today."""

from __future__ import annotations

from deployments.backends.base import Backend
from deployments.backends.tgi import TgiBackend

BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (TgiBackend(),)}


def get_backend(name: str) -> Backend:
    """The backend a spec names (KeyError for one the console does not have)."""
    return BACKENDS[name or "tgi"]
