"""Applying the GPU health rules (deployments/inventory/gpu_health.py) to what agents report: the GPU keeps its last
reading and its health; each change of health is an audit event (`gpu.health_changed`), and deployments holding a
GPU that failed are flagged (cause "gpu-failed") until it is healthy again."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.utils import translation

from audit.recorder import record
from deployments.inventory import gpu_health
from deployments.inventory.models import Gpu
from deployments.monitoring.flags import HOLDING, clear_flag, deployments_on_gpu, raise_flag
from deployments.serving.models import Deployment
from deployments.serving.replica_models import DeploymentReplica

FLAG_CAUSE = "gpu-failed"
# Health the rules may leave: a GPU found missing, or unknown, is assessed afresh by its first reading.
ASSESSED = (Gpu.Health.OK, Gpu.Health.DEGRADED, Gpu.Health.FAILED)


def _english(text) -> str:
    """A lazy sentence as its msgid: stored so, and shown translated ({% translate %} of the stored value)."""
    with translation.override(None):
        return str(text)


def subject(gpu: Gpu) -> str:
    return f"{gpu.host.name}/gpu{gpu.index}"


def holders(gpu: Gpu) -> list[Deployment]:
    """Deployments whose own server or one of whose replicas holds the GPU now."""
    found = {deployment.pk: deployment for deployment in deployments_on_gpu(gpu)}
    replicas = DeploymentReplica.objects.filter(host_id=gpu.host_id, state__in=HOLDING)
    for replica in replicas.filter(gpu_indexes__contains=[gpu.index]).select_related("deployment"):
        found.setdefault(replica.deployment_id, replica.deployment)
    return [found[pk] for pk in sorted(found)]


def take_reading(gpu: Gpu, reading: dict, *, now: datetime) -> tuple[str, str] | None:
    """Keep the reading on the GPU (unsaved) and assess it; (health, cause) before, when either changed."""
    health = gpu.health if gpu.health in ASSESSED else Gpu.Health.OK
    result = gpu_health.assess(
        reading,
        previous=gpu.telemetry,
        health=health,
        cause=gpu.health_cause,
        now=now,
        thermal_seconds=settings.GPU_THERMAL_THROTTLE_SECONDS,
    )
    gpu.telemetry = {**reading, gpu_health.MEMORY_KEY: result.memory}
    gpu.telemetry_at = now
    before = (gpu.health, gpu.health_cause)
    if (result.health, result.cause) == before:
        return None
    gpu.health, gpu.health_cause = result.health, result.cause
    gpu.health_detail = _english(result.detail)
    gpu.health_changed_at = now
    return before


def health_changed(gpu: Gpu, before: tuple[str, str], *, actor=None, actor_name: str = "") -> None:
    """Record a saved change of health and flag or clear the deployments holding the GPU."""
    record(
        action="gpu.health_changed",
        actor=actor,
        actor_name=actor_name,
        target=gpu,
        changes={"health": [before[0], gpu.health], "health_cause": [before[1], gpu.health_cause]},
        detail={"cause": gpu.health_cause, "detail": gpu.health_detail},
    )
    sync_flags(gpu, actor=actor)


def sync_flags(gpu: Gpu, *, actor=None) -> None:
    """Failed: every deployment holding the GPU (itself or a replica) is flagged. Anything else: the flags for this
    GPU are cleared, wherever they are."""
    where = subject(gpu)
    if gpu.health == Gpu.Health.FAILED:
        detail, next_step = gpu_health.texts(gpu.health_cause)
        for deployment in holders(gpu):
            raise_flag(
                deployment,
                cause=FLAG_CAUSE,
                subject=where,
                detail=gpu.health_detail or _english(detail),
                next_step=_english(next_step) or _english(gpu_health.SERVICE),
                actor=actor,
            )
        return
    flagged = Deployment.objects.filter(flags__contains=[{"cause": FLAG_CAUSE, "subject": where}])
    for deployment in flagged:
        clear_flag(deployment, cause=FLAG_CAUSE, subject=where, actor=actor)


def health_set_by_hand(gpu: Gpu, before: tuple[str, str], *, actor, now: datetime) -> None:
    """An admin set the health (the GPU edit form): it carries no rule's cause, so the rules keep it until they find
    worse (gpu_health's docstring). Called after the save, inside the edit's transaction."""
    Gpu.objects.filter(pk=gpu.pk).update(health_cause="", health_detail="", health_changed_at=now)
    gpu.health_cause, gpu.health_detail, gpu.health_changed_at = "", "", now
    health_changed(gpu, before, actor=actor)
