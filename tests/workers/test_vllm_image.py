"""The vLLM-like image against a real dockerd: `llmdeploy-vllm-test`, derived from the test ML image with
ENTRYPOINT ["vllm", "serve"] (tests/support/ml_image.py; nothing pulled), run as vLLM's OpenAI server image is run:
`docker run <image> <model> --flags` with the key in VLLM_API_KEY. The `vllm` shim starts the stand-in, which
serves the openai client and stops cleanly on `docker stop`."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import docker
import openai
import pytest
import requests

from tests.support.ml_image import docker_client, read_only_mounts, tiny_model_store, vllm_image
from workers.jobs.vllm_flags import RELEASE

pytestmark = pytest.mark.docker

BASE = "llmdeploy-test/ml-vllm-base:dev"
SUITE = {"llmdeploy.test-suite": "vllm-image"}
KEY = "sk-docker-" + "9d2f61a0"


@pytest.fixture(scope="module")
def client():
    found = docker_client()
    yield found
    for summary in found.api.containers(all=True, filters={"label": [f"{k}={v}" for k, v in SUITE.items()]}):
        with contextlib.suppress(docker.errors.NotFound):
            found.api.remove_container(summary["Id"], force=True)


@pytest.fixture(scope="module")
def image(client):
    yield from vllm_image(client, BASE)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tiny_model_store(tmp_path_factory)


def _port(client, container) -> int:
    container.reload()
    return int(container.attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"])


def test_the_image_runs_vllm_serve_and_answers_the_openai_client(client, image, store):
    assert client.api.inspect_image(image)["Config"]["Entrypoint"] == ["/usr/local/bin/vllm", "serve"]
    everywhere = "0.0.0.0"  # noqa: S104 - inside the container; published on loopback only
    args = [
        "/data/tiny",
        "--host",
        everywhere,
        "--port",
        "8000",
        "--served-model-name",
        "tiny",
        "--max-model-len",
        "256",
    ]
    container = client.containers.run(
        image,
        args,
        detach=True,
        name=f"llmdeploy-test-vllm-{os.getpid()}",
        labels=SUITE,
        environment={"VLLM_API_KEY": KEY, "OMP_NUM_THREADS": "2"},
        mounts=read_only_mounts({"/data": str(store)}),
        ports={"8000/tcp": ("127.0.0.1", None)},
        read_only=True,
        tmpfs={"/tmp": ""},
        stop_signal="SIGTERM",
    )
    try:
        url = f"http://127.0.0.1:{_port(client, container)}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            container.reload()
            assert container.status == "running", container.logs().decode()[-3000:]
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        else:
            pytest.fail("not healthy after 120 s:\n" + container.logs().decode()[-3000:])
        assert requests.get(f"{url}/version", timeout=5).json()["version"] == RELEASE
        chat = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
        answer = chat.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0
        )
        assert answer.model == "tiny" and 1 <= answer.usage.completion_tokens <= 5
        assert requests.get(f"{url}/v1/models", timeout=5).status_code == 401  # the key guards /v1
        container.stop(timeout=20)
        assert container.wait(timeout=30)["StatusCode"] == 0
        logs = container.logs().decode()
        assert "Starting vLLM server on http://0.0.0.0:8000" in logs
        assert "[shutdown] API server: shutdown triggered" in logs and KEY not in logs
        assert client.api.inspect_container(container.id)["Config"]["User"] == "1000"  # the image's own user
    finally:
        container.remove(force=True)
