"""Hosts and GPUs: changes by admins, and what host agents report. Every change is an audit event;
free memory and heartbeats are telemetry, not changes."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

import audit
from audit.recorder import diff
from audit.telemetry import traced
from console import roles
from console.errors import ApplicationError
from console.permissions import require
from deployments.models import Gpu, GpuReservation, Host

HOST_FIELDS = ("name", "address", "labels", "status", "runtime", "model_store")
GPU_FIELDS = (
    "index",
    "uuid",
    "name",
    "memory_total",
    "power_limit_w",
    "compute_capability",
    "nvlink_group",
    "health",
    "serial",
)
# What an agent report may change on a GPU and that counts as a hardware change (free memory does not).
GPU_IDENTITY = ("uuid", "name", "memory_total", "power_limit_w", "compute_capability", "nvlink_group", "serial")


def _state(obj, fields) -> dict:
    return {field: getattr(obj, field) for field in fields}


def _save_changes(*, actor, obj, before: dict, tracked: tuple[str, ...], action: str) -> None:
    """Validate, and save and record only when a tracked field really changed."""
    obj.full_clean()
    changes = diff(before, _state(obj, tracked))
    if changes:
        obj.save()
        audit.record(action=action, actor=actor, target=obj, changes=changes)


@traced("host.create")
@transaction.atomic
def host_create(*, actor, name: str, **fields) -> Host:
    """Register a host by hand. An admin can add hosts when: they hold manage_inventory."""
    require(actor, roles.MANAGE_INVENTORY)
    if Host.objects.filter(name=name).exists():
        raise ApplicationError(f"A host named '{name}' already exists.", field="name")
    host = Host(name=name, **fields)
    host.full_clean()
    host.save()
    audit.record(action="host.created", actor=actor, target=host, changes=diff({}, _state(host, HOST_FIELDS)))
    return host


@traced("host.update")
@transaction.atomic
def host_update(*, actor, host: Host, **fields) -> Host:
    require(actor, roles.MANAGE_INVENTORY, host)
    before = _state(host, HOST_FIELDS)
    for field, value in fields.items():
        setattr(host, field, value)
    _save_changes(actor=actor, obj=host, before=before, tracked=HOST_FIELDS, action="host.updated")
    return host


@traced("host.delete")
@transaction.atomic
def host_delete(*, actor, host: Host) -> None:
    require(actor, roles.MANAGE_INVENTORY, host)
    if Gpu.objects.filter(host=host, reservations__isnull=False).exists():
        raise ApplicationError(f"{host} holds GPU reservations; stop what runs there first.")
    # Model copies and deployments keep their host (protected keys): refuse instead of failing in delete().
    if host.artifacts.exists() or host.deployments.exists():
        raise ApplicationError(f"{host} holds model copies or deployments; delete them first.")
    audit.record(action="host.deleted", actor=actor, target=host, changes=diff(_state(host, HOST_FIELDS), {}))
    host.delete()


@traced("gpu.create")
@transaction.atomic
def gpu_create(*, actor, host: Host, **fields) -> Gpu:
    require(actor, roles.MANAGE_INVENTORY, host)
    if Gpu.objects.filter(host=host, index=fields.get("index")).exists():
        raise ApplicationError(f"{host} already has a GPU {fields.get('index')}.", field="index")
    gpu = Gpu(host=host, **fields)
    gpu.full_clean()
    gpu.save()
    audit.record(action="gpu.created", actor=actor, target=gpu, changes=diff({}, _state(gpu, GPU_FIELDS)))
    return gpu


@traced("gpu.update")
@transaction.atomic
def gpu_update(*, actor, gpu: Gpu, **fields) -> Gpu:
    require(actor, roles.MANAGE_INVENTORY, gpu.host)
    before = _state(gpu, GPU_FIELDS)
    for field, value in fields.items():
        setattr(gpu, field, value)
    if gpu.index != before["index"] and Gpu.objects.filter(host=gpu.host, index=gpu.index).exists():
        raise ApplicationError(f"{gpu.host} already has a GPU {gpu.index}.", field="index")
    cause_before = gpu.health_cause
    _save_changes(actor=actor, obj=gpu, before=before, tracked=GPU_FIELDS, action="gpu.updated")
    if gpu.health != before["health"]:
        from deployments.monitoring.gpu_health_apply import health_set_by_hand

        health_set_by_hand(gpu, (before["health"], cause_before), actor=actor, now=timezone.now())
    return gpu


@traced("gpu.delete")
@transaction.atomic
def gpu_delete(*, actor, gpu: Gpu) -> None:
    require(actor, roles.MANAGE_INVENTORY, gpu.host)
    if gpu.reservations.exists():
        raise ApplicationError(f"{gpu} is reserved; stop what runs there first.")
    audit.record(action="gpu.deleted", actor=actor, target=gpu, changes=diff(_state(gpu, GPU_FIELDS), {}))
    gpu.delete()


@traced("host.report")
@transaction.atomic
def host_report(
    *,
    name: str,
    discovery,
    agent_version: str,
    address: str = "",
    runtime: str = "",
    model_store: str = "",
    telemetry: list[dict] | None = None,
    metrics_address: str = "",
) -> Host:
    """What a host's agent saw (at start and every heartbeat), stamped with database time.

    Hardware changes (a new, changed or vanished GPU, a new driver) are audit events by the agent;
    free memory and the heartbeat itself are not. `telemetry` (workers.nvml.GpuTelemetry as dicts) is each GPU's
    reading, matched by uuid (else index): kept on the GPU, merged into its 1-minute sample and assessed by the
    health rules (deployments/monitoring/gpu_health_apply.py: a change of health is audited, deployments on a failed
    GPU flagged). `metrics_address` is where the agent's exporter answers (kept when empty).
    """
    agent = f"agent:{name}"
    host, created = Host.objects.select_for_update().get_or_create(
        name=name,
        defaults={
            "address": address,
            "runtime": runtime or Host.Runtime.DOCKER,
            "model_store": model_store,
            "status": Host.Status.ONLINE,
        },
    )
    if created:
        audit.record(
            action="host.registered",
            actor=None,
            actor_name=agent,
            target=host,
            detail={"gpus": len(discovery.gpus), "note": discovery.note},
        )
    before = _state(host, ("status", "driver_version", "cuda_version", "agent_version", "discovery_note"))
    if host.status in (Host.Status.OFFLINE, Host.Status.MANUAL):
        host.status = Host.Status.ONLINE
    host.driver_version, host.cuda_version = discovery.driver_version, discovery.cuda_version
    host.agent_version, host.discovery_note = agent_version, discovery.note[:255]
    if metrics_address:
        host.metrics_address = metrics_address[:255]
    changes = diff(before, _state(host, before))
    host.save()
    Host.objects.filter(pk=host.pk).update(last_heartbeat=Now())
    if changes and not created:
        action = "host.online" if changes.get("status", [None, None])[1] == Host.Status.ONLINE else "host.changed"
        audit.record(action=action, actor=None, actor_name=agent, target=host, changes=changes)
    _report_gpus(host, discovery.gpus, agent, _readings(discovery.gpus, telemetry or []))
    host.refresh_from_db()
    return host


def _readings(reported, telemetry: list[dict]) -> dict[int, dict]:
    """Each reported GPU's reading, matched by uuid where both have one, else by index."""
    by_uuid = {reading["uuid"]: reading for reading in telemetry if reading.get("uuid")}
    by_index = {reading.get("index"): reading for reading in telemetry}
    found = {}
    for seen in reported:
        reading = by_uuid.get(seen.uuid) if seen.uuid else None
        reading = reading or by_index.get(seen.index)
        if reading is not None:
            found[seen.index] = reading
    return found


