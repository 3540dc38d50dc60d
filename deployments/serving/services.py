"""Deployments: create, edit (a new spec version), roll back, launch, stop, restart, delete; the state
changes workers report; GPU reservations. Every user action is audited with the spec diff. On a production
deployment, launch, edit, rollback, stop and delete file an approval request instead (deployments.serving.approvals).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

import audit
from audit.recorder import diff
from audit.telemetry import traced
from console import roles
from console.dispatch import BENCHMARK_RERUNS_DUE, dispatch
from console.errors import ApplicationError
from console.permissions import require, require_deploy_scope
from deployments.inventory.services import reserve_gpus
from deployments.jobs.services import job_cancel, job_create
from deployments.models import (
    ApprovalRequest,
    ArtifactUse,
    Deployment,
    DeploymentReplica,
    DeploymentSpec,
    GpuReservation,
    Host,
    Job,
    ModelArtifact,
)
from deployments.registry.services import artifact_on_host
from deployments.serving import approvals, replicas
from deployments.serving.actions import DELETE, LAUNCH, RESTART, STOP, require_action
from deployments.serving.planning import Verdict, verdict
from deployments.serving.specs import SPEC_FIELDS, clean_spec, spec_values

State = Deployment.State


def _may_use_credential(actor, values: dict) -> None:
    """A spec may name only a Hub token its author may use (add_model on it, by role or grant)."""
    if values.get("credential") is not None:
        require(actor, roles.ADD_MODEL, values["credential"])


def _new_spec(deployment: Deployment, values: dict, *, actor, note: str = "") -> DeploymentSpec:
    previous = deployment.spec
    version = (deployment.specs.order_by("-version").values_list("version", flat=True).first() or 0) + 1
    spec = DeploymentSpec(
        deployment=deployment,
        version=version,
        note=note,
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
        **{name: values[name] for name in SPEC_FIELDS if name in values},
    )
    spec.diff = diff(spec_values(previous) if previous else {}, spec_values(spec))
    spec.save()
    deployment.spec = spec
    deployment.save(update_fields=["spec"])
    return spec


@traced("deployment.create")
@transaction.atomic
def deployment_create(
    *,
    actor,
    name: str,
    spec: dict,
    team=None,
    restart_policy: str = "on-failure",
    launch: bool = True,
    environment: str = Deployment.Environment.DEVELOPMENT,
    prompt_retention: str = Deployment.PromptRetention.NONE,
) -> Deployment:
    """A new deployment with spec version 1; launched at once unless `launch` is false (a production one files
    its launch for approval). A spec the planner says cannot fit is refused here, before any task runs."""
    require_deploy_scope(actor, team=team)  # the deploy role, or a team scope of deploy for `team`
    if team is not None and team.name in roles.ROLES:
        raise ApplicationError(f"{team.name} is a role, not a team: choose a team to own it.", field="team")
    name = (name or "").strip().lower()
    if Deployment.objects.filter(name=name).exists():
        raise ApplicationError(f"A deployment named {name} exists.", field="name")
    values = clean_spec(spec)
    _may_use_credential(actor, values)
    plan = verdict(values)
    if plan.fits is False:
        raise ApplicationError(plan.reason, field="artifact")
    deployment = Deployment(
        name=name,
        team=team,
        restart_policy=restart_policy,
        environment=environment,
        prompt_retention=prompt_retention,
        created_by=actor if actor.is_authenticated else None,
    )
    deployment.full_clean(exclude=["spec", "host"])
    deployment.save()
    created = _new_spec(deployment, values, actor=actor)
    audit.record(
        action="deployment.created",
        actor=actor,
        target=deployment,
        changes=created.diff,
        detail={
            "version": 1,
            "planner": {"fits": plan.fits, "num_shard": plan.num_shard, "per_gpu_bytes": plan.per_gpu_bytes},
        },
    )
    if launch and approvals.required(deployment, approvals.LAUNCH, None):
        approvals.request_approval(actor=actor, deployment=deployment, action=approvals.LAUNCH, plan=plan.as_dict())
    elif launch:
        _launch(actor, deployment, plan)
    return deployment


@traced("deployment.edit")
@transaction.atomic
def spec_update(
    *, actor, deployment: Deployment, spec: dict, note: str = "", approval: ApprovalRequest | None = None
) -> DeploymentSpec | ApprovalRequest:
    """An edit is a new version with its diff; a running deployment uses it after a restart. On a production
    deployment it is an approval request (`approval`: the approved one being applied)."""
    require(actor, roles.DEPLOY, deployment)
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    values = clean_spec({**spec_values(deployment.spec), **spec})
    _may_use_credential(actor, values)
    plan = verdict(values, holder=deployment.holder)
    if plan.fits is False:
        raise ApplicationError(plan.reason, field="artifact")
    if approvals.required(deployment, approvals.EDIT, approval):
        return approvals.request_edit(actor=actor, deployment=deployment, values=values, note=note, plan=plan.as_dict())
    created = _new_spec(deployment, values, actor=actor, note=note)
    if not created.diff:
        raise ApplicationError("Nothing changed.")
    audit.record(
        action="deployment.edited",
        actor=actor,
        target=deployment,
        changes=created.diff,
        detail={"version": created.version, "note": note, "running": deployment.state == State.RUNNING},
    )
    return created


@traced("deployment.rollback")
@transaction.atomic
def deployment_rollback(
    *, actor, deployment: Deployment, version: int, approval: ApprovalRequest | None = None
) -> DeploymentSpec | ApprovalRequest:
    """Make an earlier version current again, as a new version (history only grows). Production: a request."""
    require(actor, roles.DEPLOY, deployment)
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    old = deployment.specs.filter(version=version).first()
    if old is None:
        raise ApplicationError(f"{deployment} has no version {version}.", field="version")
    if old.pk == deployment.spec_id:
        raise ApplicationError(f"Version {version} is already current.", field="version")
    if approvals.required(deployment, approvals.ROLLBACK, approval):
        return approvals.request_rollback(actor=actor, deployment=deployment, old=old)
    values = clean_spec(spec_values(old))
    created = _new_spec(deployment, values, actor=actor, note=f"rollback to v{version}")
    audit.record(
        action="deployment.rolled_back",
        actor=actor,
        target=deployment,
        changes=created.diff,
        detail={"to_version": version, "version": created.version},
    )
    return created


# -- launching -----------------------------------------------------------------------------------------------
def _deadline(state: str):
    seconds = {
        State.DOWNLOADING: settings.DEPLOY_DEADLINE_DOWNLOADING,
        State.STARTING: settings.DEPLOY_DEADLINE_STARTING,
        State.STOPPING: settings.DEPLOY_STOP_GRACE_SECONDS + 60,
        State.PLACING: 300,
        State.PENDING: 300,
    }.get(state)
    return timezone.now() + timedelta(seconds=seconds) if seconds else None


def set_state(record: Deployment | DeploymentReplica, state: str, /, **fields) -> None:
    """Record a server's state (with its deadline) on the row and the object: the deployment's own (server 0) or a
    replica's, whose row has the same server fields (replicas.py). Positional: `server` is a field too."""
    fields = {"state": state, "state_changed_at": timezone.now(), "deadline": _deadline(state), **fields}
    type(record).objects.filter(pk=record.pk).update(**fields)
    for key, value in fields.items():
        setattr(record, key, value)
    replicas.routes_changed()  # every server is a route: the gateways re-read where to send calls


