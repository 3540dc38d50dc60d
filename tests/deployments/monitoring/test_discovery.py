"""Prometheus' service discovery (/metrics/targets, http_sd) and the deployments' server metrics the console passes
through (/metrics/deployments/<pk>): against a real serve.py, whose tgi_* series must come through."""

from __future__ import annotations

import pytest
import requests
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import AsyncClient, Client

from deployments.models import Deployment, Host
from deployments.serving.replica_models import DeploymentReplica
from tests.conftest import need
from tests.factories import DeploymentFactory, DeploymentSpecFactory, HostFactory, ModelRepoFactory
from tests.support.aio import run_async
from tests.support.deploy_fixtures import tiny_model_in_store
from tests.support.serve_process import ServeProcess, free_port, ml_python

SERVER_KEY = "only-the-console-sends-this"


def targets(kind: str, client: Client | None = None, **headers) -> list[dict]:
    response = (client or Client(HTTP_HOST="localhost:8443")).get(f"/metrics/targets?kind={kind}", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    return response.json()


@pytest.mark.django_db
def test_agents_are_the_online_hosts_exporters():
    HostFactory(name="node-a", metrics_address="10.0.0.5:9835")
    HostFactory(name="node-b", metrics_address="http://10.0.0.6:9400/metrics")  # a DCGM exporter's URL
    HostFactory(name="node-c", metrics_address="https://10.0.0.7:9400/custom")
    HostFactory(name="node-gone", metrics_address="10.0.0.8:9835", status=Host.Status.OFFLINE)
    HostFactory(name="node-quiet")  # its agent reported no exporter (AGENT_METRICS_PORT=0)
    assert targets("agents") == [
        {"targets": ["10.0.0.5:9835"], "labels": {"host": "node-a"}},
        {"targets": ["10.0.0.6:9400"], "labels": {"__scheme__": "http", "host": "node-b"}},
        {
            "targets": ["10.0.0.7:9400"],
            "labels": {"__scheme__": "https", "__metrics_path__": "/custom", "host": "node-c"},
        },
    ]


@pytest.mark.django_db
def test_running_servers_are_listed_at_the_consoles_address(settings):
    host = HostFactory(name="node-a")
    chat = DeploymentFactory(
        name="chat", state=Deployment.State.RUNNING, host=host, gpu_indexes=[0, 1], endpoint="http://10.9.0.1:8080"
    )
    DeploymentSpecFactory(
        deployment=chat, current=True, backend="tgi", artifact__repo=ModelRepoFactory(repo_id="org/m")
    )
    DeploymentReplica.objects.create(
        deployment=chat, index=1, state=Deployment.State.RUNNING, host=host, gpu_indexes=[2, 3], endpoint="http://x:1"
    )
    DeploymentReplica.objects.create(deployment=chat, index=2, state=Deployment.State.STARTING, host=host)
    stopped = DeploymentFactory(name="stopped", endpoint="")
    DeploymentSpecFactory(deployment=stopped, current=True)
    labels = {"deployment": "chat", "backend": "tgi", "model": "org/m", "host": "node-a"}
    assert targets("deployments") == [
        {
            "targets": ["localhost:8443"],
            "labels": {"__metrics_path__": f"/metrics/deployments/{chat.pk}", **labels, "replica": "0", "gpus": "0,1"},
        },
        {
            "targets": ["localhost:8443"],
            "labels": {
                "__metrics_path__": f"/metrics/deployments/{chat.pk}/replicas/1",
                **labels,
                "replica": "1",
                "gpus": "2,3",
            },
        },
    ]
    settings.METRICS_PUBLIC_ADDRESS = "https://console.internal:443"
    [server0, _replica] = targets("deployments")
    assert server0["targets"] == ["console.internal:443"] and server0["labels"]["__scheme__"] == "https"
    assert targets("console") == [
        {"targets": ["console.internal:443"], "labels": {"__scheme__": "https", "__metrics_path__": "/metrics"}}
    ]


@pytest.mark.django_db
def test_the_console_lists_itself_and_refuses_an_unknown_kind():
    assert targets("console") == [{"targets": ["localhost:8443"], "labels": {"__metrics_path__": "/metrics"}}]
    response = Client(HTTP_HOST="127.0.0.1").get("/metrics/targets?kind=everything")
    assert response.status_code == 400
    assert "agents, deployments, console" in response.json()["detail"]


@pytest.fixture(scope="module")
def served():
    """serve.py on the tiny model, answering only requests with SERVER_KEY (as the console launches servers)."""
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run serve.py")
    process = ServeProcess(tiny_model_in_store(), env={"API_KEY": SERVER_KEY}).start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


async def _get(path: str) -> tuple[int, str, str]:
    response = await AsyncClient(HTTP_HOST="127.0.0.1").get(path)
    assert response.streaming or response.status_code != 200  # passed through as it arrives, not buffered
    body = b"".join([chunk async for chunk in response.streaming_content]) if response.streaming else response.content
    await sync_to_async(connections.close_all)()  # the view's thread's connection (the test database is dropped)
    return response.status_code, response.get("Content-Type", ""), body.decode()


@pytest.mark.django_db(transaction=True)
def test_a_deployments_server_metrics_come_through_the_console(served):
    host = HostFactory(name="node-a")
    chat = DeploymentFactory(
        name="chat", state=Deployment.State.RUNNING, host=host, endpoint=served.url, server_key=SERVER_KEY
    )
    DeploymentSpecFactory(deployment=chat, current=True)
    DeploymentReplica.objects.create(
        deployment=chat, index=1, state=Deployment.State.RUNNING, host=host, endpoint=served.url, server_key=SERVER_KEY
    )
    for path in (f"/metrics/deployments/{chat.pk}", f"/metrics/deployments/{chat.pk}/replicas/1"):
        status, content_type, text = run_async(_get(path))
        assert status == 200, text
        assert content_type.startswith("text/plain")
        assert "tgi_queue_size 0" in text and "tgi_batch_current_size" in text
        assert text == requests.get(f"{served.url}/metrics", timeout=10).text  # the server's own words

    # Not running, unknown, a replica that does not run: 404; a server that does not answer: 502, saying which.
    assert run_async(_get(f"/metrics/deployments/{chat.pk}/replicas/2"))[0] == 404
    assert run_async(_get(f"/metrics/deployments/{chat.pk + 1000}"))[0] == 404
    Deployment.objects.filter(pk=chat.pk).update(endpoint=f"http://127.0.0.1:{free_port()}")
    status, _type, text = run_async(_get(f"/metrics/deployments/{chat.pk}"))
    assert status == 502
    assert "The server of deployment chat (node-a:CPU) did not answer /metrics" in text
    Deployment.objects.filter(pk=chat.pk).update(state=Deployment.State.STOPPED)
    assert run_async(_get(f"/metrics/deployments/{chat.pk}"))[0] == 404