def _report_gpus(host: Host, reported, agent: str, readings: dict[int, dict]) -> None:
    # Health belongs to the rules (deployments/inventory/gpu_health.py) once a GPU is present: discovery's own health
    # only brings a new, missing or unknown GPU back.
    from deployments.monitoring import gpu_health_apply, samples  # the monitoring room builds on the inventory

    now = timezone.now()
    known = {gpu.index: gpu for gpu in host.gpus.all()}
    for seen in reported:
        gpu = known.pop(seen.index, None)
        values = {field: getattr(seen, field) for field in GPU_IDENTITY}
        reading = readings.get(seen.index)
        if gpu is None:
            gpu = Gpu.objects.create(
                host=host, index=seen.index, memory_free=seen.memory_free, health=seen.health, discovered=True, **values
            )
            audit.record(
                action="gpu.discovered",
                actor=None,
                actor_name=agent,
                target=gpu,
                changes=diff({}, _state(gpu, GPU_FIELDS)),
            )
            changes = {}
        else:
            health = seen.health if gpu.health in (Gpu.Health.MISSING, Gpu.Health.UNKNOWN) else gpu.health
            changes = diff(_state(gpu, (*GPU_IDENTITY, "health")), {**values, "health": health})
            for field, value in values.items():
                setattr(gpu, field, value)
            gpu.memory_free, gpu.health, gpu.discovered = seen.memory_free, health, True
        health_before = gpu_health_apply.take_reading(gpu, reading, now=now) if reading is not None else None
        gpu.save()
        if changes:
            audit.record(action="gpu.changed", actor=None, actor_name=agent, target=gpu, changes=changes)
        if reading is not None:
            samples.record_gpu_reading(gpu.pk, reading, at=now)
        if health_before is not None:
            gpu_health_apply.health_changed(gpu, health_before, actor_name=agent)
    for gpu in known.values():  # registered before, not reported now
        # A failed GPU stays failed (its cause says more than "missing"; placement skips both).
        if gpu.discovered and gpu.health not in (Gpu.Health.MISSING, Gpu.Health.FAILED):
            gpu.health = Gpu.Health.MISSING
            gpu.save(update_fields=["health", "updated_at"])
            audit.record(
                action="gpu.missing", actor=None, actor_name=agent, target=gpu, changes={"health": ["ok", "missing"]}
            )


@traced("host.mark_offline")
@transaction.atomic
def hosts_mark_offline(*, offline_after: int | None = None) -> list[Host]:
    """Hosts whose heartbeats stopped for HOST_OFFLINE_SECONDS (by database time) become offline."""
    offline_after = offline_after or settings.HOST_OFFLINE_SECONDS
    cutoff = Now() - timedelta(seconds=offline_after)
    stale = list(Host.objects.select_for_update().filter(status=Host.Status.ONLINE, last_heartbeat__lt=cutoff))
    for host in stale:
        host.status = Host.Status.OFFLINE
        host.save(update_fields=["status", "updated_at"])
        # Deployments on the host will be flagged here once deployments exist.
        audit.record(
            action="host.offline",
            actor=None,
            actor_name="system",
            target=host,
            changes={"status": ["online", "offline"]},
            detail={"reason": f"no heartbeat for {offline_after} s"},
        )
    return stale


def reserve_gpus(*, holder: str, host: Host, gpu_indexes: list[int], memory_bytes: int) -> None:
    """Hold `memory_bytes` on each of these GPUs of `host` for `holder` (a server, a fine-tune, a quantize or evaluate
    job), replacing what the holder held: the placement engine counts reservations as used memory. The GPU rows are
    locked so two placements in flight do not both take the last free memory."""
    gpus = list(Gpu.objects.select_for_update().filter(host=host, index__in=gpu_indexes))
    GpuReservation.objects.filter(holder=holder).delete()
    GpuReservation.objects.bulk_create(
        GpuReservation(gpu=gpu, memory_bytes=memory_bytes, holder=holder) for gpu in gpus
    )