def release(server: Deployment | DeploymentReplica) -> None:
    """Give back the server's GPU memory and its hold on the model files (server 0 or a replica)."""
    GpuReservation.objects.filter(holder=server.holder).delete()
    ArtifactUse.objects.filter(holder=server.holder).delete()


def start_server(
    actor,
    server: Deployment | DeploymentReplica,
    *,
    deployment: Deployment,
    plan: Verdict,
    host: Host,
    gpu_indexes: list[int],
    params: dict,
) -> tuple[Job, ModelArtifact]:
    """Start a placed server (server 0 or a replica): reserve its GPUs, get the model files onto its host and start
    its serve job (`params` name the server beside the deployment, spec and files); returns the job and the files."""
    spec = deployment.spec
    reserve_gpus(holder=server.holder, host=host, gpu_indexes=gpu_indexes, memory_bytes=plan.per_gpu_bytes)
    # Placement may choose a host without the files: the registry fetches repo@commit there, the server waits.
    artifact = artifact_on_host(actor=actor, artifact=spec.artifact, host=host)
    ArtifactUse.objects.get_or_create(artifact=artifact, holder=server.holder)
    job = job_create(
        kind=Job.Kind.SERVE,
        actor=actor,
        target=deployment,
        queue=host.queue,
        params={"deployment": deployment.pk, **params, "spec": spec.pk, "artifact": artifact.pk},
    )
    next_state = State.STARTING if artifact.status == ModelArtifact.Status.READY else State.DOWNLOADING
    where = f"GPU {','.join(map(str, gpu_indexes))} on {host}" if gpu_indexes else f"CPU on {host}"
    set_state(
        server,
        next_state,
        host=host,
        gpu_indexes=gpu_indexes,
        runtime=host.runtime,
        job=job,
        placement_note=where if artifact == spec.artifact else f"{where} (model files copied to {host})",
        next_restart_at=None,
    )
    return job, artifact


