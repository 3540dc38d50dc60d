"""What the reconciler does alike for a deployment's own server (workers/reconcile.py) and for its replicas
(workers/reconcile_replicas.py): whether a job still watches a server, and removing a server no record wants."""

from __future__ import annotations

import audit
from deployments.models import Deployment, DeploymentReplica, Host, Job
from workers.runtimes import Handle, Runtime


def job_watching(server: Deployment | DeploymentReplica) -> bool:
    """A serve job still watches the server: it enforces the deadlines and reports what the server does."""
    return server.job is not None and server.job.status in Job.Status.active()


def remove_orphan(host: Host, runtime: Runtime, handle: Handle, *, deployment_id: str, detail: dict) -> str:
    """Remove a server no deployment or replica wants, audited as the host's agent; returns its name."""
    runtime.remove(handle)
    audit.record(
        action="deployment.orphan_removed",
        actor=None,
        actor_name=f"agent:{host.name}",
        target_type="deployments.deployment",
        target_id=deployment_id,
        target_name=handle.name,
        detail={"ref": handle.ref, "host": host.name, **detail},
    )
    return handle.name
