"""Serving backends behind one interface (deployments/backends/base.py): TGI and vLLM."""

from __future__ import annotations

from deployments.backends.base import Backend
from deployments.backends.tgi import TgiBackend
from deployments.backends.vllm import VllmBackend

BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (TgiBackend(), VllmBackend())}


def get_backend(name: str) -> Backend:
    """The backend a spec names (KeyError for one the console does not have)."""
    return BACKENDS[name or "tgi"]