def _launch(actor, deployment: Deployment, plan: Verdict | None = None, *, with_replicas: bool = True) -> Job:
    """Place and start server 0, then (unless the reconciler restarts server 0 alone) the spec's other replicas."""
    spec = deployment.spec
    set_state(deployment, State.PLACING, failure_cause="", failure_detail="", next_step="", restart_requested=False)
    values = clean_spec(spec_values(spec))
    plan = plan or replicas.server_plan(deployment, values, index=0)  # off the GPUs its running replicas hold
    if plan.fits is False:
        raise ApplicationError(plan.reason, field="artifact")
    host = Host.objects.get(name=plan.host)
    require_deploy_scope(actor, deployment=deployment, host=host)  # a team scope of deploy may not reach this host
    gpu_indexes = plan.gpu_indexes if spec.device == DeploymentSpec.Device.GPU else []
    if spec.device == DeploymentSpec.Device.GPU and not gpu_indexes:
        raise ApplicationError(f"No GPU set on {host} fits this spec.", field="gpu_indexes")
    job, artifact = start_server(
        actor, deployment, deployment=deployment, plan=plan, host=host, gpu_indexes=gpu_indexes, params={}
    )
    audit.record(
        action="deployment.launched",
        actor=actor,
        target=deployment,
        detail={
            "version": spec.version,
            "host": host.name,
            "gpus": gpu_indexes,
            "job": job.pk,
            "artifact": artifact.pk,
        },
    )
    if with_replicas:
        replicas.launch_replicas(actor, deployment)
    return job


@traced("deployment.launch")
@transaction.atomic
def deployment_launch(
    *, actor, deployment: Deployment, approval: ApprovalRequest | None = None
) -> Job | ApprovalRequest:
    require(actor, roles.DEPLOY, deployment)
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    require_action(deployment, LAUNCH)
    if approvals.required(deployment, approvals.LAUNCH, approval):
        plan = approvals.current_verdict(deployment)
        return approvals.request_approval(actor=actor, deployment=deployment, action=approvals.LAUNCH, plan=plan)
    return _launch(actor, deployment)


@traced("deployment.stop")
@transaction.atomic
def deployment_stop(
    *, actor, deployment: Deployment, approval: ApprovalRequest | None = None
) -> Deployment | ApprovalRequest:
    """Stop the server gracefully (its job stops it within the grace period) and free its GPUs. Production: a
    request."""
    require(actor, roles.DEPLOY, deployment)
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    if deployment.state == State.STOPPING or (deployment.state == State.STOPPED and not replicas.holding(deployment)):
        return deployment  # asked twice: already done
    require_action(deployment, STOP)
    if approvals.required(deployment, approvals.STOP, approval):
        return approvals.request_approval(actor=actor, deployment=deployment, action=approvals.STOP)
    replicas.stop_replicas(actor, deployment)  # every server stops; server 0 below
    job = deployment.job
    audit.record(action="deployment.stop_requested", actor=actor, target=deployment, detail={"state": deployment.state})
    if job is not None and job.is_active:
        job_cancel(actor=actor, job=job, action=roles.DEPLOY, target=deployment)
        set_state(deployment, State.STOPPING, next_restart_at=None)
    else:
        release(deployment)
        set_state(deployment, State.STOPPED, next_restart_at=None)
    return deployment


@traced("deployment.restart")
@transaction.atomic
def deployment_restart(*, actor, deployment: Deployment) -> Deployment:
    """Stop and launch again with the current spec (an edit takes effect this way)."""
    require(actor, roles.DEPLOY, deployment)
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    require_action(deployment, RESTART)
    audit.record(
        action="deployment.restart_requested",
        actor=actor,
        target=deployment,
        detail={"version": deployment.spec.version},
    )
    replicas.stop_replicas(actor, deployment)  # they launch again with server 0 (launch_replicas)
    job = deployment.job
    if job is not None and job.is_active:
        Deployment.objects.filter(pk=deployment.pk).update(restart_requested=True)
        job_cancel(actor=actor, job=job, action=roles.DEPLOY, target=deployment)
        set_state(deployment, State.STOPPING)
    else:
        _launch(actor, deployment)
    return deployment


@traced("deployment.delete")
@transaction.atomic
def deployment_delete(
    *, actor, deployment: Deployment, approval: ApprovalRequest | None = None
) -> ApprovalRequest | None:
    """Delete a stopped deployment and its versions. Production: a request (returned)."""
    require(actor, roles.DEPLOY, deployment)
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    require_action(deployment, DELETE)
    if approvals.required(deployment, approvals.DELETE, approval):
        return approvals.request_approval(actor=actor, deployment=deployment, action=approvals.DELETE)
    release(deployment)
    audit.record(
        action="deployment.deleted",
        actor=actor,
        target=deployment,
        detail={"versions": deployment.specs.count(), "spec": spec_values(deployment.spec) if deployment.spec else {}},
    )
    Deployment.objects.filter(pk=deployment.pk).update(spec=None)
    deployment.specs.all().delete()
    deployment.delete()
    return None


# -- reported by workers -----------------------------------------------------------------------------------------
@transaction.atomic
def deployment_running(deployment: Deployment, *, endpoint: str, info: dict | None, server: str = "") -> None:
    set_state(deployment, State.RUNNING, endpoint=endpoint, server=server)
    audit.record(
        action="deployment.running",
        actor=None,
        actor_name="system",
        target=deployment,
        detail={
            "endpoint": endpoint,
            "server": server or (info or {}).get("version"),
            "max_total_tokens": (info or {}).get("max_total_tokens"),
        },
    )
    # A tuning loop's benchmark re-run may wait for this version: look now rather than at the next beat.
    transaction.on_commit(lambda: dispatch(BENCHMARK_RERUNS_DUE), robust=True)


def restart_delay(restart_count: int) -> int:
    """Capped exponential backoff: base, 2 x base, 4 x base ... up to DEPLOY_RESTART_BACKOFF_MAX."""
    return min(settings.DEPLOY_RESTART_BACKOFF_MAX, settings.DEPLOY_RESTART_BACKOFF_SECONDS * 2**restart_count)


@transaction.atomic
def deployment_failed(deployment: Deployment, *, cause: str, detail: str, next_step: str) -> None:
    """The server could not start or died: record why, free the GPUs, and plan a restart if the policy says so."""
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    release(deployment)
    restart_at = None
    if deployment.restart_policy == Deployment.RestartPolicy.ON_FAILURE and cause not in NO_RESTART_CAUSES:
        restart_at = timezone.now() + timedelta(seconds=restart_delay(deployment.restart_count))
    set_state(
        deployment,
        State.FAILED,
        failure_cause=cause[:60],
        failure_detail=detail[:5000],
        next_step=next_step,
        next_restart_at=restart_at,
    )
    audit.record(
        action="deployment.failed",
        actor=None,
        actor_name="system",
        target=deployment,
        outcome="failure",
        detail={"cause": cause, "restart_at": restart_at.isoformat() if restart_at else None},
    )


# Causes a restart cannot fix: the spec or the host must change first.
NO_RESTART_CAUSES = frozenset(
    {
        "invalid_arguments",
        "incompatible",
        "not_found",
        "auth",
        "image_missing",
        "cuda_oom",
        "warmup_memory",
        "kv_capacity",
        "ml_environment_missing",
        "health_deadline",
    }
)


@transaction.atomic
def deployment_stopped(deployment: Deployment) -> bool:
    """The server was stopped on request; returns True when a restart was asked for (then it launches)."""
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    release(deployment)
    set_state(deployment, State.STOPPED, endpoint="")
    if deployment.restart_requested:
        _launch(None, deployment)
        return True
    audit.record(action="deployment.stopped", actor=None, actor_name="system", target=deployment)
    return False


@transaction.atomic
def deployment_relaunch(deployment: Deployment) -> Job | None:
    """The reconciler's restart after a failure (restart policy, backoff elapsed)."""
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    if deployment.state != State.FAILED or deployment.next_restart_at is None:
        return None
    Deployment.objects.filter(pk=deployment.pk).update(restart_count=deployment.restart_count + 1)
    audit.record(
        action="deployment.auto_restart",
        actor=None,
        actor_name="system",
        target=deployment,
        detail={"attempt": deployment.restart_count + 1, "after": deployment.failure_cause},
    )
    try:
        return _launch(None, deployment, with_replicas=False)  # the other replicas restart on their own
    except ApplicationError as error:
        deployment_failed(
            deployment,
            cause="placement",
            detail=error.message,
            next_step="Free GPU memory on the host, or change the spec.",
        )
        return None
