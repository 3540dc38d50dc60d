"""Fixtures for deployment tests: a host with the process runtime and a tiny model in the model store."""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings

from deployments.models import Deployment, Gpu, Host, ModelArtifact, ModelRepo, ModelSource
from tests.support.serve_process import make_model


def tiny_model_in_store() -> Path:
    """A tiny random Llama under MODEL_STORE (made once; ~10 s)."""
    return make_model(Path(settings.MODEL_STORE) / "tests" / "tiny-llama")


def process_host(name: str = "local", *, gpus: int = 0, gpu_bytes: int = 16 * 10**9) -> Host:
    host = Host.objects.create(
        name=name, runtime=Host.Runtime.PROCESS, status=Host.Status.ONLINE, model_store=str(settings.MODEL_STORE)
    )
    for index in range(gpus):
        Gpu.objects.create(host=host, index=index, name="Test GPU", memory_total=gpu_bytes, health=Gpu.Health.OK)
    return host


def ready_artifact(host: Host, path: Path, repo_id: str = "tests/tiny-llama") -> ModelArtifact:
    source = ModelSource.objects.filter(kind=ModelSource.Kind.HUB).first() or ModelSource.objects.create(
        name="hub", kind=ModelSource.Kind.HUB
    )
    repo = ModelRepo.objects.create(source=source, repo_id=repo_id, commit="0" * 40)
    return ModelArtifact.objects.create(repo=repo, host=host, path=str(path), status=ModelArtifact.Status.READY)


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
