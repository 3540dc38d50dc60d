"""What the serve job needs to know about the server it watches: the record it reads and writes, how the runtime
finds that server again, and which lifecycle services its changes go to. The deployment's own server (replica 0)
is the Deployment row; replicas 1..N-1 are DeploymentReplica rows with the same server fields (see
deployments/serving/replicas.py). A serve job's params say which: `replica` (the row's id) or not.
"""

from __future__ import annotations

from deployments.models import Deployment, DeploymentReplica
from deployments.serving import replicas
from deployments.serving import services as lifecycle
from deployments.serving.replica_models import LABEL_REPLICA
from workers.runtimes.base import LABEL_DEPLOYMENT


class DeploymentServer:
    """Server 0: the deployment's own fields, found by the deployment label."""

    model = Deployment

    def load(self, params: dict) -> Deployment | None:
        return Deployment.objects.select_related("host", "spec").filter(pk=params["deployment"]).first()

    def labels(self, params: dict) -> dict[str, str]:
        return {LABEL_DEPLOYMENT: str(params["deployment"])}

    set_state = staticmethod(lifecycle.set_state)
    running = staticmethod(lifecycle.deployment_running)
    failed = staticmethod(lifecycle.deployment_failed)
    stopped = staticmethod(lifecycle.deployment_stopped)


class ReplicaServer:
    """Replica 1..N-1: a DeploymentReplica row, found by the replica label (never by the deployment's)."""

    model = DeploymentReplica

    def load(self, params: dict) -> DeploymentReplica | None:
        found = DeploymentReplica.objects.select_related("host", "deployment", "deployment__spec")
        return found.filter(pk=params["replica"]).first()

    def labels(self, params: dict) -> dict[str, str]:
        return {LABEL_REPLICA: str(params["replica"])}

    set_state = staticmethod(lifecycle.set_state)
    running = staticmethod(replicas.replica_running)
    failed = staticmethod(replicas.replica_failed)
    stopped = staticmethod(replicas.replica_stopped)


def server_for(params: dict) -> DeploymentServer | ReplicaServer:
    """The kind of server a serve job's params name."""
    return ReplicaServer() if params.get("replica") else DeploymentServer()


def save(record: Deployment | DeploymentReplica, /, **fields) -> None:
    """Write fields of a server's record (either kind) without touching the rest of the row."""
    type(record).objects.filter(pk=record.pk).update(**fields)
