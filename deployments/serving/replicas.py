"""Replicas: a deployment whose spec asks for N servers runs N, each placed on GPUs of its own by the one
placement engine, each with its own serve job, port, endpoint, server key and health, failed and restarted on
its own while the others keep serving.

Why replica 0 is the deployment itself and replicas 1..N-1 are DeploymentReplica rows (replica_models.py): every
single-server path (the serve job, the reconciler, the playground, launch/stop/restart, approvals, the pages and
their tests) keeps working on the deployment's own fields unchanged, and a one-replica deployment (nearly all of
them) has no row at all. The rows carry the same server fields under the same names, so the serve job and the
reconciler treat both kinds of record alike (workers/handlers/replica.py). The cost: `Deployment.state` is server
0's state; what the deployment as a whole does is `summary()` ("2/3 replicas running"; it serves while any
server runs), which the page, the API and the gateway's `upstreams()` read.

The services here are called by the deployment's own (services.py: launch places server 0 then the replicas,
stop and restart take them along), by the serve job (running, failed, stopped) and by the reconciler (restarts
after DEPLOY_RESTART_BACKOFF_SECONDS, stuck launches). Each state change is audited on the deployment with the
replica's number and tells the gateways to re-read their routes once committed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import redis
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

import audit
from console import roles
from console.errors import ApplicationError
from console.permissions import require_deploy_scope
from deployments.gateway import cache
from deployments.jobs.services import job_cancel, job_dispatch
from deployments.models import (
    Deployment,
    DeploymentReplica,
    DeploymentSpec,
    Host,
    Job,
)
from deployments.serving import services as lifecycle
from deployments.serving.planning import Verdict, server_verdict
from deployments.serving.specs import clean_spec, spec_values

logger = logging.getLogger(__name__)
State = Deployment.State


# -- routes ----------------------------------------------------------------------------------------------------
def routes_changed() -> None:
    """Gateways forget their routes once this transaction commits (a server started, died, stopped or moved)."""
    transaction.on_commit(_invalidate_routes)


def _invalidate_routes() -> None:
    try:
        cache.invalidate_routes()
    except redis.RedisError as error:  # the gateway's cache expires by itself (GATEWAY_CACHE_SECONDS)
        logger.warning("could not tell the gateways that routes changed: %s", error)


# -- reading ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """What a deployment's servers do together. `serving`: at least one runs."""

    wanted: int
    running: int
    servers: list[dict]

    @property
    def serving(self) -> bool:
        return self.running > 0

    @property
    def text(self) -> str:
        return _("%(running)s/%(wanted)s replicas running") % {"running": self.running, "wanted": self.wanted}

    def as_dict(self) -> dict:
        return {"wanted": self.wanted, "running": self.running, "serving": self.serving, "servers": self.servers}


def _server_row(index: int, server) -> dict:
    gpus = ",".join(map(str, server.gpu_indexes or []))
    host = server.host.name if server.host_id else ""
    return {
        "index": index,
        "state": server.state,
        "state_label": str(State(server.state).label),
        "where": (f"GPU {gpus} on {host}" if gpus else f"CPU on {host}") if host else "",
        "host": host or None,
        "gpu_indexes": list(server.gpu_indexes or []),
        "endpoint": server.endpoint,
        "job": server.job_id,
        "restart_count": server.restart_count,
        "next_restart_at": server.next_restart_at.isoformat() if server.next_restart_at else None,
        "failure_cause": server.failure_cause,
    }


def _replicas_by_index(deployment: Deployment) -> list[DeploymentReplica]:
    """The deployment's replicas by index: those the API's list prefetched (one query a page, not one a row)."""
    prefetched = getattr(deployment, "_prefetched_objects_cache", {}).get("replicas")
    if prefetched is not None:
        return sorted(prefetched, key=lambda replica: replica.index)
    return list(deployment.replicas.select_related("host").order_by("index"))


def summary(deployment: Deployment) -> Summary:
    """Every server of the deployment (0 is its own) and how many run, against what the spec wants."""
    wanted = deployment.spec.replicas if deployment.spec_id else 1
    rows = [_server_row(0, deployment)]
    for replica in _replicas_by_index(deployment):
        if replica.index < wanted or replica.state in State.holding():
            rows.append(_server_row(replica.index, replica))
    running = sum(1 for row in rows if row["state"] == State.RUNNING)
    return Summary(wanted=wanted, running=running, servers=rows)


def running_replicas(deployment: Deployment) -> list[DeploymentReplica]:
    """Replicas 1..N-1 that answer now (server 0 is the deployment's own state)."""
    return list(
        deployment.replicas.select_related("host").filter(state=State.RUNNING).exclude(endpoint="").order_by("index")
    )


def holding(deployment: Deployment) -> bool:
    """Whether a replica still holds GPUs or a server (the deployment cannot be deleted yet)."""
    return deployment.replicas.filter(state__in=State.holding()).exists()


