"""Fixtures for deployment tests: a host with the process runtime and a tiny model in the model store."""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings

from deployments.models import Deployment, Host, ModelArtifact, ModelSource
from tests.factories import GpuFactory, HostFactory, ModelArtifactFactory, ModelSourceFactory
from tests.support.serve_process import make_model


def tiny_model_in_store() -> Path:
    """A tiny random Llama under MODEL_STORE (made once; ~10 s)."""
    return make_model(Path(settings.MODEL_STORE) / "tests" / "tiny-llama")


def process_host(name: str = "local", *, gpus: int = 0, gpu_bytes: int = 16 * 10**9) -> Host:
    """An online host with the process runtime and `gpus` healthy "Test GPU"s (indexes 0, 1, ...)."""
    host = HostFactory(name=name)
    GpuFactory.create_batch(gpus, host=host, memory_total=gpu_bytes)
    return host


def ready_artifact(host: Host, path: Path, repo_id: str = "tests/tiny-llama") -> ModelArtifact:
    """A READY copy of `repo_id` at `path` on the host, from the first Hub source (made if there is none)."""
    source = ModelSource.objects.filter(kind=ModelSource.Kind.HUB).first() or ModelSourceFactory()
    return ModelArtifactFactory(
        repo__source=source, repo__repo_id=repo_id, repo__commit="0" * 40, host=host, path=str(path)
    )


def wait_state(deployment: Deployment, states: set[str], timeout: float = 120) -> Deployment:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment.refresh_from_db()
        if deployment.state in states:
            return deployment
        time.sleep(0.2)
    raise AssertionError(f"{deployment} stayed {deployment.state} ({deployment.failure_detail})")


def run_job_in_thread(job_id: int):
    """The job runner in a thread of the test process (settings overrides apply); returns the thread."""
    import threading

    from django.db import connection

    from workers import runner

    def target():
        try:
            runner.run(job_id)
        finally:
            connection.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread
