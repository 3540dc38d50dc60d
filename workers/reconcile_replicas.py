"""The reconciler's part for replicas 1..N-1 of deployments (server 0 is the deployment's own: workers/reconcile.py).

Console side: restart failed replicas whose backoff elapsed (the deployment's restart policy, with
DEPLOY_RESTART_BACKOFF_SECONDS), and end launches or stops stuck past their deadline with no job behind them.
Host side: adopt a replica's server still running with no job watching it, fail a replica whose server died or
vanished (out of routing at once, restarted later by the console side), and remove replica servers no replica
wants. The other servers of the deployment keep serving throughout.
"""

from __future__ import annotations

from django.utils import timezone

import audit
from deployments.jobs.services import job_create
from deployments.models import Deployment, DeploymentReplica, Host, Job
from deployments.serving import replicas
from deployments.serving.replica_models import LABEL_REPLICA
from workers.reconcile_common import job_watching, remove_orphan
from workers.runtimes import Handle, Runtime

State = Deployment.State


def _name(replica: DeploymentReplica) -> str:
    return f"{replica.deployment_id}/r{replica.index}"


def reconcile_replicas_console() -> dict:
    """Due restarts and stuck launches of replicas; returns what was done ("<deployment>/r<index>")."""
    restarted, expired = [], []
    due = DeploymentReplica.objects.filter(state=State.FAILED, next_restart_at__lte=timezone.now())
    for replica in due.select_related("deployment"):
        if replicas.replica_relaunch(replica):
            restarted.append(_name(replica))
    stuck = DeploymentReplica.objects.select_related("job", "deployment").filter(
        state__in=[*State.launching(), State.STOPPING], deadline__lt=timezone.now()
    )
    for replica in stuck:
        if job_watching(replica):
            continue  # its job enforces the deadline itself
        if replica.state == State.STOPPING:
            replicas.replica_stopped(replica)  # as its job would have: audited, and a restart asked for runs
        else:
            replicas.replica_failed(
                replica,
                cause="health_deadline",
                detail=f"Deadline passed while {replica.get_state_display()} and no worker is watching it.",
                next_step="Check the host's agent (is it online?), then launch again.",
            )
        expired.append(_name(replica))
    return {"restarted": restarted, "expired": expired}


def reconcile_replicas_host(host: Host, runtime: Runtime, handles: list[Handle]) -> dict:
    """On the host: the replica servers among `handles` (runtime.find of managed servers) against the rows."""
    adopted, failed, removed = [], [], []
    seen: set[int] = set()
    for handle in handles:
        pk = handle.labels.get(LABEL_REPLICA, "")
        replica = (
            DeploymentReplica.objects.select_related("job", "deployment").filter(pk=int(pk)).first()
            if pk.isdigit()
            else None
        )
        wanted = replica is not None and replica.host_id == host.pk and replica.state in (State.STARTING, State.RUNNING)
        if not wanted or replica.pk in seen:
            if replica is not None and job_watching(replica):
                continue  # a launch in progress owns it
            deployment_id = str(replica.deployment_id) if replica else ""
            detail = {"replica": replica.index if replica else pk}
            removed.append(remove_orphan(host, runtime, handle, deployment_id=deployment_id, detail=detail))
            continue
        seen.add(replica.pk)
        if job_watching(replica):
            continue
        if runtime.status(handle).alive:
            _adopt(host, replica, handle)
            adopted.append(_name(replica))
        else:
            runtime.remove(handle)
            replicas.replica_failed(
                replica,
                cause="crashed",
                detail="The replica's server exited while no worker was watching it.",
                next_step="See the server's log; it restarts by policy while the other replicas serve.",
            )
            failed.append(_name(replica))
    vanished = DeploymentReplica.objects.select_related("job").filter(
        host=host, state__in=[State.STARTING, State.RUNNING]
    )
    for replica in vanished.exclude(pk__in=seen):
        if job_watching(replica):
            continue
        replicas.replica_failed(
            replica,
            cause="vanished",
            detail="The replica's server is gone from the host (killed, removed or the host restarted).",
            next_step="It restarts by policy while the other replicas serve; if not, launch the deployment again.",
        )
        failed.append(_name(replica))
    # A stop whose job is gone: its server was removed above; end the stop as the job would have (reconcile.py).
    for replica in DeploymentReplica.objects.select_related("job").filter(host=host, state=State.STOPPING):
        if not job_watching(replica):
            replicas.replica_stopped(replica)
    return {"adopted": adopted, "failed": failed, "removed": removed}


def _adopt(host: Host, replica: DeploymentReplica, handle: Handle) -> None:
    """A new serve job follows the replica's running server (its worker died)."""
    deployment = replica.deployment
    job = job_create(
        kind=Job.Kind.SERVE,
        actor=None,
        target=deployment,
        queue=host.queue,
        params={
            "deployment": deployment.pk,
            "replica": replica.pk,
            "index": replica.index,
            "spec": deployment.spec_id,
            "adopt": True,
        },
    )
    DeploymentReplica.objects.filter(pk=replica.pk).update(job=job)
    audit.record(
        action="deployment.replica_adopted",
        actor=None,
        actor_name=f"agent:{host.name}",
        target=deployment,
        detail={"replica": replica.index, "ref": handle.ref, "job": job.pk},
    )
