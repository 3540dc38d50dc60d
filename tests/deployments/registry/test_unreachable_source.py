"""A model source that cannot be reached is one sentence with its host and a next step, said within
HUB_CONNECT_TIMEOUT: before, adding a model showed `MaxRetryError('HTTPSConnectionPool(host=...` and the sizing
page took 24 s (huggingface_hub's five retries with back-off) to say it could not reach the Hub."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from deployments.models import AllowedEndpoint, ModelArtifact, ModelSource
from deployments.registry import downloads
from tests.support.deploy_fixtures import process_host
from workers.handlers.download import download_failure

pytestmark = pytest.mark.django_db

NEXT_STEP = "Configure a mirror (Models → Sources) or import a local directory."
PYTHON_TEXT = ("MaxRetryError", "HTTPConnectionPool", "HTTPSConnectionPool", "Errno", "Caused by", "<")


def closed_port() -> int:
    """A local port with nothing listening: every connection is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A local port that never completes a connection: a listener whose accept queue is full drops every further
    SYN, as a firewall that drops packets does (an outside blackhole such as 10.255.255.1 is not reachable from
    every test machine, nor silent on each)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    yield port
    for sock in [*fillers, listener]:
        sock.close()


def _add(api, engineer, admin, endpoint: str, name: str):
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")
    source = ModelSource.objects.create(name=name, kind="mirror", endpoint=endpoint, created_by=admin)
    host = process_host(f"{name}-node")
    started = time.monotonic()
    refused = api(engineer).post(
        "/api/v1/models/", {"source": source.name, "repo_id": "acme/tiny", "host": host.name}, expected=400
    )
    return refused.data, time.monotonic() - started


def test_adding_a_model_from_a_source_that_refuses_connections_says_so_in_one_sentence(api, engineer, admin, settings):
    refused, took = _add(api, engineer, admin, f"http://127.0.0.1:{closed_port()}", "refusing")
    message = str(refused["source"][0])
    assert message == f"Cannot reach 127.0.0.1: the connection was refused. {NEXT_STEP}"
    assert not any(text in message for text in PYTHON_TEXT)
    assert took < settings.HUB_CONNECT_TIMEOUT + 2
    assert not ModelArtifact.objects.exists()


def test_a_silent_source_is_given_up_after_hub_connect_timeout(api, engineer, admin, settings, blackhole):
    settings.HUB_CONNECT_TIMEOUT = 1.5
    refused, took = _add(api, engineer, admin, f"http://127.0.0.1:{blackhole}", "silent")
    message = str(refused["source"][0])
    assert message == f"Cannot reach 127.0.0.1: no answer to the connection within 1.5 s. {NEXT_STEP}"
    assert took < settings.HUB_CONNECT_TIMEOUT + 2  # one attempt, no retries with back-off


def test_the_add_model_page_shows_the_sentence_on_the_source(client, engineer, admin, settings):
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")
    source = ModelSource.objects.create(
        name="page-refusing", kind="mirror", endpoint=f"http://127.0.0.1:{closed_port()}", created_by=admin
    )
    host = process_host("page-node")
    client.force_login(engineer)
    page = client.post(
        "/models/add/", {"source": source.pk, "repo_id": "acme/tiny", "revision": "main", "host": host.pk}
    )
    assert page.status_code == 400
    text = page.content.decode()
    assert "Cannot reach 127.0.0.1: the connection was refused." in text
    assert "MaxRetryError" not in text and "ConnectionPool" not in text


def test_sizing_a_hub_model_without_a_route_to_the_hub_answers_at_once(api, engineer, settings, monkeypatch, blackhole):
    from huggingface_hub import constants

    settings.HUB_CONNECT_TIMEOUT = 1.5
    endpoint = f"http://127.0.0.1:{blackhole}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        "huggingface_hub.file_download.HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    AllowedEndpoint.objects.create(pattern="127.0.0.1")
    started = time.monotonic()
    refused = api(engineer).get("/api/v1/sizing/?source=acme/never-cached", expected=400).data
    took = time.monotonic() - started
    assert str(refused["source"][0]) == f"Cannot reach 127.0.0.1: no answer to the connection within 1.5 s. {NEXT_STEP}"
    assert took < settings.HUB_CONNECT_TIMEOUT + 2  # was 24 s


def test_a_download_job_reports_the_same_sentence_and_kept_bytes_only_when_there_are_some(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads.hub, "BACKOFF_BASE_S", 0.01)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(downloads.DownloadError) as caught:
        downloads.resolve("acme/tiny", None, endpoint=endpoint, token=None)

    nothing = download_failure(caught.value, endpoint=endpoint, staging=tmp_path / "empty")
    assert (nothing.cause, nothing.message) == ("network", "Cannot reach 127.0.0.1: the connection was refused.")
    assert nothing.next_step == NEXT_STEP
    assert "kept" not in nothing.next_step

    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "model.safetensors.part").write_bytes(b"x" * 4096)
    some = download_failure(caught.value, endpoint=endpoint, staging=staging)
    assert some.message == nothing.message
    assert some.next_step == f"{NEXT_STEP} 4,096 bytes already downloaded are kept: a retry resumes where it stopped."
