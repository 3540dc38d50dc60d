"""Benchmark schedules: the same workload against a deployment every N hours, started as the schedule's owner (the
user who created or last enabled it; they must still hold use_deployment). Beat calls schedules_due() every minute.

A schedule whose time came starts one run and moves its next time on by whole intervals past now: after downtime it
runs once, not once per missed interval. A due run is skipped (the reason kept in last_error) while the deployment
is not running or the schedule's previous run is still going; a schedule whose owner lost use_deployment or was
deactivated is disabled (audited), since it would otherwise act for someone who may no longer act."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404
from django.utils import timezone, translation
from django.utils.translation import gettext as _

import audit
from console import roles
from console.errors import ApplicationError
from console.permissions import can, require
from deployments.benchmarks import services, texts
from deployments.benchmarks.models import BenchmarkRun, BenchmarkSchedule
from deployments.benchmarks.workload import check_workload
from deployments.models import Deployment

logger = logging.getLogger(__name__)

INTERVAL_HOURS = (1, 720)
DROP_PERCENT = (1.0, 90.0)
NOTE_MAX = 500
ERROR_MAX = 500


def _interval(value: Any) -> int:
    low, high = INTERVAL_HOURS
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApplicationError(
            _("Every %(low)d to %(high)d hours, in whole hours.") % {"low": low, "high": high}, field="interval_hours"
        )
    return value


def _drop(value: Any) -> float:
    low, high = DROP_PERCENT
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ApplicationError(
            _("The alert threshold is %(low)d to %(high)d %%.") % {"low": low, "high": high}, field="drop_percent"
        )
    return float(value)


def _note(value: Any) -> str:
    note = str(value or "").strip()
    if len(note) > NOTE_MAX or "\x00" in note:
        raise ApplicationError(_("The note is at most %(n)d characters.") % {"n": NOTE_MAX}, field="note")
    return note


def _settings(schedule: BenchmarkSchedule) -> dict[str, Any]:
    return {
        "enabled": schedule.enabled,
        "interval_hours": schedule.interval_hours,
        "drop_percent": schedule.drop_percent,
        "note": schedule.note,
        "runs_as": schedule.created_by.get_username() if schedule.created_by else None,
    }


@transaction.atomic
def schedule_create(
    *,
    actor,
    deployment: Deployment,
    workload: Any,
    interval_hours: Any = 24,
    drop_percent: Any = 10.0,
    note: str = "",
    first_run_at: datetime | None = None,
) -> BenchmarkSchedule:
    """Repeat a benchmark of the deployment every interval_hours, first at first_run_at (default: at the next
    minute's check, so the baseline exists); needs use_deployment; audited as benchmark_schedule.created."""
    require(actor, roles.USE_DEPLOYMENT, deployment)
    checked = check_workload(workload)
    schedule = BenchmarkSchedule.objects.create(
        deployment=deployment,
        created_by=actor,
        workload=checked,
        interval_hours=_interval(interval_hours),
        drop_percent=_drop(drop_percent),
        note=_note(note),
        next_run_at=first_run_at or timezone.now(),
    )
    audit.record(
        action="benchmark_schedule.created",
        actor=actor,
        target=schedule,
        detail={
            "deployment": deployment.name,
            "workload": checked,
            "next_run_at": schedule.next_run_at.isoformat(),
            **_settings(schedule),
        },
    )
    return schedule


@transaction.atomic
def schedule_update(
    *,
    actor,
    schedule: BenchmarkSchedule,
    enabled: bool | None = None,
    interval_hours: Any = None,
    drop_percent: Any = None,
    note: str | None = None,
) -> BenchmarkSchedule:
    """Enable or disable a schedule, or change its interval, threshold or note; needs use_deployment; audited as
    benchmark_schedule.updated with the changes. Whoever enables a schedule becomes the user it runs as: they hold
    use_deployment now, where its former owner may not (that is often why it was disabled)."""
    require(actor, roles.USE_DEPLOYMENT, schedule.deployment)
    schedule = (
        BenchmarkSchedule.objects.select_for_update(of=("self",))
        .select_related("deployment", "created_by")
        .get(pk=schedule.pk)
    )
    before = _settings(schedule)
    if interval_hours is not None:
        schedule.interval_hours = _interval(interval_hours)
    if drop_percent is not None:
        schedule.drop_percent = _drop(drop_percent)
    if note is not None:
        schedule.note = _note(note)
    if enabled is not None:
        if enabled and not schedule.enabled:
            schedule.created_by, schedule.last_error = actor, ""
        schedule.enabled = bool(enabled)
    after = _settings(schedule)
    changes = {key: [before[key], after[key]] for key in after if before[key] != after[key]}
    if not changes:
        return schedule
    schedule.save()
    audit.record(
        action="benchmark_schedule.updated",
        actor=actor,
        target=schedule,
        changes=changes,
        detail={"deployment": schedule.deployment.name},
    )
    return schedule


@transaction.atomic
def schedule_delete(*, actor, schedule: BenchmarkSchedule) -> None:
    """Delete a schedule; its runs and alerts stay (no longer tied to it); needs use_deployment; audited."""
    require(actor, roles.USE_DEPLOYMENT, schedule.deployment)
    audit.record(
        action="benchmark_schedule.deleted",
        actor=actor,
        target=schedule,
        detail={"deployment": schedule.deployment.name, "workload": schedule.workload, **_settings(schedule)},
    )
    schedule.delete()


# -- beat ----------------------------------------------------------------------------------------------------------
def next_time(schedule: BenchmarkSchedule, now: datetime) -> datetime:
    """The first time after now on the schedule's grid: whole intervals on from its current next_run_at."""
    interval = timedelta(hours=schedule.interval_hours)
    if schedule.next_run_at > now:
        return schedule.next_run_at
    missed = math.floor((now - schedule.next_run_at) / interval)
    return schedule.next_run_at + interval * (missed + 1)


def _owner_problem(schedule: BenchmarkSchedule) -> str:
    """Why the schedule may no longer run as its owner, in words; empty when it may."""
    owner = schedule.created_by
    if owner is None:
        return texts.OWNER_DELETED
    if not owner.is_active:
        return texts.OWNER_DEACTIVATED % {"user": owner.get_username()}
    if not can(owner, roles.USE_DEPLOYMENT, schedule.deployment):
        return texts.OWNER_NOT_ALLOWED % {"user": owner.get_username()}
    return ""


def _disable(schedule: BenchmarkSchedule, reason: str) -> None:
    schedule.enabled, schedule.last_error = False, reason[:ERROR_MAX]
    schedule.save(update_fields=["enabled", "last_error"])
    audit.record(
        action="benchmark_schedule.disabled",
        actor=None,
        actor_name="system",
        target=schedule,
        detail={"deployment": schedule.deployment.name, "reason": reason, **_settings(schedule)},
    )


def _skip_reason(schedule: BenchmarkSchedule, now: datetime) -> str:
    deployment = schedule.deployment
    when = timezone.localtime(now).strftime("%Y-%m-%d %H:%M")
    if deployment.state != Deployment.State.RUNNING or deployment.host_id is None:
        return texts.SKIPPED_DOWN % {"when": when, "state": Deployment.State(deployment.state).label}
    if schedule.runs.filter(state__in=BenchmarkRun.State.active()).exists():
        return texts.SKIPPED_BUSY % {"when": when}
    return ""


def _start(schedule: BenchmarkSchedule) -> BenchmarkRun:
    note = schedule.note or texts.SCHEDULED_RUN % {"id": schedule.pk}
    with transaction.atomic():  # a refusal leaves nothing of the attempt behind
        run = services.benchmark_start(
            actor=schedule.created_by, deployment=schedule.deployment, workload=schedule.workload, note=note
        )
        run.schedule = schedule
        run.save(update_fields=["schedule"])
    return run


def schedule_run_due(schedule_id: int, now: datetime) -> BenchmarkRun | None:
    """Start the schedule's run if it is due and may run; the run, or None (skipped, disabled, not due). What it
    stores (the run's note, last_error) is English whoever's request calls it: texts.py shows it to each reader."""
    with translation.override("en"):
        return _run_due(schedule_id, now)


@transaction.atomic
def _run_due(schedule_id: int, now: datetime) -> BenchmarkRun | None:
    schedule = (
        BenchmarkSchedule.objects.select_for_update(of=("self",), skip_locked=True)
        .select_related("deployment", "created_by")
        .filter(pk=schedule_id, enabled=True, next_run_at__lte=now)
        .first()
    )
    if schedule is None:  # taken by a concurrent beat, disabled or moved on meanwhile
        return None
    problem = _owner_problem(schedule)
    if problem:
        _disable(schedule, problem)
        return None
    schedule.next_run_at = next_time(schedule, now)
    run, error = None, _skip_reason(schedule, now)
    if not error:
        try:
            run = _start(schedule)
        except ApplicationError as refused:
            error = texts.NOT_STARTED % {
                "when": timezone.localtime(now).strftime("%Y-%m-%d %H:%M"),
                "error": refused.message,
            }
        except (PermissionDenied, Http404):  # access lost between the check and the start
            _disable(schedule, texts.ACCESS_LOST)
            return None
    schedule.last_error = error[:ERROR_MAX]
    schedule.save(update_fields=["next_run_at", "last_error"])
    return run


def schedules_due(now: datetime | None = None) -> int:
    """Beat: start every enabled schedule whose time came; returns the runs started. One schedule's fault is
    logged and does not stop the others."""
    now = now or timezone.now()
    due = BenchmarkSchedule.objects.filter(enabled=True, next_run_at__lte=now).values_list("pk", flat=True)
    started = 0
    for pk in list(due):
        try:
            started += schedule_run_due(pk, now) is not None
        except Exception:
            logger.exception("benchmark schedule %s: could not start its run", pk)
    return started
