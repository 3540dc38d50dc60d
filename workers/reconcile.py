"""The reconciler: what runs on each host against what the database says (beat every DEPLOY_RECONCILE_SECONDS).

On the console side: restart failed deployments whose backoff elapsed (restart policy on-failure) and fail
launches stuck past their deadline with no job behind them. On each host's agent: adopt a server still
running for a deployment whose watching job is gone, mark a vanished server's deployment failed, and remove
servers no deployment wants (orphans). A deployment's further replicas are reconciled alike, each on its own, by
workers/reconcile_replicas.py (their results join these lists as "<deployment>/r<index>").
"""

from __future__ import annotations

import logging

from django.utils import timezone

import audit
from deployments.jobs.services import job_create
from deployments.models import Deployment, Host, Job
from deployments.serving import services as lifecycle
from deployments.serving.replica_models import LABEL_REPLICA
from workers.reconcile_common import job_watching, remove_orphan
from workers.reconcile_replicas import reconcile_replicas_console, reconcile_replicas_host
from workers.runtimes import get_runtime
from workers.runtimes.base import LABEL_DEPLOYMENT, LABEL_MANAGED

logger = logging.getLogger(__name__)
State = Deployment.State


def reconcile_console() -> dict:
    """Beat side: due restarts, stuck launches; returns the host queues to reconcile."""
    restarted, expired = [], []
    for deployment in Deployment.objects.filter(state=State.FAILED, next_restart_at__lte=timezone.now()):
        if lifecycle.deployment_relaunch(deployment):
            restarted.append(deployment.pk)
    stuck = Deployment.objects.select_related("job").filter(
        state__in=[*State.launching(), State.STOPPING], deadline__lt=timezone.now()
    )
    for deployment in stuck:
        if job_watching(deployment):
            continue  # its job enforces the deadline itself
        if deployment.state == State.STOPPING:
            lifecycle.deployment_stopped(deployment)  # as its job would have: audited, and a restart asked for runs
        else:
            lifecycle.deployment_failed(
                deployment,
                cause="health_deadline",
                detail=f"Deadline passed while {deployment.get_state_display()} and no worker is watching it.",
                next_step="Check the host's agent (is it online?), then launch again.",
            )
        expired.append(deployment.pk)
    more = reconcile_replicas_console()
    restarted, expired = restarted + more["restarted"], expired + more["expired"]
    hosts = list(Host.objects.filter(status=Host.Status.ONLINE).values_list("name", flat=True))
    return {"restarted": restarted, "expired": expired, "hosts": hosts}


def reconcile_host(host_name: str) -> dict:
    """Agent side, on the host itself: compare the runtime's servers with the database."""
    host = Host.objects.get(name=host_name)
    runtime = get_runtime(host.runtime)
    adopted, failed, removed = [], [], []
    managed = runtime.find({LABEL_MANAGED: "true"})
    handles = [handle for handle in managed if LABEL_REPLICA not in handle.labels]
    seen = set()
    for handle in handles:
        deployment = (
            Deployment.objects.select_related("job").filter(pk=int(handle.labels.get(LABEL_DEPLOYMENT, 0) or 0)).first()
        )
        alive = runtime.status(handle).alive
        wanted = (
            deployment is not None
            and deployment.host_id == host.pk
            and deployment.state in (State.STARTING, State.RUNNING)
        )
        if not wanted or deployment.pk in seen:
            if deployment is not None and job_watching(deployment):
                continue  # a launch in progress owns it
            deployment_id = handle.labels.get(LABEL_DEPLOYMENT, "")
            removed.append(remove_orphan(host, runtime, handle, deployment_id=deployment_id, detail={}))
            continue
        seen.add(deployment.pk)
        if job_watching(deployment):
            continue
        if alive:
            job = job_create(
                kind=Job.Kind.SERVE,
                actor=None,
                target=deployment,
                queue=host.queue,
                params={"deployment": deployment.pk, "spec": deployment.spec_id, "adopt": True},
            )
            Deployment.objects.filter(pk=deployment.pk).update(job=job)
            audit.record(
                action="deployment.adopted",
                actor=None,
                actor_name=f"agent:{host.name}",
                target=deployment,
                detail={"ref": handle.ref, "job": job.pk},
            )
            adopted.append(deployment.pk)
        else:
            runtime.remove(handle)
            lifecycle.deployment_failed(
                deployment,
                cause="crashed",
                detail="The server exited while no worker was watching it.",
                next_step="See the server's log; it restarts by policy.",
            )
            failed.append(deployment.pk)
    vanished = Deployment.objects.select_related("job").filter(host=host, state__in=[State.STARTING, State.RUNNING])
    for deployment in vanished.exclude(pk__in=seen):
        if job_watching(deployment):
            continue
        lifecycle.deployment_failed(
            deployment,
            cause="vanished",
            detail="The server is gone from the host (killed, removed or the host restarted).",
            next_step="It restarts by policy; if not, launch it again.",
        )
        failed.append(deployment.pk)
    # A stop whose job is gone (its worker died and the reaper ended it as cancelled): its server was removed above,
    # so the stop ends here as the job would have ended it (GPUs freed, audited, launched again when a restart was
    # asked for) rather than holding the GPUs until the stop's deadline and dropping the restart.
    for deployment in Deployment.objects.select_related("job").filter(host=host, state=State.STOPPING):
        if not job_watching(deployment):
            lifecycle.deployment_stopped(deployment)
    more = reconcile_replicas_host(host, runtime, [handle for handle in managed if LABEL_REPLICA in handle.labels])
    return {key: found + more[key] for key, found in (("adopted", adopted), ("failed", failed), ("removed", removed))}