def sibling_gpus(deployment: Deployment, *, but: int) -> frozenset[tuple[str, int]]:
    """(host, GPU) pairs the deployment's other servers hold: a server placed again keeps off them."""
    taken = set()
    if but != 0 and deployment.state in State.holding() and deployment.host_id:
        taken |= {(deployment.host.name, index) for index in deployment.gpu_indexes or []}
    others = deployment.replicas.select_related("host").filter(state__in=State.holding()).exclude(index=but)
    for replica in others:
        if replica.host_id:
            taken |= {(replica.host.name, index) for index in replica.gpu_indexes or []}
    return frozenset(taken)


def server_plan(deployment: Deployment, values: dict, *, index: int) -> Verdict:
    """Where server `index` of the deployment fits now, beside its siblings."""
    holder = deployment.holder if index == 0 else f"{deployment.holder}:replica:{index}"
    return server_verdict(values, holder=holder, avoid=sibling_gpus(deployment, but=index))


# -- state ---------------------------------------------------------------------------------------------------------
# A replica's state is recorded and its GPUs released as server 0's are (services.set_state, services.release):
# the row has the same server fields.
def _record(action: str, replica: DeploymentReplica, *, actor=None, outcome: str = "success", **detail) -> None:
    audit.record(
        action=action,
        actor=actor,
        actor_name="" if actor is not None else "system",
        target=replica.deployment,
        outcome=outcome,
        detail={"replica": replica.index, **detail},
    )


def _lock_deployment(replica: DeploymentReplica) -> None:
    """A replica's serve job changes its row under the deployment's row lock, taken first. The deployment's own
    services lock it first too, then replica rows, then the audit chain (deployment_stopped launching again); a
    replica's transaction that held its row while waiting for the chain deadlocked with them, and PostgreSQL
    aborted it: the job ended cancelled, its server record stuck stopping with its GPUs reserved."""
    Deployment.objects.select_for_update().filter(pk=replica.deployment_id).values_list("pk", flat=True).first()


# -- launching -------------------------------------------------------------------------------------------------
def launch_replicas(actor, deployment: Deployment) -> list[Job]:
    """After server 0 was placed: launch replicas 1..N-1 that do not run, and stop those the spec no longer wants.
    A replica still stopping (a restart) launches again once stopped."""
    wanted = deployment.spec.replicas
    jobs = []
    for index in range(1, wanted):
        replica, _created = DeploymentReplica.objects.get_or_create(deployment=deployment, index=index)
        replica = (
            DeploymentReplica.objects.select_for_update(of=("self",)).select_related("deployment").get(pk=replica.pk)
        )
        if replica.state == State.STOPPING:
            DeploymentReplica.objects.filter(pk=replica.pk).update(restart_requested=True)
        elif replica.state not in State.holding():
            job = _launch_or_fail(actor, replica)
            if job is not None:
                jobs.append(job)
    for replica in deployment.replicas.filter(index__gte=wanted).select_related("deployment"):
        _stop_one(actor, replica, restart=False)
    deployment.replicas.filter(index__gte=wanted, state__in=[State.STOPPED, State.FAILED]).delete()
    return jobs


def _launch_or_fail(actor, replica: DeploymentReplica) -> Job | None:
    """A person's launch is refused with the reason; the system's (a restart) records a failed replica."""
    try:
        return _launch_replica(actor, replica)
    except ApplicationError as error:
        if actor is not None:
            raise
        replica_failed(
            replica, cause="placement", detail=error.message, next_step="Free GPU memory, or change the spec."
        )
        return None


def _launch_replica(actor, replica: DeploymentReplica) -> Job:
    """Place one replica beside the others, reserve its GPUs and start its serve job (as _launch does for 0)."""
    deployment = replica.deployment
    spec = deployment.spec
    lifecycle.set_state(
        replica, State.PLACING, failure_cause="", failure_detail="", next_step="", restart_requested=False
    )
    plan = server_plan(deployment, clean_spec(spec_values(spec)), index=replica.index)
    if plan.fits is False:
        raise ApplicationError(
            _("Replica %(index)s does not fit: %(reason)s") % {"index": replica.index, "reason": plan.reason},
            field="replicas",
        )
    host = Host.objects.get(name=plan.host)
    require_deploy_scope(actor, deployment=deployment, host=host)
    gpu_indexes = plan.gpu_indexes if spec.device == DeploymentSpec.Device.GPU else []
    if spec.device == DeploymentSpec.Device.GPU and not gpu_indexes:
        raise ApplicationError(f"No GPU set on {host} fits replica {replica.index}.", field="replicas")
    job, _artifact = lifecycle.start_server(
        actor,
        replica,
        deployment=deployment,
        plan=plan,
        host=host,
        gpu_indexes=gpu_indexes,
        params={"replica": replica.pk, "index": replica.index},
    )
    _record(
        "deployment.replica_launched",
        replica,
        actor=actor,
        version=spec.version,
        host=host.name,
        gpus=gpu_indexes,
        job=job.pk,
    )
    return job


