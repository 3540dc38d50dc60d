"""Prometheus HTTP service discovery (http_sd): the targets to scrape, as lists of {"targets", "labels"}.

- agents: each online host's GPU exporter (Host.metrics_address, reported by its agent), label `host`;
- deployments: each running server, scraped through the console (`/metrics/deployments/<pk>`, replicas
  `/metrics/deployments/<pk>/replicas/<n>`): the servers bind internal addresses only the console reaches;
- console: the console's own /metrics.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings

from deployments.gateway.routing import Upstream, upstreams
from deployments.models import Deployment, Host
from deployments.serving.replica_models import DeploymentReplica

KINDS = ("agents", "deployments", "console")


def address_labels(address: str) -> tuple[str, dict[str, str]]:
    """ "host:port" as it is; a URL ("https://h:9400/metrics") as its host:port and the scheme and path labels
    Prometheus reads them from."""
    if "://" not in address:
        return address, {}
    parts = urlsplit(address)
    labels = {"__scheme__": parts.scheme}
    if parts.path and parts.path != "/metrics":
        labels["__metrics_path__"] = parts.path
    return parts.netloc, labels


def agent_targets() -> list[dict]:
    rows = (
        Host.objects.filter(status=Host.Status.ONLINE)
        .exclude(metrics_address="")
        .order_by("name")
        .values_list("name", "metrics_address")
    )
    targets = []
    for name, address in rows:
        target, labels = address_labels(address)
        targets.append({"targets": [target], "labels": {**labels, "host": name}})
    return targets


def console_address(request_scheme: str, request_host: str) -> tuple[str, dict[str, str]]:
    """Where Prometheus reaches this console: METRICS_PUBLIC_ADDRESS, else the address it asked discovery at."""
    if settings.METRICS_PUBLIC_ADDRESS:
        return address_labels(settings.METRICS_PUBLIC_ADDRESS)
    return request_host, ({"__scheme__": "https"} if request_scheme == "https" else {})


def deployment_targets(console: str, console_labels: dict[str, str]) -> list[dict]:
    """Every running server of every deployment (server 0 and its running replicas)."""
    running = Deployment.State.RUNNING
    servers = Deployment.objects.filter(state=running).exclude(endpoint="").order_by("name")
    rows = servers.values_list(
        "pk", "name", "spec__backend", "spec__artifact__repo__repo_id", "host__name", "gpu_indexes"
    )
    targets = [
        _target(console, console_labels, f"/metrics/deployments/{pk}", name, backend, model, host, gpus, 0)
        for pk, name, backend, model, host, gpus in rows
    ]
    replicas = (
        DeploymentReplica.objects.filter(state=running)
        .exclude(endpoint="")
        .order_by("deployment__name", "index")
        .values_list(
            "deployment_id",
            "index",
            "deployment__name",
            "deployment__spec__backend",
            "deployment__spec__artifact__repo__repo_id",
            "host__name",
            "gpu_indexes",
        )
    )
    for pk, index, name, backend, model, host, gpus in replicas:
        path = f"/metrics/deployments/{pk}/replicas/{index}"
        targets.append(_target(console, console_labels, path, name, backend, model, host, gpus, index))
    return targets


def _target(console, console_labels, path, name, backend, model, host, gpus, replica: int) -> dict:
    labels = {
        **console_labels,
        "__metrics_path__": path,
        "deployment": name,
        "replica": str(replica),
        "backend": backend or "",
        "model": model or "",
        "host": host or "",
        "gpus": ",".join(map(str, gpus or [])),
    }
    return {"targets": [console], "labels": labels}


def targets(kind: str, *, request_scheme: str, request_host: str) -> list[dict]:
    """The http_sd list for `kind` (one of KINDS)."""
    if kind == "agents":
        return agent_targets()
    console, labels = console_address(request_scheme, request_host)
    if kind == "deployments":
        return deployment_targets(console, labels)
    return [{"targets": [console], "labels": {**labels, "__metrics_path__": "/metrics"}}]


def scrape_upstream(pk: int, index: int = 0) -> tuple[Deployment, Upstream] | None:
    """The running server a deployment target names (server 0, or replica `index`) as the gateway reaches it
    (deployments/gateway/routing.py: its URL and key); None when there is none running."""
    deployment = Deployment.objects.select_related("host").filter(pk=pk).first()
    if deployment is None:
        return None
    server = deployment if index == 0 else deployment.replicas.filter(index=index).first()
    if server is None or server.state != Deployment.State.RUNNING or not server.endpoint:
        return None
    url = server.endpoint.rstrip("/")
    found = next((upstream for upstream in upstreams(deployment) if upstream.url == url), None)
    return (deployment, found) if found is not None else None
