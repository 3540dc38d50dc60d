"""Pytest fixtures that run a :class:`~tests.support.hub_server.HubServer` and point huggingface_hub at it.

Register for the whole suite with ``pytest_plugins = ["tests.support.hub_fixtures"]`` in tests/conftest.py,
or import the fixtures into a test module: ``from tests.support.hub_fixtures import hub_server  # noqa: F401``.

huggingface_hub 0.36 reads its settings from the environment once, at import, into
``huggingface_hub.constants`` (and ``file_download`` keeps its own copy of the resolve URL template, the
module-level ``huggingface_hub.hf_api.api`` its own endpoint), so setting ``HF_ENDPOINT`` in a test is not
enough: :func:`point_huggingface_hub_at` patches those values as well as the environment (for subprocesses).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hub_server import HubServer

__all__ = ["hub_api", "hub_server", "point_huggingface_hub_at"]

ETAG_TIMEOUT_S = 3


def point_huggingface_hub_at(endpoint: str, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Send every huggingface_hub call to ``endpoint``, with an empty cache and no token under ``hf_home``."""
    import huggingface_hub
    from huggingface_hub import constants, file_download, hf_api
    from huggingface_hub.utils import reset_sessions

    hf_home = Path(hf_home)
    cache = hf_home / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"

    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_ETAG_TIMEOUT": str(ETAG_TIMEOUT_S),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
                 "HF_HUB_ENABLE_HF_TRANSFER", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    # The server is local: never send its traffic through a proxy configured for the real Hub.
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY") or os.environ.get("no_proxy"), "127.0.0.1,localhost"]))
    monkeypatch.setenv("NO_PROXY", no_proxy)
    monkeypatch.setenv("no_proxy", no_proxy)

    patched = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": template,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_ENABLE_HF_TRANSFER": False,
        "HF_HUB_ETAG_TIMEOUT": ETAG_TIMEOUT_S,
        "HF_HUB_DISABLE_PROGRESS_BARS": True,
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value, raising=False)
    monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)  # behind huggingface_hub.model_info() & co.
    monkeypatch.setattr(huggingface_hub, "HUGGINGFACE_CO_URL_TEMPLATE", template, raising=False)
    monkeypatch.setattr(importlib.import_module("huggingface_hub.utils.tqdm"), "HF_HUB_DISABLE_PROGRESS_BARS", True)
    reset_sessions()  # no pooled connection from an earlier test's server


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A running HubServer with huggingface_hub pointed at it (cache under tmp_path, no token, no telemetry).

    Gated and private repos open with ``token=hub_server.required_token``.
    """
    with HubServer() as server:
        point_huggingface_hub_at(server.endpoint, tmp_path / "hf-home", monkeypatch)
        yield server
    if server.errors:
        pytest.fail("HubServer raised while serving:\n" + "\n".join(server.errors))


@pytest.fixture
def hub_api(hub_server: HubServer):
    """An ``HfApi`` bound to the ``hub_server`` endpoint."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_server.endpoint)