@transaction.atomic
def replica_relaunch(replica: DeploymentReplica) -> Job | None:
    """The reconciler's restart of a failed replica (restart policy, backoff elapsed); the others keep serving."""
    _lock_deployment(replica)
    replica = DeploymentReplica.objects.select_for_update(of=("self",)).select_related("deployment").get(pk=replica.pk)
    deployment = replica.deployment
    if replica.state != State.FAILED or replica.next_restart_at is None:
        return None
    if deployment.spec_id is None or replica.index >= deployment.spec.replicas:
        DeploymentReplica.objects.filter(pk=replica.pk).update(next_restart_at=None)
        return None
    DeploymentReplica.objects.filter(pk=replica.pk).update(restart_count=replica.restart_count + 1)
    _record("deployment.replica_auto_restart", replica, attempt=replica.restart_count + 1, after=replica.failure_cause)
    return _launch_or_fail(None, replica)


# -- stopping --------------------------------------------------------------------------------------------------
def stop_replicas(actor, deployment: Deployment) -> int:
    """Stop every replica of the deployment (server 0 is the caller's); returns how many were holding."""
    stopped = 0
    for replica in deployment.replicas.select_for_update(of=("self",)).select_related("deployment", "job"):
        stopped += _stop_one(actor, replica, restart=False)
    return stopped


def _stop_one(actor, replica: DeploymentReplica, *, restart: bool) -> int:
    if replica.state == State.STOPPING:
        DeploymentReplica.objects.filter(pk=replica.pk).update(restart_requested=restart)
        return 1
    if replica.state == State.FAILED and replica.next_restart_at is not None:
        # Its planned restart is called off: a change of state like any other, audited with the replica's number.
        _record("deployment.replica_stop_requested", replica, actor=actor, state=replica.state)
        lifecycle.set_state(replica, State.STOPPED, next_restart_at=None)
        return 0
    if replica.state not in State.holding():
        return 0
    job = replica.job
    _record("deployment.replica_stop_requested", replica, actor=actor, state=replica.state)
    if job is not None and job.is_active:
        _cancel(actor, job, replica.deployment)
        lifecycle.set_state(replica, State.STOPPING, next_restart_at=None, restart_requested=restart)
    else:
        lifecycle.release(replica)
        lifecycle.set_state(replica, State.STOPPED, next_restart_at=None, endpoint="")
    return 1


def _cancel(actor, job: Job, deployment: Deployment) -> None:
    if actor is not None:
        job_cancel(actor=actor, job=job, action=roles.DEPLOY, target=deployment)
        return
    # The system stopping what a person's earlier request made obsolete (fewer replicas after a restart).
    Job.objects.filter(pk=job.pk).update(cancel_requested=True)
    if job.status == Job.Status.PENDING:
        job_dispatch(job)


# -- reported by workers ---------------------------------------------------------------------------------------
@transaction.atomic
def replica_running(replica: DeploymentReplica, *, endpoint: str, info: dict | None, server: str = "") -> None:
    _lock_deployment(replica)
    lifecycle.set_state(replica, State.RUNNING, endpoint=endpoint, server=server)
    _record(
        "deployment.replica_running",
        replica,
        endpoint=endpoint,
        server=server or (info or {}).get("version"),
        max_total_tokens=(info or {}).get("max_total_tokens"),
    )


@transaction.atomic
def replica_failed(replica: DeploymentReplica, *, cause: str, detail: str, next_step: str) -> None:
    """The replica's server could not start or died: out of routing at once, GPUs freed, a restart planned with
    the deployment's backoff when its restart policy says so."""
    _lock_deployment(replica)
    replica = DeploymentReplica.objects.select_for_update(of=("self",)).select_related("deployment").get(pk=replica.pk)
    lifecycle.release(replica)
    restart_at = None
    policy = replica.deployment.restart_policy
    if policy == Deployment.RestartPolicy.ON_FAILURE and cause not in lifecycle.NO_RESTART_CAUSES:
        restart_at = timezone.now() + timedelta(seconds=lifecycle.restart_delay(replica.restart_count))
    lifecycle.set_state(
        replica,
        State.FAILED,
        endpoint="",
        failure_cause=cause[:60],
        failure_detail=detail[:5000],
        next_step=next_step,
        next_restart_at=restart_at,
    )
    _record(
        "deployment.replica_failed",
        replica,
        outcome="failure",
        cause=cause,
        restart_at=restart_at.isoformat() if restart_at else None,
    )


@transaction.atomic
def replica_stopped(replica: DeploymentReplica) -> bool:
    """The replica's server was stopped on request; returns True when it launches again (a restart)."""
    _lock_deployment(replica)
    replica = DeploymentReplica.objects.select_for_update(of=("self",)).select_related("deployment").get(pk=replica.pk)
    lifecycle.release(replica)
    lifecycle.set_state(replica, State.STOPPED, endpoint="")
    deployment = replica.deployment
    if replica.restart_requested and deployment.spec_id and replica.index < deployment.spec.replicas:
        return _launch_or_fail(None, replica) is not None
    _record("deployment.replica_stopped", replica)
    return False
